"""The steps `brushtrain fit` runs before training, one at a time: shards resolved once, the files rank 0
prepares while the others wait, the thread policy, and the assembly of callbacks and Trainer."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from launch.env import detect_launch
from train.commands.fit import load_fit_config
from train.setup.build import build_callbacks, build_models, build_trainer, data_config, resolve_shards
from train.setup.prepare import PrepareTimeout, base_path, finished_step, prepare_files, wait_for
from train.setup.runtime import devices


def _cfg(tmp_path, *overrides):
    cfg, _ = load_fit_config([], [f"output_dir={tmp_path / 'run'}", *overrides])
    return cfg


def test_shards_are_resolved_once_with_the_synthetic_fallback(tmp_path):
    cfg = _cfg(tmp_path)  # the default job: synthetic data
    shards = resolve_shards(cfg)
    assert shards.train == [cfg.synth.train_dir] and shards.eval == [cfg.synth.eval_dir] and shards.samples == []
    given = _cfg(tmp_path, "synth.enabled=false", "data.shards=/d/{000..001}.tar", "eval.shards=[/e/a.tar,/e/b.tar]")
    shards = resolve_shards(given)
    assert shards.train == ["/d/{000..001}.tar"] and shards.eval == ["/e/a.tar", "/e/b.tar"]
    data = data_config(given, shards)
    assert data.shards == shards.train and data.mask.brush_max_strokes == given.data.mask.brush_max_strokes


def test_a_generated_base_lives_in_the_run_and_a_folder_is_used_as_given(tmp_path):
    assert base_path(_cfg(tmp_path)) == tmp_path / "run" / "base-tiny-sd15"
    assert base_path(_cfg(tmp_path, "model.base=/models/sd15")) == "/models/sd15"


def test_rank_zero_prepares_and_the_others_wait(tmp_path):
    cfg = _cfg(tmp_path, "synth.train_samples=8", "synth.eval_samples=4", "synth.per_shard=4")
    other = SimpleNamespace(is_rank_zero=False)
    with pytest.raises(PrepareTimeout, match="rank 0 to write prepared files"):
        prepare_files(cfg, other, wait_timeout=0.5)  # nothing there and nobody writing it
    waiter = threading.Thread(target=prepare_files, args=(cfg, other), kwargs={"wait_timeout": 120})
    waiter.start()
    prepare_files(cfg, SimpleNamespace(is_rank_zero=True))
    waiter.join(130)
    assert not waiter.is_alive()
    assert len(list(Path(cfg.synth.train_dir).glob("*.tar"))) == 2
    assert (base_path(cfg) / "model_index.json").is_file()
    marker = tmp_path / "late"
    threading.Timer(0.3, marker.touch).start()
    start = time.monotonic()
    wait_for(marker, "a late file", timeout=30, poll=0.05)
    assert time.monotonic() - start < 10


def test_finished_step_reads_the_checkpoints_meta(tmp_path):
    folder = tmp_path / "step-00000007"
    folder.mkdir()
    assert finished_step(None) is None and finished_step(folder) is None
    (folder / "meta.json").write_text(json.dumps({"step": 7}))
    assert finished_step(folder) == 7 and finished_step(folder / "model.ckpt") == 7


def test_cpu_processes_get_an_equal_share_of_the_cores(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert devices(_cfg(tmp_path, "trainer.accelerator=cpu", "trainer.devices=2")) == ("cpu", 2, 2)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_callbacks_come_in_the_order_they_must_run_and_share_one_preemption_handler(tmp_path):
    from train.callbacks.evaluation import DenoisingEval
    from train.callbacks.export_on_end import ExportOnEnd
    from train.callbacks.metrics import TrainingMetrics
    from train.callbacks.samples import SampleGrids
    from train.engine.checkpointing import StepCheckpoint
    from train.engine.preemption import PreemptionHandler

    cfg = _cfg(tmp_path)
    prepare_files(cfg, SimpleNamespace(is_rank_zero=True))
    base, branch = build_models(cfg)
    shards = resolve_shards(cfg)
    callbacks, preemption = build_callbacks(cfg, base, branch, data_config(cfg, shards), shards, io=None)
    kinds = [type(c) for c in callbacks]
    assert kinds[0] is TrainingMetrics and kinds[1] is StepCheckpoint and kinds[2] is PreemptionHandler
    assert kinds.index(DenoisingEval) < kinds.index(ExportOnEnd)  # the final eval reads the checkpoint first
    for kind in (DenoisingEval, ExportOnEnd, SampleGrids):
        assert next(c for c in callbacks if type(c) is kind).preemption is preemption
    before = torch.backends.cudnn.benchmark
    try:
        trainer, handler = build_trainer(cfg, detect_launch(), base, branch, data_config(cfg, shards), shards)
        assert trainer.max_steps == cfg.trainer.max_steps and isinstance(handler, PreemptionHandler)
        assert torch.backends.cudnn.benchmark is True  # trainer.benchmark: the batches have one shape
        off = _cfg(tmp_path, "trainer.benchmark=false")
        build_trainer(off, detect_launch(), base, branch, data_config(off, shards), shards)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before
