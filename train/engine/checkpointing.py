"""Step checkpoints: written by all ranks together, atomically, the last K kept; finding one to resume.

Layout under ``<output_dir>/checkpoints``::

    step-00001000/            one complete checkpoint (renamed into place when every rank is done)
        model.ckpt            DDP / single process: Lightning's checkpoint file
        checkpoint/, latest   DeepSpeed: its own (possibly sharded) layout
        brushnet_config.json  the branch config, for export
        ema.safetensors       the EMA weights, when EMA is on
        frozen_branch.safetensors  the branch's frozen parameters (the tied conv_in_condition.bias), which
                              DeepSpeed's zero_to_fp32 leaves out under ZeRO-1
        meta.json             step, strategy, time
    step-00002000.tmp-.../    a checkpoint being written (ignored by resume, removed later)
    superseded-<time>/        checkpoints of another history, moved aside when a run starts from an earlier step
                              (resume=<older checkpoint>, or a fresh start in a used folder); ignored by resume
    latest                    the name of the newest complete checkpoint

A checkpoint directory appears only once every rank has written its part
(``trainer.save_checkpoint`` is collective under DeepSpeed; no rank-0-only
saves), so a crash or a second signal while saving leaves the previous one
intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from common.errors import UserError
from common.files import write_text_atomic
from train.engine.integrity import (
    MANIFEST,
    CheckpointError,
    archive_problem,
    verify_checkpoint,
    write_manifest,
)
from train.engine.strategy import is_deepspeed

__all__ = ["StepCheckpoint", "locate", "GuardedCheckpointIO", "CheckpointWriteError", "is_write_error", "step_folders", "find_latest", "newest_intact", "verified",
           "resolve_resume", "checkpoint_file", "DDP_FILE", "EMA_FILE", "FROZEN_FILE"]

DDP_FILE = "model.ckpt"
EMA_FILE = "ema.safetensors"
FROZEN_FILE = "frozen_branch.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_folders(checkpoint_dir: str | Path) -> list[Path]:
    """Every published ``step-N`` folder (renamed into place, so complete when written), newest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    steps = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(steps, reverse=True)]


def find_latest(checkpoint_dir: str | Path) -> Path | None:
    """The newest ``step-N`` checkpoint that looks complete (not verified: see :func:`newest_intact`), or None."""
    complete = [p for p in step_folders(checkpoint_dir) if (p / MANIFEST).is_file() or (p / "meta.json").is_file()]
    return complete[0] if complete else None


def _quiet(message: str) -> None:
    pass


def newest_intact(checkpoint_dir: str | Path, say=print) -> Path | None:
    """The newest checkpoint that passes :func:`~train.engine.integrity.verify_checkpoint`; None if there is none at all.

    Damaged ones are skipped, each reported through ``say`` with the reason. If
    every checkpoint is damaged, raises :class:`CheckpointError` listing them:
    a run never starts from scratch over checkpoints it could not read.
    """
    folders = step_folders(checkpoint_dir)
    damaged: list[str] = []
    for folder in folders:
        verdict = verify_checkpoint(folder)
        if verdict:
            if not verdict.full:
                say(f"checkpoint {folder.name}: {verdict.checked}")
            if damaged:
                say(f"using {folder}, the newest intact checkpoint")
            return folder
        damaged.append(f"{folder.name} ({verdict.problem})")
        say(f"skipping damaged checkpoint {folder}: {verdict.problem}")
    if damaged:
        raise CheckpointError(
            f"every checkpoint in {checkpoint_dir} is damaged: {'; '.join(damaged)}. Restore an intact copy; to "
            f"train from scratch instead, move them away (or delete them)")
    return None


def checkpoint_file(path: str | Path) -> Path:
    """What Lightning's ``ckpt_path`` wants for one of our checkpoints (or a plain one)."""
    path = Path(path)
    if path.is_dir() and (path / DDP_FILE).is_file():
        return path / DDP_FILE
    return path


