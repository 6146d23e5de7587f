"""benchmarks/gpu_check.sh stays runnable: its dry run (tiny models, CPU) goes through every case and writes the
table; a failing or overrunning case is reported and the rest go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

CASES = ["prepare-sd15", "eager-b8", "eager-b32", "reference-b2", "sdxl-b2", "max-batch",
         "compiled-b8", "compiled-b32"]


def test_dry_run_runs_every_case_and_writes_one_table(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "PY": sys.executable}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--jobs", "2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {row["case"]: row for row in report["cases"]}
    assert list(rows) == CASES
    ceilings = report["environment"]  # the measured matmul and copy rates the MFU column is read against
    assert ceilings["matmul_bf16_tflops"] > 0 and ceilings["copy_read_plus_write_tb_s"] > 0, ceilings
    log = (out / "gpu_check.log").read_text()
    assert all(row["status"] == "ok" for row in rows.values()), {k: r["status"] for k, r in rows.items()} and log[-4000:]
    for name in ("eager-b8", "eager-b32", "sdxl-b2", "compiled-b8", "compiled-b32"):
        row = rows[name]
        assert row["samples_per_s_per_gpu"] > 0 and 0 <= row["data_wait_fraction"] <= 1 and row["windows"] >= 1, row
    assert rows["eager-b8"]["batch"] < rows["eager-b32"]["batch"]
    assert rows["compiled-b8"]["checks"] == {"resumed eager-b8's checkpoint": True, "exported, no _orig_mod.": True}
    assert rows["eager-b8"]["checks"] == {"checkpoint saved": True}
    # the GPU run's precision, on the CPU too: bf16-mixed (DeepSpeed's bf16 engine), frozen parts in bf16
    from omegaconf import OmegaConf

    for run in ("b8", "b32", "sdxl", "cb32"):
        cfg = OmegaConf.load(tmp_path / "work" / "runs" / run / "config.yaml")
        assert (cfg.trainer.precision, cfg.model.frozen_dtype) == ("bf16-mixed", "bf16"), run
    assert rows["reference-b2"]["samples_per_s"] > 0 and rows["reference-b2"]["loss_finite"]
    assert rows["max-batch"]["largest_batch"] == 2 and rows["max-batch"]["capped"]  # a CPU never runs out
    table = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in table and all(f"| {name} |" in table for name in CASES)

    # A rerun on the same WORK (the device machine keeps it while warm) reuses the bases and shards, but eager-b8
    # trains again: it must not find the checkpoint compiled-b8 trained on in its folder, train nothing ('nothing
    # to do') and report the figures logged last there.
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--only", "eager-b8"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = json.loads((out / "gpu_check.json").read_text())["cases"][-1]
    log = (tmp_path / "work" / "logs" / "eager-b8.log").read_text()
    assert row["case"] == "eager-b8" and row["status"] == "ok", (row, log[-2000:])
    assert "nothing to do" not in log and "starting fresh" in log, log[-2000:]
    assert row["windows"] >= 1 and row["checks"] == {"checkpoint saved": True}, row


def test_a_failing_and_an_overrunning_case_are_reported(tmp_path):
    env = dict(os.environ)
    status, _ = gpu_check.run_process([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"],
                                      tmp_path / "fail.log", 30, env)
    assert status == "failed (exit 3)" and "boom" in (tmp_path / "fail.log").read_text()
    status, seconds = gpu_check.run_process([sys.executable, "-c", "import time; time.sleep(60)"],
                                            tmp_path / "slow.log", 1, env)
    assert status == "timeout (1 s)" and seconds < 30
    rows = [{"case": "eager-b8", "what": "x", "status": "failed (exit 3)", "batch": 8, "wall_s": 2.0},
            {"case": "reference-b2", "what": "y", "status": "ok", "batch": 2, "samples_per_s": 10.0},
            {"case": "eager-b32", "what": "z", "status": "ok", "batch": 32, "samples_per_s_per_gpu": 25.0, "mfu": 0.4}]
    table = gpu_check.table(rows, "# t")
    assert "| eager-b8 | x | failed (exit 3) | 8 | - |" in table
    assert "| eager-b32 | z | ok | 32 | 25.0 | 2.50 | 40.0% |" in table


def test_a_check_that_raises_is_a_failed_check_not_the_end_of_the_run(tmp_path):
    """A case killed while writing its export leaves a half-written file; reading it raises, and that must be a
    "NO" in the table, not an exception that ends gpu_check.py before the remaining cases and the table."""
    folder = tmp_path / "brushnet"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    check = lambda log: gpu_check._export_ok(folder)  # noqa: E731 - as plan() writes its checks
    try:
        check("")
        raised = False
    except Exception:  # noqa: BLE001
        raised = True
    assert raised
    assert gpu_check._passes(check, "") is False
    assert gpu_check._passes(lambda log: "resuming from" in log, "brushtrain fit: resuming from x") is True


def test_max_batch_reports_what_it_found_when_a_larger_batch_fails_otherwise(tmp_path, monkeypatch, capsys):
    """On the GPU a batch far above the first ones can fail with an error that is not out-of-memory (a kernel's
    limit past 2^31 elements, a cuDNN status): the search stops there and still prints its JSON with the largest
    batch that ran, instead of the case ending with no figure. A failure of the smallest batch stays an error."""
    import max_batch

    from train.engine.module import BrushNetModule
    from train.model.tiny import write_tiny_base

    base = write_tiny_base(tmp_path / "base", "sd15")
    real = BrushNetModule.compute_loss

    def compute_loss(self, batch):
        if len(batch["caption"]) >= 4:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if ...")
        return real(self, batch)

    monkeypatch.setattr(BrushNetModule, "compute_loss", compute_loss)
    argv = ["max_batch.py", "--base", str(base), "--resolution", "64", "--start", "1", "--max", "16", "--device", "cpu"]
    monkeypatch.setattr(sys, "argv", argv)
    max_batch.main()
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["largest_batch"] == 2 and result["error_batch"] == 4 and "CUDNN_STATUS" in result["error"], result
    assert not result["capped"] and [t["batch"] for t in result["tried"]] == [1, 2, 4], result
    row = {"case": "max-batch", "what": "x", "status": "ok", **result}
    assert "(stopped at 4: RuntimeError: cuDNN error" in gpu_check.table([row], "# t")

    monkeypatch.setattr(sys, "argv", argv[:6] + ["4"] + argv[7:])  # --start 4: the first batch fails
    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        max_batch.main()
