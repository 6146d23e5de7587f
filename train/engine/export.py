"""A checkpoint's branch -> a branch folder in the reference layout (config.json + safetensors); see
:mod:`train.commands.export` for what it reads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from train.engine.checkpointing import DDP_FILE, EMA_FILE, FROZEN_FILE, locate
from train.engine.integrity import CheckpointError

__all__ = ["CheckpointError", "branch_state_dict", "export_branch", "export_final", "target_problem"]

_PREFIX = "brushnet."


def _say(message: str) -> None:
    print(f"brushtrain export: {message}", file=sys.stderr, flush=True)


def branch_state_dict(checkpoint: str | Path, ema: bool = False, verify: bool = True) -> tuple[dict, dict]:
    """(branch state dict, branch config) from a checkpoint.

    ``verify``: check the checkpoint against its manifest first (a run folder: its
    newest intact checkpoint; damaged ones are skipped and named).
    """
    import torch

    path = locate(checkpoint, _say, verify=verify)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    folder = path if path.is_dir() else path.parent
    config_file = folder / "brushnet_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None

    if ema:
        ema_file = folder / EMA_FILE
        if not ema_file.is_file():
            raise FileNotFoundError(f"{folder} has no {EMA_FILE}: was the run trained with ema.enabled=true?")
        from safetensors.torch import load_file

        state = load_file(str(ema_file))
    elif path.is_file() or (path / DDP_FILE).is_file():
        ckpt = torch.load(path if path.is_file() else path / DDP_FILE, map_location="cpu", weights_only=True)
        config = config or (ckpt.get("brushtrain") or {}).get("brushnet_config")
        state = {k[len(_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_PREFIX)}
    elif (path / "latest").is_file() or any(path.glob("*/*model_states.pt")):
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )

        tag = (path / "latest").read_text().strip() if (path / "latest").is_file() else None
        full = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
        state = {k[len(_PREFIX):]: v for k, v in full.items() if k.startswith(_PREFIX)}
        if (folder / FROZEN_FILE).is_file():  # frozen branch parameters zero_to_fp32 leaves out (ZeRO-1)
            from safetensors.torch import load_file

            state = {**load_file(str(folder / FROZEN_FILE)), **state}
    else:
        raise CheckpointError(f"{path} is neither a BrushTrain/Lightning checkpoint nor a DeepSpeed checkpoint folder")
    if config is None:
        raise CheckpointError(f"no branch config found for {path} (brushnet_config.json or the checkpoint's brushtrain entry)")
    if not state:
        raise CheckpointError(f"{path} holds no branch weights (no '{_PREFIX}*' parameters)")
    return state, config


_BRANCH_FILES = ("config.json", ".safetensors", ".bin")  # what a branch folder holds (ours or a reference release)


def target_problem(out_dir: str | Path) -> str | None:
    """Why ``out_dir`` cannot receive an export, or None: it is new, empty, or an earlier branch export.

    The export replaces the folder as a whole, so anything else there (a run's
    checkpoints, a model, one's home folder) would be deleted.
    """
    out = Path(out_dir)
    if not out.exists():
        existing = next((p for p in out.parents if p.exists()), None)
        return f"{existing} is a file, not a folder" if existing is not None and not existing.is_dir() else None
    if not out.is_dir():
        return f"{out} exists and is a file"
    entries = sorted(out.iterdir())
    if not entries:
        return None
    others = [e.name for e in entries if not (e.is_file() and e.name.endswith(_BRANCH_FILES))]
    try:
        is_branch = json.loads((out / "config.json").read_text()).get("_class_name") == "BrushNetModel"
    except (OSError, ValueError, AttributeError):
        is_branch = False
    if others or not is_branch:
        shown = ", ".join((others or [e.name for e in entries])[:5])
        return (f"{out} exists and is not a branch folder (it holds {shown}{', ...' if len(entries) > 5 else ''}); "
                "the export replaces the whole folder, so give a new one (an earlier export is replaced)")
    return None


def export_branch(checkpoint: str | Path, out_dir: str | Path, ema: bool = False, verify: bool = True) -> Path:
    """Write the branch as a reference-layout folder, atomically; returns the folder.

    ``out_dir`` must be new, empty or an earlier branch export (:func:`target_problem`), else
    :class:`CheckpointError` before anything is read."""
    from train.model.brushnet import BrushNetModel

    problem = target_problem(out_dir)
    if problem:
        raise CheckpointError(f"cannot export to {out_dir}: {problem}")
    state, config = branch_state_dict(checkpoint, ema=ema, verify=verify)
    branch = BrushNetModel.from_config(config)
    missing, unexpected = branch.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match its branch config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    from common.files import atomic_directory

    with atomic_directory(out_dir) as tmp:
        branch.save_pretrained(tmp, safe_serialization=True)
    return Path(out_dir)


def export_final(checkpoint: Path, output_dir: Path, ema: bool, verify: bool = False) -> list[Path]:
    """``<output_dir>/brushnet`` (and ``brushnet-ema``) from a checkpoint this run wrote."""
    targets = [(output_dir / "brushnet", False)] + ([(output_dir / "brushnet-ema", True)] if ema else [])
    done = []
    for out, use_ema in targets:
        done.append(export_branch(checkpoint, out, ema=use_ema, verify=verify))
        print(f"exported {'EMA ' if use_ema else ''}branch (reference layout) to {out}", flush=True)
    return done