def _followed(path: Path) -> Path:
    """A ``latest`` pointer a user named -> the checkpoint folder it stands for; any other path as it is.

    ``<output_dir>/checkpoints/latest`` (a text file, or a symlink, naming the newest step folder) -> that step
    folder; DeepSpeed's own ``latest`` (in a step folder, or in a DeepSpeed save folder: it names a tag) -> the
    folder holding it. A pointer to a folder that is not there, or to no folder at all, is a
    :class:`CheckpointError` (the file is no checkpoint archive either)."""
    if path.name != "latest" or not path.exists():
        return path
    if path.is_symlink():
        return path.resolve()
    if not path.is_file():
        return path
    try:
        with open(path, "rb") as f:
            name = f.read(256).decode("utf-8", errors="replace").strip()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    folder = path.parent
    target = folder / name if name and "/" not in name and name not in (".", "..") else None
    if target is not None and target.is_dir():
        return target if _STEP_DIR.match(name) and not _STEP_DIR.match(folder.name) else folder
    if _STEP_DIR.match(folder.name):  # DeepSpeed's tag file in one of our step folders: the step folder
        return folder
    shown = repr(name[:60]) if name else "nothing"
    raise CheckpointError(
        f"{path} names {shown}, which is not a folder in {folder} (moved or deleted?); give {folder} for the newest "
        f"intact checkpoint there")


