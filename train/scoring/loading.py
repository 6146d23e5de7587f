"""Loading the metric models' parts: a folder or the hub's cache first, the hub only when allowed.

Its own module because both ``inpaint_metrics`` (CLIP, HPS's tokenizer, the reward models' weight files) and
``reward_models`` (ImageReward's BERT tokenizer) load this way, and ``inpaint_metrics`` already imports
``reward_models``."""

from __future__ import annotations

import os
from pathlib import Path


def from_pretrained_cached_first(load, spec: str):
    """``load(spec, **kw)`` (a transformers ``from_pretrained``, or ``hf_hub_download`` of one file) from a folder
    or the hub's cache first: offline and not cached, the hub is tried once more only where HF_HUB_OFFLINE is not
    set (its retries take ~20 s)."""
    try:
        return load(spec, local_files_only=True)
    except Exception:  # noqa: BLE001 - not on disk and not cached
        if Path(spec).expanduser().exists() or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise
        return load(spec)
