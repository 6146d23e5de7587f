"""Our sbatch scripts on a real single-host SLURM cluster: preempt with the warning signal, requeue, resume.

Skipped, with the reason, where SLURM cannot be installed or started (not root,
no apt-get, daemons that will not come up).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, SlurmUnavailable

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    try:
        c = SlurmCluster.start(workdir)
    except (SlurmUnavailable, OSError) as exc:
        pytest.skip(f"no SLURM cluster here: {exc}")
    yield c
    c.stop()


def _wait(predicate, timeout: float, what: str, job_info=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {job_info() if job_info else ''}")


@pytest.mark.parametrize("script, nodes, tasks", [("slurm/train.sbatch", 1, 2), ("slurm/train_multinode.sbatch", 2, 1)],
                         ids=["1node-2tasks", "2nodes-1task"])
def test_sbatch_preempt_requeue_resume(cluster, tmp_path, script, nodes, tasks):
    out = tmp_path / "run"
    log = tmp_path / "job-%j.out"
    args = ["configs/tiny_cpu.yaml", f"output_dir={out}", f"trainer.max_steps={MAX_STEPS}", "checkpoint.every_n_steps=5",
            "debug.record_keys=true", "logging.logger=wandb", "samples.enabled=false", "synth.train_samples=1024",
            "synth.eval_samples=16", "eval.samples=16", "trainer.log_every_n_steps=5"]
    options = [f"--nodes={nodes}", f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
               f"--output={log}"]
    job = cluster.submit(script, args, options, cwd=ROOT)
    log = Path(str(log).replace("%j", job))
    info = lambda: cluster.job(job)  # noqa: E731
    try:
        _wait(lambda: (out / "checkpoints" / "step-00000005" / "meta.json").exists(), 300, "the first checkpoint", info)
        cluster.signal(job, "USR1")  # what --signal=USR1@T sends before the time limit
        _wait(lambda: (i := info()).get("JobState") == "PENDING" and int(i.get("Restarts", 0)) >= 1, 120,
              "the requeue", info)
        cluster.release(job)  # a requeued job may otherwise start only 120 s later
        final = _wait(lambda: info().get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") and info(),
                      400, "the requeued job to finish", info)
    finally:
        cluster.cancel(job)
    text = log.read_text()
    assert final["JobState"] == "COMPLETED", text[-3000:]
    assert text.rstrip().endswith(f"brushtrain job {job}: srun exited with 0"), text[-3000:]
    assert "(restart 1)" in text and "requeued SLURM job" in text
    saved = int(text.split("saving a checkpoint at step ")[1].split()[0])
    assert 5 <= saved < MAX_STEPS
    assert f"resuming from {out}/checkpoints/step-{saved:08d}" in text
    assert f"brushtrain fit: finished at step {MAX_STEPS}" in text
    assert json.loads((out / "checkpoints" / f"step-{MAX_STEPS:08d}" / "meta.json").read_text())["world_size"] == 2
    # Every step trained exactly once, no sample twice (1024 samples > 60 steps x 8 x 2: one epoch).
    records = [line.split() for f in (out / "consumed").glob("rank*.txt") for line in f.read_text().splitlines()]
    steps = collections.Counter(int(s) for s, _ in records)
    assert sorted(steps) == list(range(MAX_STEPS)) and set(steps.values()) == {2 * 8}
    keys = collections.Counter(k for _, k in records)
    assert max(keys.values()) == 1 and len(keys) == MAX_STEPS * 16
    # The requeued job logged into the same W&B run.
    run_id = (out / "wandb_run_id").read_text().strip()
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert (out / "brushnet" / "config.json").is_file()