def verified(path: str | Path, say=print) -> Path:
    """A checkpoint path given by the user (step folder, file in one, run folder, DeepSpeed folder), checked.

    A run folder (with ``checkpoints/``) or its ``checkpoints/`` means the newest intact
    checkpoint there; ``checkpoints/latest`` the one it names; any other path must be an intact checkpoint itself, else
    :class:`CheckpointError` says why (also for a path that is no checkpoint at all).
    """
    path = _followed(Path(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir() and _STEP_DIR.match(path.name) is None and (path / "checkpoints").is_dir():
        latest = newest_intact(path / "checkpoints", say)  # an output_dir was given
        if latest is None:
            raise CheckpointError(f"{path} has no complete checkpoint under checkpoints/")
        return latest
    if path.is_dir() and _STEP_DIR.match(path.name) is None and step_folders(path):  # <output_dir>/checkpoints
        latest = newest_intact(path, say)
        if latest is None:
            raise CheckpointError(f"{path} has no complete checkpoint")
        return latest
    # The checkpoint folder: the path itself, or the one holding it (model.ckpt, DeepSpeed's checkpoint/).
    folder = next((p for p in (path, path.parent) if p.is_dir() and (_STEP_DIR.match(p.name) or (p / MANIFEST).is_file())),
                  None)
    if folder is not None:
        verdict = verify_checkpoint(folder)
        if not verdict:
            raise CheckpointError(f"checkpoint {folder} is damaged: {verdict.problem}")
        if not verdict.full:
            say(f"checkpoint {folder.name}: {verdict.checked}")
    elif path.is_file():  # a checkpoint file of another tool: torch.save writes a zip archive
        problem = archive_problem(path)
        if problem and path.suffix in (".ckpt", ".pt"):
            raise CheckpointError(f"checkpoint {path} is damaged: {problem}")
        if problem:
            raise CheckpointError(f"{path} is not a checkpoint (a PyTorch .ckpt/.pt archive): {problem}")
    elif not ((path / "latest").is_file() or any(path.glob("*/*model_states.pt"))):  # not DeepSpeed's layout either
        raise CheckpointError(
            f"{path} is not a checkpoint: neither a BrushTrain/Lightning checkpoint nor a DeepSpeed checkpoint folder "
            f"(expected a step folder, a .ckpt file, a DeepSpeed folder with 'latest', or a run's output_dir)")
    return path


def locate(path: str | Path, say=print, verify: bool = True) -> Path:
    """The checkpoint a user named: :func:`verified`, or unchecked (a run folder: its newest checkpoint)."""
    if verify:
        return verified(path, say)
    path = _followed(Path(path))
    if path.is_dir() and _STEP_DIR.match(path.name) is None and (path / "checkpoints").is_dir():
        return find_latest(path / "checkpoints") or path
    return path


def resolve_resume(resume: str | None, output_dir: str | Path, say=_quiet) -> Path | None:
    """``None``, ``"auto"`` (newest intact in output_dir, or nothing on a fresh start) or a path -> checkpoint path."""
    if not resume:
        return None
    if resume == "auto":
        latest = newest_intact(Path(output_dir) / "checkpoints", say)
        return checkpoint_file(latest) if latest else None
    return checkpoint_file(verified(resume, say))


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, quota, permissions, read-only): the run stops on every rank."""

    exit_code = 1


def is_write_error(exc: BaseException) -> bool:
    """An error from writing files (torch.save and safetensors report ENOSPC & co. as their own exception types)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return isinstance(exc, Exception) and any(s in text for s in _WRITE_FAILURES)


# How torch.save (its C++ zip writer) and safetensors report a failed write: without an errno.
_WRITE_FAILURES = ("file write failed", "PytorchStreamWriter", "inline_container.cc", "iostream error", "No space left",
                   "Disk quota", "Read-only file system", "Permission denied", "StorageFull", "QuotaExceeded",
                   "ReadOnlyFilesystem")


class GuardedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but while :class:`StepCheckpoint` saves, a write error is recorded, not raised.

    Under DDP only rank 0 writes the file; raising there would skip the barrier
    the other ranks wait in. Recorded, the error reaches the collective after the
    write, where every rank learns of it and stops (see ``StepCheckpoint.save``).
    Hand the same object to ``Trainer(plugins=[...])`` and to the callback.
    """

    def __init__(self):
        super().__init__()
        self.recording = False
        self.error: BaseException | None = None

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        try:
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        except Exception as exc:  # noqa: BLE001 - only write errors are held back
            if not (self.recording and is_write_error(exc)):
                raise
            self.error = exc

    def take_error(self) -> BaseException | None:
        error, self.error = self.error, None
        return error


class StepCheckpoint(Callback):
    """Save every ``every_n_steps`` optimizer steps and at the end of training (unless ``save_on_end`` is off);
    keep the last ``keep_last``.

    ``every_n_steps=0``: only at the end of training (and when a signal stops it).
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int, keep_last: int = 3, branch_config: dict | None = None,
                 io: GuardedCheckpointIO | None = None, save_on_end: bool = True):
        self.dirpath = Path(dirpath)
        self.save_on_end = save_on_end
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.branch_config = branch_config or {}
        self.io = io
        self.last_saved_step: int | None = None
        self.last_saved: Path | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # The state training starts from is saved already (the resumed checkpoint) or is nothing worth saving
        # (step 0): a run stopped before its first step writes nothing new.
        self.last_saved_step = trainer.global_step
        if trainer.is_global_zero:
            self._set_aside_other_histories(trainer.global_step, trainer.ckpt_path)

    def _set_aside_other_histories(self, start: int, resumed: str | None) -> None:
        """Checkpoints of later steps than this run starts from (it resumed from an older one, or started fresh
        in a used folder) belong to another history. Left in place, ``resume=auto`` would return to them after
        the next stop, and pruning (by step number) would delete this run's new checkpoints before them. They are
        moved, not deleted, to ``checkpoints/superseded-<time>/``, which resume and pruning do not look into."""
        origin = None
        if resumed:
            origin = Path(resumed).resolve()  # a symlink to a step folder (or into one) is that folder
            origin = origin if _STEP_DIR.match(origin.name) else origin.parent

        def other(folder: Path) -> bool:
            step = int(_STEP_DIR.match(folder.name).group(1))
            return step > start or (step == start and (origin is None or folder.resolve() != origin.resolve()))

        others = [p for p in step_folders(self.dirpath) if other(p)]
        if not others:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.dirpath / f"superseded-{stamp}"
        for n in range(1, 1000):
            if not aside.exists():
                break
            aside = self.dirpath / f"superseded-{stamp}-{n}"
        try:
            aside.mkdir()
            for folder in others:
                os.replace(folder, aside / folder.name)
        except OSError as exc:  # rank 0 alone: a raise here would leave the other ranks waiting; say it loudly
            print(f"brushtrain fit: WARNING: this run starts at step {start}, but {self.dirpath} holds checkpoints of "
                  f"another history ({', '.join(p.name for p in others)}) that could not be moved aside to {aside}: "
                  f"{exc}. resume=auto would return to them after a stop: move them away yourself", file=sys.stderr,
                  flush=True)
            return
        try:  # `latest` is a convenience (resume reads the folders): it no longer names a moved folder
            if origin is not None and origin.parent.resolve() == self.dirpath.resolve():
                write_text_atomic(self.dirpath / "latest", origin.name + "\n")
            else:
                (self.dirpath / "latest").unlink(missing_ok=True)
        except OSError:
            pass
        print(f"brushtrain fit: this run starts at step {start}; the checkpoints of another history in {self.dirpath} "
              f"({', '.join(p.name for p in others)}) were moved to {aside}, so that resume=auto and keep_last "
              f"follow this run", flush=True)

    # Lightning callback state: nothing to restore beyond what the trainer has.
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self.last_saved_step:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_on_end and trainer.global_step != self.last_saved_step:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule | None = None) -> Path:
        """Collective: every rank must call it at the same step.

        A write error on any rank (disk full, quota, permissions, read-only) removes
        the partial ``step-N.tmp-*`` folder and raises :class:`CheckpointWriteError`
        on every rank, naming the path, the error and the newest complete checkpoint.
        """
        step = trainer.global_step
        final = self.dirpath / f"step-{step:08d}"
        tmp = self.dirpath / f"{final.name}.tmp-{int(time.time())}"
        tmp = Path(trainer.strategy.broadcast(str(tmp)))  # one name for every rank
        failure = None
        if trainer.is_global_zero:
            failure = _attempt(self._make_folder, tmp)
        self._settle(trainer, tmp, step, failure)  # every rank, instead of a barrier
        target = tmp if is_deepspeed(trainer.strategy) else tmp / DDP_FILE
        if self.io is not None:
            self.io.recording = True
        try:
            trainer.save_checkpoint(target, weights_only=False)  # full state; DeepSpeed: every rank writes its shards
        except Exception as exc:
            if not is_write_error(exc):
                raise
            # Raised inside DeepSpeed's own writer: this rank cannot rejoin the collectives the others wait in.
            self._give_up(trainer, tmp, step, _describe(exc, trainer.global_rank, tmp))
        finally:
            if self.io is not None:
                self.io.recording = False
        failure = self.io.take_error() if self.io is not None else None
        self._settle(trainer, tmp, step, failure and _describe(failure, trainer.global_rank, tmp))
        if trainer.is_global_zero:
            failure = _attempt(self._publish, trainer, pl_module, tmp, final)
        self._settle(trainer, tmp, step, failure)
        self.last_saved_step, self.last_saved = step, final
        return final

    def _make_folder(self, tmp: Path) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for stale in self.dirpath.glob("*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)

    def _publish(self, trainer, pl_module, tmp: Path, final: Path) -> None:
        """Rank 0: the extra files, the manifest (last), then the rename that makes the checkpoint exist."""
        (tmp / "brushnet_config.json").write_text(json.dumps(self.branch_config, indent=2))
        ema = getattr(pl_module, "ema", None)
        if ema is not None:  # identical on every rank; a plain file for export
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in ema.state_dict()["shadow"].items()}, str(tmp / EMA_FILE))
        # ZeRO-1 checkpoints record no frozen parameters for zero_to_fp32 (ZeRO-2/3 do); a ZeRO-3 partition is not whole.
        branch = getattr(pl_module, "brushnet", None)
        frozen = {n: p.detach().cpu().contiguous() for n, p in (branch.named_parameters() if branch is not None else ())
                  if not p.requires_grad and not hasattr(p, "ds_id")}
        if frozen:
            from safetensors.torch import save_file

            save_file(frozen, str(tmp / FROZEN_FILE))
        meta = {"step": trainer.global_step, "epoch": trainer.current_epoch, "strategy": type(trainer.strategy).__name__,
                "world_size": trainer.world_size, "time": time.time()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_tree(tmp)
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        try:  # the checkpoint exists now; `latest` is a convenience for people and scripts
            write_text_atomic(self.dirpath / "latest", final.name + "\n")
        except OSError as exc:
            print(f"brushtrain: checkpoint {final} is complete, but {self.dirpath / 'latest'} could not be updated: {exc}",
                  flush=True)
        self._prune(final)

    def _settle(self, trainer, tmp: Path, step: int, failure: str | None) -> None:
        """Collective: every rank learns whether any rank failed to write; if one did, all raise together."""
        failures = [failure] if trainer.world_size == 1 else _all_gather(failure)
        failures = [f for f in failures if f]
        if not failures:
            return
        message = self._message(tmp, step, failures, remove=trainer.is_global_zero)
        if trainer.is_global_zero:
            print(f"brushtrain: {message}", file=sys.stderr, flush=True)
        error = CheckpointWriteError(message)
        error.rank_zero_only = True
        error.reported = True
        raise error

    def _give_up(self, trainer, tmp: Path, step: int, failure: str) -> None:
        """Alone (the other ranks are inside a collective): clean up, say why, end the local processes, raise."""
        message = self._message(tmp, step, [failure], remove=True)
        print(f"brushtrain: {message}", file=sys.stderr, flush=True)
        launcher = getattr(trainer.strategy, "launcher", None)
        if launcher is not None and getattr(launcher, "procs", None):  # processes Lightning started: they would wait
            launcher.kill(signal.SIGKILL)
        error = CheckpointWriteError(message)
        error.reported = True
        raise error

    def _message(self, tmp: Path, step: int, failures: list[str], remove: bool) -> str:
        if remove:
            shutil.rmtree(tmp, ignore_errors=True)
        cleanup = "removed the partial folder" if not tmp.exists() else "could not remove the partial folder"
        newest = find_latest(self.dirpath)
        newest = (f"the newest complete checkpoint is {newest} (resume=auto continues from it once the problem is fixed)"
                  if newest else "there is no complete checkpoint yet")
        return (f"could not write the checkpoint of step {step} to {tmp}: {'; '.join(failures)}; {cleanup}; {newest}")

    def _prune(self, keep: Path) -> None:
        """Keep the newest ``keep_last`` by step, and always ``keep``, the checkpoint just written."""
        steps = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := _STEP_DIR.match(p.name)))
        for _, path in steps[: max(0, len(steps) - self.keep_last)]:
            if path != keep:
                shutil.rmtree(path, ignore_errors=True)


def _attempt(fn, *args) -> str | None:
    """Run a rank's own writing step; a write error becomes its description (raised later, on every rank)."""
    try:
        fn(*args)
    except Exception as exc:
        if not is_write_error(exc):
            raise
        return _describe(exc, 0)
    return None


def _describe(exc: BaseException, rank: int, folder: Path | None = None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, OSError) and folder is not None:  # torch's own messages do not say why a write failed
        try:
            stat = os.statvfs(folder if folder.exists() else folder.parent)
            if stat.f_bavail * stat.f_frsize < 1 << 20:
                text += f" (the filesystem is full: {stat.f_bavail * stat.f_frsize} bytes free)"
        except OSError:
            pass
    return f"rank {rank}: {text}"


def _all_gather(obj) -> list:
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
