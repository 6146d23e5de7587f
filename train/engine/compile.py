"""``model.compile`` and ``model.channels_last``: torch.compile of the branch, the frozen UNet and the VAE encoder.

Each part is compiled **in place** (``nn.Module.compile``): the module object,
its parameter names and its ``state_dict`` stay exactly as in eager mode, so
checkpoints, EMA, DDP / DeepSpeed wrapping and export see no ``_orig_mod.``
prefix, and a checkpoint of a compiled run resumes into an eager one and back.

What was measured on the tiny SD1.5 and SDXL layouts (``tests/test_compile.py``
counts it with ``torch._dynamo.utils.counters`` and ``error_on_recompile``):

* **The frozen UNet with the per-call injection hooks** (train/model/injection.py)
  compiles to ONE graph for all training steps. Dynamo traces the hooks of the
  UNet's submodules inline; it guards on the *number* of hooks on each module
  (``len(mid_block._forward_hooks) == 1``) and reads each hook, and the residual
  tensor it closes over, by position, so fresh hooks holding fresh residuals
  every step need no recompilation. A UNet call without hooks (branch off) is a
  second graph, compiled once if it is ever run compiled.
* **Graph breaks: none** in the training step's compiled parts: the branch
  forward, the UNet forward with its hooks, the VAE encoder, with or without
  gradient checkpointing (diffusers' non-reentrant ``torch.utils.checkpoint``
  is traced as a higher-order op). Work between the parts runs eager on
  purpose: the VAE posterior sample and the noise / timesteps draw take a
  ``torch.Generator`` (a graph break inside a compiled region), and the text
  encoder is cheap.
* **Recompiles: none per step.** Shapes are fixed in training (every batch
  holds ``data.batch_size`` samples, pad batches included), hence the default
  ``dynamic=False``: static shapes, one compile. What runs with other shapes or
  modes, the held-out evaluation and the sample grids (other batch sizes,
  ``brushnet.eval()``, classifier-free guidance), runs eager inside
  :func:`eager`, so it compiles nothing.

CUDA-graph modes (``reduce-overhead``, ``max-autotune``) and the ``cudagraphs`` backend are refused: the hooks'
residuals are new tensors every step and DDP / DeepSpeed reduce gradients from
autograd hooks, neither of which CUDA graphs replay.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["COMPILE_MODES", "compile_problem", "prepare_models", "eager", "to_memory_format"]

# torch.compile modes that work here (None = torch's default mode); the CUDA-graph modes do not (see above).
COMPILE_MODES = (None, "default", "max-autotune-no-cudagraphs")


def compile_problem(model_cfg, deepspeed_stage: int | None = None) -> str | None:
    """Why ``model.compile.*`` cannot run as configured, or None."""
    c = model_cfg.compile
    if not (c.branch or c.unet or c.vae):
        return None
    if not hasattr(torch.compiler, "set_stance"):
        return f"model.compile needs torch >= 2.6 (this is {torch.__version__})"
    from torch._dynamo import list_backends

    if c.backend not in list_backends(exclude_tags=()):  # also those of installed plugins
        return (f"model.compile.backend {c.backend!r} is not a torch.compile backend of this torch "
                f"({torch.__version__}): use inductor (the default), or aot_eager / eager to find a compile problem "
                f"(torch._dynamo.list_backends() names the others)")
    if c.backend == "cudagraphs":
        return ("model.compile.backend 'cudagraphs' does not replay the per-step residual hooks or the gradient hooks "
                "of DDP / DeepSpeed; use inductor (the default) or aot_eager")
    if c.mode not in COMPILE_MODES:
        return (f"model.compile.mode must be one of {', '.join(str(m) for m in COMPILE_MODES)}, got {c.mode!r} "
                "(CUDA-graph modes do not replay the per-step residual hooks or the gradient hooks of DDP / DeepSpeed)")
    if c.branch and deepspeed_stage == 3:
        return ("model.compile.branch does not work with deepspeed.stage=3 (ZeRO-3 gathers the branch's parameters "
                "with hooks during its forward); use stage 1 or 2, or compile only model.compile.unet / vae")
    return None


def prepare_models(model_cfg, base, branch) -> list[str]:
    """Apply ``model.channels_last`` and ``model.compile.*`` in place; returns what was compiled.

    Call once, before the strategy wraps the branch. Compilation itself happens
    lazily, at the first call of each part.
    """
    if model_cfg.channels_last:
        for module in (branch, base.unet, base.vae):
            module.to(memory_format=torch.channels_last)  # conv weights; survives later .to(device, dtype)
    # (under DeepSpeed the branch's go back to the plain layout before the engine starts: train/engine/strategy.py)
    c = model_cfg.compile
    problem = compile_problem(model_cfg)
    if problem:
        raise ValueError(problem)
    options = {"backend": c.backend, "dynamic": c.dynamic, "fullgraph": c.fullgraph}
    if c.mode not in (None, "default"):
        options["mode"] = c.mode
    compiled = []
    for enabled, name, module in ((c.branch, "branch", branch), (c.unet, "unet", base.unet),
                                  (c.vae, "vae.encoder", base.vae.encoder)):
        if enabled:
            module.compile(**options)
            compiled.append(name)
    return compiled


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """4-D activations in channels-last layout when ``model.channels_last`` is on (else unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def eager():
    """Run compiled modules eagerly inside this block (evaluation, sample grids): nothing is compiled for them."""
    if hasattr(torch.compiler, "set_stance"):
        return torch.compiler.set_stance("force_eager")
    return contextlib.nullcontext()
