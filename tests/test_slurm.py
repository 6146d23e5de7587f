"""Our sbatch scripts on a real single-host SLURM cluster: preempt with the warning signal, requeue, resume.

Skipped, with the reason, where SLURM cannot be installed or started (not root,
no apt-get, daemons that will not come up).
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, SlurmUnavailable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    try:
        c = SlurmCluster.start(workdir)
    except (SlurmUnavailable, OSError) as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield c
    c.stop()


def _wait(predicate, timeout: float, what: str, job_info=None, poll: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}: {job_info() if job_info else ''}")


def _requeued(info, restarts: int):
    return lambda: (i := info()).get("JobState") == "PENDING" and int(i.get("Restarts", 0)) >= restarts


def _checkpoint_being_written(folder: Path) -> bool:
    """A step-N.tmp-* folder exists: some rank is inside the checkpoint write."""
    try:
        return any(".tmp-" in entry.name for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("script, nodes, tasks, at_start, max_steps", [("slurm/train.sbatch", 1, 2, True, 10),
                                                                       ("slurm/train_multinode.sbatch", 2, 1, False, 60)],
                         ids=["1node-2tasks-signals-at-start-and-in-checkpoint", "2nodes-1task"])
def test_sbatch_preempt_requeue_resume(cluster, tmp_path, script, nodes, tasks, at_start, max_steps):
    out = tmp_path / "run"
    log = tmp_path / "job-%j.out"
    args = ["configs/tiny_cpu.yaml", f"output_dir={out}", f"trainer.max_steps={max_steps}", "checkpoint.every_n_steps=5",
            "debug.record_keys=true", "logging.logger=wandb", "samples.enabled=false", "synth.train_samples=1024",
            "synth.eval_samples=16", "eval.samples=16", "trainer.log_every_n_steps=5"]
    options = [f"--nodes={nodes}", f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
               f"--output={log}"]
    job = cluster.submit(script, args, options, cwd=ROOT)
    log = Path(str(log).replace("%j", job))
    info = lambda: cluster.job(job)  # noqa: E731
    restarts = 0
    try:
        if at_start:
            # 2 s after srun started the tasks: Python is importing, nothing is loaded yet.
            _wait(lambda: log.is_file() and "(restart 0)" in log.read_text(), 120, "the job to start", info)
            time.sleep(2)
            cluster.signal(job, "USR1")
            restarts += 1
            _wait(_requeued(info, restarts), 180, "the requeue after a signal at start-up", info)
            cluster.release(job)
            # Again while the first checkpoint is being written.
            _wait(lambda: _checkpoint_being_written(out / "checkpoints"), 300, "the first checkpoint", info, poll=0.005)
        else:
            _wait(lambda: (out / "checkpoints" / "step-00000005" / "meta.json").exists(), 300, "the first checkpoint", info)
        cluster.signal(job, "USR1")  # what --signal=USR1@T sends before the time limit
        restarts += 1
        _wait(_requeued(info, restarts), 120, "the requeue", info)
        cluster.release(job)  # a requeued job may otherwise start only 120 s later
        final = _wait(lambda: info().get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and info(),
                      400, "the requeued job to finish", info)
    finally:
        cluster.cancel(job)
    text = log.read_text()
    assert final["JobState"] == "COMPLETED", text[-3000:]
    assert text.rstrip().endswith(f"brushtrain job {job}: srun exited with 0"), text[-3000:]
    assert f"(restart {restarts})" in text and text.count("requeued SLURM job") == restarts
    if at_start:
        first = text.split("(restart 1)")[0]
        assert "stopping before the first step (at step 0); nothing new to save" in first, first[-3000:]
        assert "starting fresh" in first and "saving a checkpoint" not in first
    saved = int(text.split("saving a checkpoint at step ")[1].split()[0])
    assert 5 <= saved < max_steps
    assert f"resuming from {out}/checkpoints/step-{saved:08d}" in text
    assert f"brushtrain fit: finished at step {max_steps}" in text
    assert json.loads((out / "checkpoints" / f"step-{max_steps:08d}" / "meta.json").read_text())["world_size"] == 2
    assert not list((out / "checkpoints").glob("*.tmp-*")) and "skipping damaged" not in text
    # Every step trained exactly once, no sample twice (1024 samples >= 60 steps x 8 x 2: one epoch).
    records = [line.split() for f in (out / "consumed").glob("rank*.txt") for line in f.read_text().splitlines()]
    steps = collections.Counter(int(s) for s, _ in records)
    assert sorted(steps) == list(range(max_steps)) and set(steps.values()) == {2 * 8}
    keys = collections.Counter(k for _, k in records)
    assert max(keys.values()) == 1 and len(keys) == max_steps * 16
    # The requeued jobs logged into the same W&B run.
    run_id = (out / "wandb_run_id").read_text().strip()
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == restarts + 1
    assert (out / "brushnet" / "config.json").is_file()
