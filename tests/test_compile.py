"""model.compile / model.channels_last: compiled training steps give eager's losses, one graph per compiled part,
no graph breaks, no recompilation per step, eager evaluation, unchanged parameter names.

The fast tests use the ``aot_eager`` backend: Dynamo and AOTAutograd exactly as with inductor (graphs, guards,
graph breaks, recompiles, the hooks, gradient checkpointing, the backward), without code generation, which takes
minutes on 2 CPU cores. The inductor test (C++ kernels built with the machine's compiler) is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import randomize_zero_convs
from omegaconf import OmegaConf
from torch._dynamo.utils import counters

from train.engine.compile import compile_problem, eager
from train.engine.module import BrushNetModule
from train.model.brushnet import BrushNetModel
from train.schema import EMAConfig, ModelConfig, OptimConfig

PARTS = ("branch", "unet", "vae")


def module_for(base, compile_parts=(), backend="aot_eager", **model) -> BrushNetModule:
    base = copy.deepcopy(base)
    branch = BrushNetModel.from_unet(base.unet)
    randomize_zero_convs(branch, seed=1, scale=0.05)  # the branch changes the loss from the first step
    cfg = OmegaConf.structured(ModelConfig(base="tiny", frozen_dtype="fp32", **model))
    for part in compile_parts:
        cfg.compile[part] = True
    cfg.compile.backend = backend
    return BrushNetModule(base, branch, cfg, OptimConfig(lr=1e-4), EMAConfig(), max_steps=10)


def batch_for(base, step: int, size: int = 2, res: int = 32) -> dict:
    g = torch.Generator().manual_seed(step)
    batch = {"image": torch.randint(0, 256, (size, 3, res, res), generator=g, dtype=torch.uint8),
             "keep_mask": (torch.rand(size, 1, res, res, generator=g) > 0.5).to(torch.uint8),
             "caption": ["a red ball", "a cat on a mat", "", "sky"][:size], "weight": torch.ones(size),
             "key": [f"k{step}-{i}" for i in range(size)],
             "sample_seed": torch.arange(size, dtype=torch.int64) + step * size}
    if base.is_sdxl:
        batch["original_size"] = torch.tensor([[res, res]] * size)
        batch["crop_top_left"] = torch.zeros(size, 2, dtype=torch.long)
    return batch


def train(module, steps: int, no_recompile_after: int | None = None) -> list[float]:
    """Our step (module.compute_loss, backward, AdamW); recompiling after ``no_recompile_after`` steps is an error."""
    opt = torch.optim.AdamW(module.brushnet.parameters(), lr=1e-4)
    losses = []
    for step in range(steps):
        strict = no_recompile_after is not None and step >= no_recompile_after
        with torch._dynamo.config.patch(error_on_recompile=strict):
            loss = module.compute_loss(batch_for(module.base, step))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind, checkpointing, channels_last", [
    ("sd15", True, True), pytest.param("sdxl", False, False, marks=pytest.mark.slow)])
def test_compiled_step_matches_eager_one_graph_per_part_no_breaks_no_recompiles(
        _tiny_bases, fresh_dynamo, kind, checkpointing, channels_last):
    base = _tiny_bases[kind]
    reference = train(module_for(base, gradient_checkpointing=checkpointing), 4)
    compiled = module_for(base, PARTS, gradient_checkpointing=checkpointing, channels_last=channels_last)
    assert compiled.compiled == ["branch", "unet", "vae.encoder"]
    losses = train(compiled, 4, no_recompile_after=1)  # steps 2-4: fresh hooks and residuals, no recompilation
    # aot_eager runs eager's kernels: equal up to float reassociation (channels-last convs differ in summation order).
    torch.testing.assert_close(losses, reference, rtol=1e-4, atol=0)
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])  # branch, UNet with hooks, VAE encoder
    assert not counters["graph_break"], dict(counters["graph_break"])

    # Names are eager's: in-place compilation adds no `_orig_mod.` (checkpoints and export are unaffected).
    eager_names = list(module_for(base).state_dict())
    assert list(compiled.state_dict()) == eager_names
    assert not any("_orig_mod" in name for name in eager_names)

    # Evaluation runs eager: another batch size, eval mode, branch off compile nothing.
    with eager():
        scores = compiled.denoising_loss([batch_for(base, 9, size=3)], [500])
        compiled.denoising_loss([batch_for(base, 9, size=3)], [500], conditioning_scale=0.0)
    assert counters["stats"]["unique_graphs"] == 3 and set(scores) == {"hole", "known", "all"}


@pytest.mark.slow  # inductor builds C++ kernels with the machine's compiler: several minutes on 2 cores
def test_inductor_compiled_step_matches_eager(_tiny_bases, fresh_dynamo):
    base = _tiny_bases["sd15"]
    reference = train(module_for(base), 3)
    compiled = module_for(base, PARTS, backend="inductor")
    losses = train(compiled, 3, no_recompile_after=1)
    # Generated kernels reorder fp32 reductions: the first loss agrees to ~1e-7, later ones after AdamW steps to ~1e-4.
    assert losses[0] == pytest.approx(reference[0], rel=1e-5)
    torch.testing.assert_close(losses, reference, rtol=2e-3, atol=0)
    assert counters["stats"]["unique_graphs"] == 3 and not counters["graph_break"]


def test_compile_settings_are_checked():
    cfg = OmegaConf.structured(ModelConfig(base="x"))
    assert compile_problem(cfg) is None
    cfg.compile.branch = True
    assert compile_problem(cfg, deepspeed_stage=2) is None
    assert "deepspeed.stage=3" in compile_problem(cfg, deepspeed_stage=3)
    cfg.compile.branch, cfg.compile.unet = False, True
    assert compile_problem(cfg, deepspeed_stage=3) is None  # frozen parts are not partitioned
    cfg.compile.mode = "reduce-overhead"
    assert "CUDA-graph" in compile_problem(cfg)
    cfg.compile.mode = None
    for backend in ("inductor", "aot_eager", "eager"):
        cfg.compile.backend = backend
        assert compile_problem(cfg) is None
    cfg.compile.backend = "inductr"  # torch's InvalidBackend traceback at the first step, before this rule
    assert "model.compile.backend 'inductr' is not a torch.compile backend" in compile_problem(cfg)
    cfg.compile.backend = "cudagraphs"
    assert "does not replay the per-step residual hooks" in compile_problem(cfg)


# The branch is the compiled part that DDP / DeepSpeed wrap and checkpoints hold (the frozen parts are in neither;
# compiling all three is tested above); aot_eager: Dynamo + AOTAutograd without code generation.
COMPILED = ["model.compile.branch=true", "model.compile.backend=aot_eager"]


# Slow for CI time: the default suite's GPU-check dry run resumes an eager ZeRO-2 checkpoint compiled and exports it.
@pytest.mark.parametrize("strategy", [pytest.param("deepspeed", marks=pytest.mark.slow),
                                      pytest.param("ddp", marks=pytest.mark.slow)])
def test_compiled_and_eager_runs_resume_each_other_under_zero2_and_ddp(tmp_path, strategy):
    """Compiled 0-2, eager 2-4, compiled 4-6 (2 processes) = eager 0-6: checkpoints cross both ways, exports match."""
    from test_fit import SMALL, assert_same_weights, fit, loss_curve

    common = ["trainer.devices=2", f"trainer.strategy={strategy}", "deepspeed.allow_cpu=true", "deepspeed.stage=2",
              "checkpoint.every_n_steps=2", "trainer.log_every_n_steps=1", "eval.at_start=false", "eval.at_end=false",
              "ema.enabled=false", *SMALL]
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(straight, "trainer.max_steps=6", *common)
    fit(split, "trainer.max_steps=2", *common, *COMPILED)
    assert "resuming from" in fit(split, "trainer.max_steps=4", *common).stdout
    assert "resuming from" in fit(split, "trainer.max_steps=6", *common, *COMPILED).stdout
    # aot_eager runs eager's kernels: the same weights and losses (up to float reassociation).
    assert_same_weights(straight / "brushnet", split / "brushnet", atol=1e-6)
    a, b = loss_curve(straight), loss_curve(split)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a), (a, b)
    exported = BrushNetModel.from_pretrained(split / "brushnet")  # strict: every name is the eager model's
    assert not any("_orig_mod" in name for name in exported.state_dict())


def test_channels_last_trains_under_deepspeed_as_the_plain_layout_does(tmp_path):
    """model.channels_last under DeepSpeed (ZeRO-2, one CPU process) failed before the first step: DeepSpeed's
    start-up broadcast views every trained parameter as bytes, which a channels-last weight cannot be. The
    branch goes to DeepSpeed in the plain layout; the frozen parts and activations stay channels-last."""
    from test_fit import SMALL, assert_same_weights, fit, loss_curve

    common = ["trainer.strategy=deepspeed", "deepspeed.allow_cpu=true", "deepspeed.stage=2", "trainer.max_steps=3",
              "checkpoint.every_n_steps=0", "trainer.log_every_n_steps=1", "eval.at_start=false", "eval.at_end=false",
              "ema.enabled=false", *SMALL]
    fit(tmp_path / "plain", *common)
    fit(tmp_path / "cl", *common, "model.channels_last=true")
    a, b = loss_curve(tmp_path / "plain"), loss_curve(tmp_path / "cl")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    assert all(abs(a[s] - b[s]) < 1e-4 for s in a), (a, b)  # other conv kernels: float reassociation only
    assert_same_weights(tmp_path / "plain" / "brushnet", tmp_path / "cl" / "brushnet", atol=1e-4)


def test_only_the_branch_goes_to_deepspeed_in_the_plain_layout(_tiny_bases):
    """What the strategy hands DeepSpeed: the branch's 4-D weights in the plain layout (its broadcast views them as
    bytes), the same Parameter objects (the optimizer holds them), and the frozen UNet and VAE left channels-last."""
    from train.engine.strategy import _plain_layout

    module = module_for(_tiny_bases["sd15"], channels_last=True)
    convs = [p for p in module.brushnet.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    before = [id(p) for p in module.parameters()]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in convs)
    _plain_layout(module)
    assert [id(p) for p in module.parameters()] == before
    for p in module.parameters():
        p.data.view(torch.uint8)  # what deepspeed.runtime.engine._broadcast_model does; raised for channels-last
    frozen = [p for m in (module.base.unet, module.base.vae) for p in m.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert frozen and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in frozen)
