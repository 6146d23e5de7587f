"""Multi-node without a cluster: two torchrun node launchers on localhost (--nnodes 2)."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from test_fit import SMALL

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_train_one_job_on_disjoint_data(tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    # Two "nodes" on one host share its cores: one thread each (a real node would have its own).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [torchrun, "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(port),
               "launch/fit.py", f"output_dir={out}", "trainer.max_steps=8", "checkpoint.every_n_steps=4",
               "debug.record_keys=true", "eval.at_start=false", *SMALL, "synth.train_samples=256"]  # < 1 epoch
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    assert "(torchrun launch, 2 process(es))" in outputs[0]
    assert json.loads((out / "checkpoints" / "step-00000008" / "meta.json").read_text())["world_size"] == 2
    keys = {r: [line.split()[1] for line in (out / "consumed" / f"rank{r}.txt").read_text().splitlines()] for r in (0, 1)}
    assert len(keys[0]) == len(keys[1]) == 8 * 8
    assert not set(keys[0]) & set(keys[1]), "each node reads its own samples"
    assert max(collections.Counter(keys[0] + keys[1]).values()) == 1
    assert (out / "brushnet" / "config.json").is_file()
