"""Shared fixtures: tiny models built from config (no downloads), the reference checkpoints."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official-tiny"


@pytest.fixture(scope="session")
def _tiny_bases():
    from train.model.tiny import build_tiny_base

    return {kind: build_tiny_base(kind, seed=0) for kind in ("sd15", "sdxl")}


@pytest.fixture(params=["sd15", "sdxl"])
def tiny_base(request, _tiny_bases):
    """A fresh copy of a tiny SD1.5-like or SDXL-like model (the tests may change it)."""
    return copy.deepcopy(_tiny_bases[request.param])


@pytest.fixture
def tiny_sd15(_tiny_bases):
    return copy.deepcopy(_tiny_bases["sd15"])


@pytest.fixture
def tiny_sdxl(_tiny_bases):
    return copy.deepcopy(_tiny_bases["sdxl"])


def unet_inputs(unet, batch: int = 2, size: int = 8, seed: int = 0) -> dict:
    """Random UNet/branch inputs matching a UNet config (SDXL: text_time kwargs), seeded."""
    from train.model.tiny import random_unet_inputs

    return random_unet_inputs(unet, batch, size, generator=torch.Generator().manual_seed(seed))


def stock_output(unet, inputs: dict) -> torch.Tensor:
    return unet(
        inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"],
        added_cond_kwargs=inputs.get("added_cond_kwargs"), return_dict=False,
    )[0]


def randomize_zero_convs(branch, seed: int = 0, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in branch.named_parameters():
            if name.startswith("brushnet_"):
                p.copy_(torch.randn(p.shape, generator=g) * scale)
