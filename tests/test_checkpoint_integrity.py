"""Checkpoints record what they hold; damaged ones are skipped or refused; write errors stop the run cleanly."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from train.cli import main
from train.engine.checkpointing import (
    CheckpointWriteError,
    StepCheckpoint,
    resolve_resume,
    step_folders,
    verified,
)
from train.engine.integrity import MANIFEST, CheckpointError, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["synth.train_samples=64", "synth.eval_samples=16", "eval.samples=16", "synth.per_shard=32",
         "logging.logger=csv", "samples.enabled=false", "eval.at_start=false", "data.num_workers=0"]


def _trainer(step: int, write, ckpt_path=None):
    strategy = SimpleNamespace(broadcast=lambda x: x, barrier=lambda name=None: None, launcher=None)
    return SimpleNamespace(global_step=step, current_epoch=0, world_size=1, is_global_zero=True, global_rank=0,
                           strategy=strategy, save_checkpoint=write, ckpt_path=ckpt_path)


def _torch_file(path, weights_only=False, value=1.0):
    torch.save({"state_dict": {"brushnet.w": torch.full((256,), value)}}, path)


def _saved(tmp_path, *steps) -> StepCheckpoint:
    cb = StepCheckpoint(tmp_path / "checkpoints", every_n_steps=10, keep_last=5, branch_config={"a": 1})
    for step in steps:
        cb.save(_trainer(step, lambda path, weights_only=False, s=step: _torch_file(path, value=s)))
    return cb


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path, at: int = -200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_the_manifest_records_every_file_and_verification_finds_damage(tmp_path):
    cb = _saved(tmp_path, 10)
    folder = cb.last_saved
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["algorithm"] == "sha256"
    assert set(manifest["files"]) == {"model.ckpt", "meta.json", "brushnet_config.json"}
    assert manifest["files"]["model.ckpt"]["size"] == (folder / "model.ckpt").stat().st_size
    assert verify_checkpoint(folder).ok

    shutil.copytree(folder, tmp_path / "a")
    _cut(tmp_path / "a" / "model.ckpt")
    assert "model.ckpt has" in verify_checkpoint(tmp_path / "a").problem and "the manifest says" in verify_checkpoint(tmp_path / "a").problem
    shutil.copytree(folder, tmp_path / "b")
    _flip(tmp_path / "b" / "model.ckpt")
    assert verify_checkpoint(tmp_path / "b").problem == "model.ckpt: SHA-256 differs from the manifest (the data is damaged)"
    shutil.copytree(folder, tmp_path / "c")
    (tmp_path / "c" / "meta.json").unlink()
    assert verify_checkpoint(tmp_path / "c").problem == "meta.json is missing"
    shutil.copytree(folder, tmp_path / "d")
    (tmp_path / "d" / MANIFEST).write_text("{\"files\": ")
    assert verify_checkpoint(tmp_path / "d").problem.startswith(f"{MANIFEST} is unreadable")


def test_resume_auto_skips_damaged_checkpoints_and_says_why(tmp_path):
    cb = _saved(tmp_path, 10, 20, 30)
    ckpts = tmp_path / "checkpoints"
    _cut(ckpts / "step-00000030" / "model.ckpt")
    _flip(ckpts / "step-00000020" / "model.ckpt")
    said = []
    assert resolve_resume("auto", tmp_path, said.append) == ckpts / "step-00000010" / "model.ckpt"
    assert said[0].startswith(f"skipping damaged checkpoint {ckpts / 'step-00000030'}: model.ckpt has ")
    assert said[1] == f"skipping damaged checkpoint {ckpts / 'step-00000020'}: model.ckpt: SHA-256 differs from the manifest (the data is damaged)"
    assert said[2] == f"using {ckpts / 'step-00000010'}, the newest intact checkpoint"
    assert cb.last_saved == ckpts / "step-00000030"

    # Every one damaged: the run does not start (from scratch or otherwise); the message lists them all.
    _cut(ckpts / "step-00000010" / "meta.json")
    with pytest.raises(CheckpointError) as info:
        resolve_resume("auto", tmp_path)
    text = str(info.value)
    assert text.startswith(f"every checkpoint in {ckpts} is damaged: step-00000030 (model.ckpt has")
    assert "step-00000020 (model.ckpt: SHA-256 differs" in text and "step-00000010 (meta.json has" in text

    # A damaged checkpoint named explicitly is refused with one message.
    with pytest.raises(CheckpointError, match=r"checkpoint .*step-00000020 is damaged: model.ckpt: SHA-256 differs"):
        resolve_resume(str(ckpts / "step-00000020"), tmp_path)
    with pytest.raises(CheckpointError, match=r"step-00000030 is damaged: model.ckpt has \d+ bytes"):
        resolve_resume(str(ckpts / "step-00000030" / "model.ckpt"), tmp_path)


def test_checkpoints_of_another_history_are_set_aside_and_keep_last_never_drops_the_new_one(tmp_path, capsys):
    """Resumed from step 20 (30 was damaged): pruning by step number kept the damaged 30 and deleted the new 25 and
    the intact 20 (keep_last=1), and resume=auto would have gone back to a later step of the abandoned history."""
    cb = _saved(tmp_path, 10, 20, 30)
    ckpts = tmp_path / "checkpoints"
    _flip(ckpts / "step-00000030" / "model.ckpt")
    resumed = resolve_resume("auto", tmp_path)
    assert resumed == ckpts / "step-00000020" / "model.ckpt"
    cb.keep_last = 1
    cb.on_train_start(_trainer(20, None, ckpt_path=str(resumed)), None)
    aside = [p for p in ckpts.iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == ["step-00000030"]
    assert (ckpts / "latest").read_text() == "step-00000020\n"
    out = capsys.readouterr().out
    assert f"this run starts at step 20; the checkpoints of another history in {ckpts} (step-00000030) were moved to " \
           f"{aside[0]}" in out
    cb.save(_trainer(25, lambda path, weights_only=False: _torch_file(path, value=25)))
    assert [p.name for p in step_folders(ckpts)] == ["step-00000025"]
    assert resolve_resume("auto", tmp_path) == ckpts / "step-00000025" / "model.ckpt"
    cb._prune(ckpts / "step-00000025")  # even with keep_last reached by a folder of a higher step, never the new one
    assert (ckpts / "step-00000025").is_dir()

    # A fresh start (no checkpoint) in a used folder: every earlier checkpoint is another history.
    fresh = StepCheckpoint(ckpts, every_n_steps=10, keep_last=2)
    fresh.on_train_start(_trainer(0, None), None)
    assert step_folders(ckpts) == [] and not (ckpts / "latest").exists()
    assert resolve_resume("auto", tmp_path) is None
    # A resume from another run's step-20 moves this folder's own step-20 aside as well.
    other = _saved(tmp_path / "other", 20)
    _saved(tmp_path, 20)
    cb.on_train_start(_trainer(20, None, ckpt_path=str(other.last_saved / "model.ckpt")), None)
    assert step_folders(ckpts) == []
    # Resumed through a symlink to the step folder (DeepSpeed's ckpt_path is the folder): that folder is this
    # history, not another (it was moved aside: the symlink's own parent is checkpoints/).
    _saved(tmp_path, 20)
    alias = tmp_path / "resume-here"
    alias.symlink_to(ckpts / "step-00000020")
    cb.on_train_start(_trainer(20, None, ckpt_path=str(alias)), None)
    assert [p.name for p in step_folders(ckpts)] == ["step-00000020"]


def test_a_path_that_is_no_checkpoint_is_refused_by_name(tmp_path, capsys):
    """resume= and export with a picture, a folder of something else, or the checkpoints/ folder itself."""
    _saved(tmp_path, 10, 20)
    ckpts = tmp_path / "checkpoints"
    picture, other = tmp_path / "photo.png", tmp_path / "other"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match=r"photo.png is not a checkpoint \(a PyTorch .ckpt/.pt archive\)"):
        resolve_resume(str(picture), tmp_path)
    with pytest.raises(CheckpointError, match=r"other is not a checkpoint: neither a BrushTrain/Lightning checkpoint"):
        resolve_resume(str(other), tmp_path)
    assert resolve_resume(str(ckpts), tmp_path) == ckpts / "step-00000020" / "model.ckpt"  # its `latest` is ours
    for path in (picture, other):
        assert main(["export", str(path), str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"brushtrain export: {path} is not a checkpoint") and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_latest_pointer_means_the_checkpoint_it_names(tmp_path, capsys):
    """`brushtrain export runs/x/checkpoints/latest` (the README lists that file) read the pointer as a torch
    archive: "not a checkpoint ... File is not a zip file". It means the folder it names, for resume= too."""
    from train.engine.checkpointing import locate

    _saved(tmp_path, 10, 20)
    ckpts = tmp_path / "checkpoints"
    pointer = ckpts / "latest"
    assert pointer.read_text().strip() == "step-00000020"
    assert resolve_resume(str(pointer), tmp_path) == ckpts / "step-00000020" / "model.ckpt"
    assert locate(pointer, verify=False) == ckpts / "step-00000020"
    pointer.write_text("step-00000010\n")  # the file is followed, not the newest folder
    assert resolve_resume(str(pointer), tmp_path) == ckpts / "step-00000010" / "model.ckpt"
    pointer.write_text("step-00000099\n")
    with pytest.raises(CheckpointError, match=r"latest names 'step-00000099', which is not a folder in .*checkpoints \(moved"):
        resolve_resume(str(pointer), tmp_path)
    assert main(["export", str(pointer), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "names 'step-00000099'" in err and "Traceback" not in err and not (tmp_path / "out").exists()
    for junk in ("", "step-00000020.tmp-1", "../elsewhere"):  # hand-edited or cut short: named, not "a zip file"
        pointer.write_text(junk)
        with pytest.raises(CheckpointError, match=r"latest names .*which is not a folder in"):
            resolve_resume(str(pointer), tmp_path)
    pointer.unlink()
    pointer.symlink_to("step-00000010")  # a symlink instead of the text file
    assert resolve_resume(str(pointer), tmp_path) == ckpts / "step-00000010" / "model.ckpt"
    pointer.unlink()
    pointer.write_text("step-00000020\n")
    _flip(ckpts / "step-00000020" / "model.ckpt")  # the folder named is verified like any other
    with pytest.raises(CheckpointError, match=r"step-00000020 is damaged"):
        resolve_resume(str(pointer), tmp_path)


def test_deepspeeds_own_latest_means_its_checkpoint_folder(tmp_path):
    """A DeepSpeed step folder holds DeepSpeed's `latest` (naming its tag folder): given that file, resume= and
    export returned the text file itself (Lightning then failed after the models loaded; export read it with
    torch.load). It means the step folder; in a DeepSpeed save folder of another tool, that folder."""
    from train.engine.checkpointing import locate

    _saved(tmp_path, 10)
    step = tmp_path / "checkpoints" / "step-00000010"
    (step / "checkpoint").mkdir()
    (step / "latest").write_text("checkpoint")
    assert locate(step / "latest", verify=False) == step
    other = tmp_path / "ds-save"
    (other / "global_step100").mkdir(parents=True)
    (other / "latest").write_text("global_step100")
    assert locate(other / "latest", verify=False) == other
    assert resolve_resume(str(other / "latest"), tmp_path) == other


def test_export_never_replaces_a_folder_that_is_not_a_branch(tmp_path, capsys):
    """`brushtrain export runs/x runs/x` deleted the run (checkpoints and all) to put the branch there."""
    from train.engine.export import target_problem

    _saved(tmp_path, 10)
    (tmp_path / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for target in (tmp_path, tmp_path / "checkpoints", tmp_path / "notes.txt", tmp_path / "notes.txt" / "branch"):
        assert main(["export", str(tmp_path), str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"brushtrain export: cannot export to {target}: ") and "Traceback" not in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, "nothing was deleted"
    assert "is not a branch folder (it holds checkpoints, notes.txt)" in target_problem(tmp_path)
    assert target_problem(tmp_path / "notes.txt") == f"{tmp_path / 'notes.txt'} exists and is a file"
    branch = tmp_path / "earlier-export"
    branch.mkdir()
    assert target_problem(branch) is None  # empty
    (branch / "config.json").write_text('{"_class_name": "BrushNetModel"}')
    (branch / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert target_problem(branch) is None  # an earlier export: replaced
    (branch / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    assert "is not a branch folder" in target_problem(branch)


def test_old_checkpoints_without_a_manifest_resume_with_what_can_be_checked(tmp_path):
    cb = _saved(tmp_path, 10)
    folder = cb.last_saved
    (folder / MANIFEST).unlink()  # as written before manifests existed
    said = []
    assert verified(folder, said.append) == folder
    assert said == ["checkpoint step-00000010: no manifest.json (written before checksums): checked JSON files, "
                    "zip CRCs and safetensors headers only"]
    assert resolve_resume("auto", tmp_path) == folder / "model.ckpt"
    # What can be checked without a manifest is checked: torch's zip CRCs, the archive's end, the JSON files.
    ckpt = folder / "model.ckpt"
    good = ckpt.read_bytes()
    with zipfile.ZipFile(ckpt) as z:
        info = next(i for i in z.infolist() if i.file_size >= 1024)
    _flip(ckpt, at=info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100)
    assert "fails its CRC check" in verify_checkpoint(folder).problem
    ckpt.write_bytes(good[: len(good) // 2])
    assert "not a complete archive" in verify_checkpoint(folder).problem
    ckpt.write_bytes(good)
    (folder / "meta.json").write_text("{")
    assert verify_checkpoint(folder).problem.startswith("meta.json is not valid JSON")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS])
def test_a_write_error_removes_the_partial_folder_and_names_path_error_and_newest(tmp_path, monkeypatch, code):
    import train.engine.checkpointing as checkpointing

    cb = _saved(tmp_path, 10)
    ckpts = tmp_path / "checkpoints"

    def fails(folder):
        raise OSError(code, os.strerror(code), str(Path(folder) / MANIFEST))

    monkeypatch.setattr(checkpointing, "write_manifest", fails)  # rank 0's own files, after the model file
    with pytest.raises(CheckpointWriteError) as info:
        cb.save(_trainer(20, lambda path, weights_only=False: _torch_file(path)))
    text = str(info.value)
    assert text.startswith(f"could not write the checkpoint of step 20 to {ckpts}/step-00000020.tmp-")
    assert f"rank 0: [Errno {code}] {os.strerror(code)}" in text
    assert f"removed the partial folder; the newest complete checkpoint is {ckpts / 'step-00000010'}" in text
    assert info.value.exit_code == 1 and info.value.reported
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000010"], "no partial folder left"
    assert verify_checkpoint(ckpts / "step-00000010").ok

    def model_write_fails(path, weights_only=False):  # inside the strategy's own writer (DeepSpeed)
        Path(path).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    with pytest.raises(CheckpointWriteError, match="PytorchStreamWriter failed writing file data/0"):
        cb.save(_trainer(30, model_write_fails))
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000010"]


def _fit(out: Path, *overrides, timeout=600):
    cmd = [sys.executable, "-m", "train", "fit", f"output_dir={out}", *SMALL, *overrides]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_a_damaged_newest_checkpoint_is_skipped_by_fit_and_export(tmp_path):
    out = tmp_path / "run"
    first = _fit(out, "trainer.max_steps=6", "checkpoint.every_n_steps=3", "eval.at_end=false")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = out / "checkpoints"
    _cut(ckpts / "step-00000006" / "model.ckpt")  # as after a storage fault

    code = main(["export", str(out), str(tmp_path / "exported")])
    assert code == 0 and (tmp_path / "exported" / "config.json").is_file()
    assert main(["export", str(ckpts / "step-00000006"), str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()

    again = _fit(out, "trainer.max_steps=9", "checkpoint.every_n_steps=3", "eval.at_end=false")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"brushtrain fit: skipping damaged checkpoint {ckpts / 'step-00000006'}: model.ckpt has " in again.stdout
    assert f"resuming from {ckpts / 'step-00000003' / 'model.ckpt'}" in again.stdout
    assert "finished at step 9" in again.stdout
    assert verify_checkpoint(ckpts / "step-00000006").ok, "the damaged one was rewritten when training got there"
    assert "(step-00000006) were moved to" in again.stdout, "set aside at the start: another history"
    assert [p.name for p in ckpts.glob("superseded-*/*")] == ["step-00000006"]

    for step in (6, 9):
        _flip(ckpts / f"step-{step:08d}" / "model.ckpt")
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000006", "step-00000009"]  # keep_last=2
    logs_before = sorted((out / "logs").iterdir())
    last = _fit(out, "trainer.max_steps=12", "checkpoint.every_n_steps=3")
    assert last.returncode == 2 and "Traceback" not in last.stderr
    assert "brushtrain fit: config error" not in last.stderr
    assert f"brushtrain fit: every checkpoint in {ckpts} is damaged: step-00000009 (model.ckpt: SHA-256 differs" in last.stderr
    assert "step-00000006 (model.ckpt: SHA-256 differs" in last.stderr
    assert sorted((out / "logs").iterdir()) == logs_before, "nothing was started"


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {result.stderr.strip()}")


def test_a_full_disk_during_a_checkpoint_stops_every_rank_with_one_message(tmp_path):
    """DDP, 2 processes: rank 0 writes the file and hits ENOSPC; both ranks stop, one message, no partial folder."""
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    _tmpfs(ckpts, "8m")  # one tiny checkpoint (about 5.3 MB) fits, a second one does not
    try:
        result = _fit(out, "trainer.max_steps=6", "checkpoint.every_n_steps=3", "trainer.devices=2",
                      "checkpoint.keep_last=1", timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if "could not write the checkpoint" in line]
        assert len(lines) == 1, result.stderr[-3000:]
        assert lines[0].startswith(f"brushtrain: could not write the checkpoint of step 6 to {ckpts}/step-00000006.tmp-")
        assert "rank 0: [Errno 28] No space left on device" in lines[0]
        assert f"removed the partial folder; the newest complete checkpoint is {ckpts / 'step-00000003'}" in lines[0]
        assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-00000003"]

        subprocess.run(["mount", "-o", "remount,size=64m", str(ckpts)], check=True)  # space freed
        resumed = _fit(out, "trainer.max_steps=6", "checkpoint.every_n_steps=3", "checkpoint.keep_last=1",
                       "trainer.devices=2")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming from {ckpts / 'step-00000003' / 'model.ckpt'}" in resumed.stdout
        verdict = verify_checkpoint(ckpts / "step-00000006")
        assert verdict.ok and verdict.full, verdict
    finally:
        subprocess.run(["umount", "-l", str(ckpts)], capture_output=True)
