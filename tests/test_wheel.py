"""The wheel works anywhere: built from the checkout, installed (not editable) into a temporary target, and
run from an unrelated directory. Configs and the generated bases' architecture files come from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: an in-place build leaves build/lib behind, whose stale modules a later
    # build would ship, and writes into the checkout.
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "wandb", "*.egg-info", "__pycache__", ".whl", ".gl"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheel = next((work / "dist").glob("brushtrain-*.whl"))
    target = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    return wheel, target, elsewhere


def _run(installed, *args, timeout=900):
    _, target, elsewhere = installed
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_ships_the_configs_and_architectures(installed):
    wheel, target, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("configs/tiny_cpu.yaml", "configs/sd15_segmentation.yaml", "configs/sdxl_random.yaml",
                    "configs/deepspeed/zero2.yaml", "configs/architectures/sd15/unet/config.json",
                    "configs/architectures/sdxl/text_encoder_2/config.json", "common/errors.py", "train/model/brushnet.py"):
        assert shipped in names, shipped
    assert not any(n.startswith("tests/") for n in names)
    where = _run(installed, "-c", "import train, configs; print(train.__file__); print(configs.CONFIG_DIR)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout  # not the checkout


def test_shipped_configs_are_found_by_name_from_anywhere(installed):
    result = _run(installed, "-m", "train", "fit", "-c", "sd15_segmentation", "-c", "deepspeed/zero2",
                  "--print-config")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lr: 1.0e-05" in result.stdout and "stage: 2" in result.stdout
    missing = _run(installed, "-m", "train", "fit", "-c", "no_such_recipe", "--print-config")
    assert missing.returncode == 2 and "no_such_recipe" in missing.stderr and "sd15_segmentation" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_default_job_and_data_synth_run_from_the_wheel(installed):
    _, _, elsewhere = installed
    synth = _run(installed, "-m", "train", "data", "synth", str(elsewhere / "shards"), "--samples", "8")
    assert synth.returncode == 0, synth.stderr[-3000:]
    assert list((elsewhere / "shards").glob("*.tar"))
    out = elsewhere / "run"
    result = _run(installed, "-m", "train", "fit", f"output_dir={out}", "trainer.max_steps=2", "synth.train_samples=32",
                  "synth.eval_samples=8", "eval.samples=8", "samples.enabled=false", "logging.logger=csv")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "finished at step 2" in result.stdout
    assert json.loads((out / "brushnet" / "config.json").read_text())["_class_name"]
    assert (out / "base-tiny-sd15" / "unet" / "config.json").is_file()
    demo = _run(installed, "-m", "train", "demo", "-c", "demo", f"out_dir={elsewhere / 'demo'}", "steps=2")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert (elsewhere / "demo" / "grid.png").is_file()
