"""Regenerates the reference data in this folder from the ORIGINAL ImageReward and HPS v2 code.

Not imported by the tests: the tests only read the files this script wrote.

What it writes
  image_reward_v1_layout.json  names/shapes of the full-size ``ImageReward`` module's state_dict (ImageReward-v1.0)
  hps_v21_layout.json          names/shapes of HPS v2's open_clip ``create_model('ViT-H-14')`` state_dict (HPS v2.1)
  image_reward_tiny.{safetensors,json}  tiny random-weight ImageReward + its answers, computed by the originals
  hps_tiny.{safetensors,json}           tiny random-weight HPS CLIP + its answers, computed by the originals
  hps_tokenizer_cases.json     prompts and the ids HPS's open_clip tokenize() gives them (real BPE vocab, shipped)

How the originals are used (nothing of theirs is re-typed here)
  ImageReward: ImageReward/ImageReward.py (ImageReward, MLP, _transform), models/BLIP/{vit,med,blip,blip_pretrain}.py,
    imported from the extracted repository. The package's ``__init__`` files (they import openai ``clip``, which is
    not on PyPI) are bypassed with empty package modules; ``init_tokenizer`` (downloads bert-base-uncased) is
    replaced by a stand-in; for the tiny model ``create_vit`` is replaced by a call of the original
    ``VisionTransformer`` with tiny sizes. Rewards come from the original ``ImageReward.score(prompt, pil_image)``,
    called once per image, with a stand-in tokenizer that returns the hand-made ids.
  HPS v2: hpsv2/src/open_clip (create_model_and_transforms with the arguments of img_score.initialize_model, the
    tiny config registered with add_model_config) and hpsv2/img_score.score itself, called once per image with its
    model cache pre-filled, ``cp`` pointing at a {'state_dict': ...} file of the tiny weights, and a stand-in
    tokenizer. ``clint`` (not needed for scoring) is stubbed.

Environment used
  /work/refvenv, a venv separate from the project's:
    python 3.11.7, torch 2.14.1 (CUDA build, run on CPU), torchvision 0.29.1, timm 0.6.13, fairscale 0.4.13,
    transformers 4.36.2 (tokenizers 0.15.2), huggingface_hub 0.36.2, numpy 2.4.6, pillow 13.0.0, safetensors 0.8.0,
    ftfy 6.3.1, regex 2026.11.19
  Originals (git mirrors):
    THUDM/ImageReward  c1392c6dd0fd6ecd6d416c96959ab744a6d0a8fb
    tgxs002/HPSv2      866735ecaae999fa714bd9edfa05aa2672669ee3

Rerun
  python3 -m venv /work/refvenv
  /work/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==0.6.13 fairscale==0.4.13 \
      transformers==4.36.2 ftfy regex safetensors numpy pillow huggingface_hub
  /work/refvenv/bin/python tests/data/reward_models/make_fixtures.py \
      [--image-reward-repo /work/.mirror/THUDM+ImageReward/repo] [--hps-repo /work/.mirror/tgxs002+HPSv2/repo] \
      [--out tests/data/reward_models]
  (the repos may be git directories, read with ``git archive HEAD``, or plain source checkouts)
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import types
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent

IR_MEAN = 0.16717362830052426
IR_STD = 1.0333394966054072

# (H, W) of the three test images: one landscape, one portrait, one square.
#  ImageReward _transform(32): (45,56) -> PIL resize to 32x39 (int(32*56/45)=39), crop left = round(3.5) = 4;
#                              (56,42) -> 42x32, crop top = round(5.0) = 5;  (48,48) -> 32x32.
#  HPS ResizeMaxSize(28):      (45,56) -> scale 0.5, h = round(22.5) = 22 (Python rounds half to even), pad 3/3;
#                              (56,42) -> w = 21, pad left 3 right 4 (odd split);  (48,48) -> 28x28, no pad.
IMAGE_SIZES = [(45, 56), (56, 42), (48, 48)]

IR_TINY_VIT = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)
IR_TINY_BERT = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=40, layer_norm_eps=1e-12, add_cross_attention=True, encoder_width=32,
    hidden_act="gelu", pad_token_id=0, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    type_vocab_size=2, initializer_range=0.02, model_type="bert", architectures=["BertModel"],
)
IR_TINY_EMBED_DIM = 16  # BLIP_Pretrain's embed_dim (vision_proj / text_proj width); 256 in the real model
IR_MAX_LEN = 35

HPS_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2},
}
HPS_SOT, HPS_EOT = 62, 63


# ----------------------------------------------------------------------------- sources


def source_tree(repo: str, dest: Path) -> tuple[Path, str]:
    """A plain source tree of ``repo`` (git dir -> git archive HEAD into dest) and its commit."""
    repo_path = Path(repo)
    try:
        commit = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%H"], check=True,
                                capture_output=True, text=True).stdout.strip()
    except subprocess.CalledProcessError:
        commit = "unknown"
    is_bare = subprocess.run(["git", "-C", repo, "rev-parse", "--is-bare-repository"],
                             capture_output=True, text=True).stdout.strip() == "true"
    if is_bare or not any(repo_path.glob("*.py")) and not (repo_path / "setup.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", repo, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return dest, commit
    return repo_path, commit


def empty_package(name: str, path: Path):
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    sys.modules[name] = mod
    return mod


def import_image_reward(src: Path):
    """ImageReward's own modules, without running its package __init__ files (they import openai clip)."""
    empty_package("ImageReward", src / "ImageReward")
    empty_package("ImageReward.models", src / "ImageReward" / "models")
    bp = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    blip = importlib.import_module("ImageReward.models.BLIP.blip")
    vit = importlib.import_module("ImageReward.models.BLIP.vit")
    med = importlib.import_module("ImageReward.models.BLIP.med")
    irm = importlib.import_module("ImageReward.ImageReward")
    return types.SimpleNamespace(bp=bp, blip=blip, vit=vit, med=med, irm=irm)


def import_hps(src: Path):
    """HPS v2's vendored open_clip and img_score; clint (download progress bars only) is stubbed."""
    if "clint" not in sys.modules:
        clint = types.ModuleType("clint")
        clint.textui = types.ModuleType("clint.textui")
        clint.textui.progress = types.ModuleType("clint.textui.progress")
        sys.modules.update({"clint": clint, "clint.textui": clint.textui,
                            "clint.textui.progress": clint.textui.progress})
    sys.path.insert(0, str(src))
    oc = importlib.import_module("hpsv2.src.open_clip")
    img_score = importlib.import_module("hpsv2.img_score")
    transform = importlib.import_module("hpsv2.src.open_clip.transform")
    return types.SimpleNamespace(oc=oc, img_score=img_score, transform=transform)


# ----------------------------------------------------------------------------- helpers


def layout(module: nn.Module) -> dict:
    sd = module.state_dict()
    params = {n for n, _ in module.named_parameters()}
    persistent_buffers = sorted(k for k in sd if k not in params)
    all_buffers = {n for n, _ in module.named_buffers()}
    non_persistent = sorted(b for b in all_buffers if b not in sd)
    return {
        "state_dict": {k: list(v.shape) for k, v in sd.items()},
        "buffers": persistent_buffers,
        "non_persistent_buffers_not_in_state_dict": non_persistent,
        "num_keys": len(sd),
        "num_parameters": int(sum(math.prod(v.shape) for k, v in sd.items() if k in params)),
    }


def dump_json(obj: dict) -> str:
    """Indented JSON with every list of numbers (shapes, ids) on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def is_norm(name: str) -> bool:
    parts = name.split(".")
    return any(p.lower().startswith(("norm", "ln_", "layernorm")) or p == "norm" for p in parts)


@torch.no_grad()
def randomize(module: nn.Module, seed: int, small: tuple[str, ...] = ()):
    """Seeded random values for EVERY parameter (biases and LayerNorm affine included), so that a port which drops
    a bias or swaps a LayerNorm shows up in the answers. Scales keep activations O(1), except the parameters whose
    names start with one of ``small`` (the embeddings that feed the first LayerNorm): x0.01, so that the first
    LayerNorm sees a variance ~1e-4 and its eps (1e-6 / 1e-12 / 1e-5) changes the answers visibly."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if p.ndim == 0:
            value = p.detach().clone()  # logit_scale: as constructed (unused by the score)
        elif p.ndim == 1 and name.endswith("weight") and is_norm(name):
            value = 1.0 + 0.2 * noise
        elif p.ndim == 1:
            value = 0.1 * noise
        else:
            fan_in = p[0].numel() if p.ndim >= 2 else p.numel()
            value = noise / math.sqrt(fan_in)
        # float16-representable values: the files store the weights as float16 (half the size, lossless), the
        # models compute in float32 with exactly these values
        if name.startswith(small):
            value = 0.01 * value
        p.copy_(value.half().float())


def state_tensors(module: nn.Module) -> dict:
    """state.<key> tensors; floating ones as float16, which holds their (float16-representable) values exactly."""
    out = {}
    for k, v in module.state_dict().items():
        v = v.detach().clone().contiguous()
        if v.is_floating_point():
            assert torch.equal(v.half().float(), v), k
            v = v.half()
        out[f"state.{k}"] = v
    return out


def make_images(seed: int = 1234) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for k, (h, w) in enumerate(IMAGE_SIZES):
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([255 * xx, 255 * yy, 255 * (0.5 + 0.5 * np.sin(6 * (xx + yy) + k))], -1)
        img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).round().astype(np.uint8)
        img[h // 3: h // 3 + 5, w // 4: w // 4 + 7] = [255, 0, 255]  # a sharp block: bicubic overshoot, clamping
        out.append(img)
    return out


def image_tensors(images: list[np.ndarray]) -> dict:
    t = {f"images.{i}": torch.from_numpy(img.copy()) for i, img in enumerate(images)}
    t["image_sizes"] = torch.tensor([list(img.shape[:2]) for img in images], dtype=torch.int64)
    return t


class FakeTokenizer:
    """Stands in for the original tokenizers: maps prompt strings to hand-made id rows."""

    def __init__(self, rows: dict[str, tuple[torch.Tensor, torch.Tensor | None]], expect: dict | None = None):
        self.rows, self.expect, self.calls = rows, expect or {}, []

    def __call__(self, prompt, **kwargs):
        for k, v in self.expect.items():
            assert kwargs.get(k) == v, (k, kwargs.get(k), v)
        self.calls.append((prompt, kwargs))
        if isinstance(prompt, list):  # open_clip tokenize([prompt]) -> LongTensor
            assert len(prompt) == 1
            return self.rows[prompt[0]][0].clone()
        from transformers import BatchEncoding
        ids, mask = self.rows[prompt]
        return BatchEncoding({"input_ids": ids.clone(), "attention_mask": mask.clone()})


def ir_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-tokenizer-like rows: 1 = [CLS]-like, 2 = [SEP]-like, body ids in 3..62, 0 = [PAD]; max_length 35."""
    gen = torch.Generator().manual_seed(7)
    lengths = [6, 17, 35]  # incl. [CLS] and [SEP]; the last fills max_length (no padding, as truncation gives)
    ids = torch.zeros(3, IR_MAX_LEN, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, 0] = 1
        ids[r, 1:n - 1] = torch.randint(3, 63, (n - 2,), generator=gen)
        ids[r, n - 1] = 2
    mask = (torch.arange(IR_MAX_LEN)[None] < torch.tensor(lengths)[:, None]).to(torch.int64)
    return ids, mask


def hps_ids() -> torch.Tensor:
    """open_clip tokenize()-like rows: sot 62, body 1..61, eot 63 (the largest id), zero padding to 77."""
    gen = torch.Generator().manual_seed(11)
    lengths = [5, 12, 30]  # incl. sot and eot
    ids = torch.zeros(3, 77, dtype=torch.int64)
    for r, n in enumerate(lengths):
        ids[r, 0] = HPS_SOT
        ids[r, 1:n - 1] = torch.randint(1, 62, (n - 2,), generator=gen)
        ids[r, n - 1] = HPS_EOT
    return ids


# ----------------------------------------------------------------------------- ImageReward


def image_reward_layout(ir, src: Path) -> dict:
    med_config = src / "train" / "src" / "config" / "med_config.json"  # BLIP's med_config.json (bert-base)
    ir.bp.init_tokenizer = lambda: None  # BertTokenizer.from_pretrained('bert-base-uncased') would download
    torch.manual_seed(0)
    model = ir.irm.ImageReward(med_config=str(med_config), device="cpu")  # the real class, full size, on CPU
    out = layout(model)
    cfg = model.blip.text_encoder.config
    out["source"] = ("ImageReward.ImageReward.ImageReward(med_config=med_config.json): BLIP_Pretrain(image_size=224, "
                     "vit='large') + MLP(768); BLIP_Pretrain.tokenizer is not a module (no keys)")
    out["text_config"] = {k: getattr(cfg, k) for k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "layer_norm_eps", "hidden_act", "add_cross_attention", "encoder_width",
        "pad_token_id", "type_vocab_size")}
    out["text_config"]["note"] = ("med BertEmbeddings has NO token_type_embeddings (type_vocab_size unused); "
                                  "encoder_width is set to vision_width=1024 by BLIP_Pretrain")
    vit = model.blip.visual_encoder
    out["vision_config"] = {"img_size": 224, "patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                            "mlp_ratio": 4.0, "qkv_bias": True, "layer_norm_eps": vit.norm.eps,
                            "act": "nn.GELU (exact erf)", "drop_path_rate": 0.1}
    out["mean"], out["std"] = model.mean, model.std
    out["published_checkpoint_note"] = (
        "ImageReward.load(): state_dict = torch.load('ImageReward.pt'); model.load_state_dict(state_dict, "
        "strict=False) -> a flat dict (no 'state_dict' wrapper, no 'module.' prefix); strict=False, so the file may "
        "hold extra keys or lack position_ids. position_ids is a persistent buffer in med.py (saved by state_dict()).")
    del model
    return out


def image_reward_tiny(ir, images: list[np.ndarray]) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        med_json = Path(tmp) / "med_config_tiny.json"
        med_json.write_text(json.dumps(IR_TINY_BERT))
        ids, mask = ir_ids()
        prompts = [f"prompt {i}" for i in range(3)]
        tok = FakeTokenizer({p: (ids[i:i + 1], mask[i:i + 1]) for i, p in enumerate(prompts)},
                            expect={"padding": "max_length", "truncation": True, "max_length": IR_MAX_LEN,
                                    "return_tensors": "pt"})

        # BLIP_Pretrain builds text_encoder (med BertModel, add_pooling_layer=False, encoder_width = vision_width),
        # vision_proj and text_proj itself; only the ViT sizes and the tokenizer are ours.
        ir.bp.init_tokenizer = lambda: tok
        ir.bp.create_vit = lambda vit, image_size, *a, **k: (ir.vit.VisionTransformer(**IR_TINY_VIT),
                                                            IR_TINY_VIT["embed_dim"])
        torch.manual_seed(0)
        blip = ir.bp.BLIP_Pretrain(med_config=str(med_json), image_size=32, vit="large",
                                   embed_dim=IR_TINY_EMBED_DIM)
        # ImageReward.__init__ hard-codes BLIP_Pretrain(224, 'large'), MLP(768) and _transform(224): assemble the
        # same attributes with the tiny parts, then call the original methods on it.
        model = ir.irm.ImageReward.__new__(ir.irm.ImageReward)
        nn.Module.__init__(model)
        model.device = "cpu"
        model.blip = blip
        model.preprocess = ir.irm._transform(32)
        model.mlp = ir.irm.MLP(32)
        model.mean, model.std = IR_MEAN, IR_STD
        randomize(model, seed=2024, small=(
            "blip.visual_encoder.patch_embed.", "blip.visual_encoder.pos_embed", "blip.visual_encoder.cls_token",
            "blip.text_encoder.embeddings.word_embeddings", "blip.text_encoder.embeddings.position_embeddings"))
        model.eval()
        assert model.blip.text_encoder.pooler is None
        assert model.blip.visual_encoder.norm.eps == 1e-6

        pils = [Image.fromarray(img) for img in images]
        pixels = torch.stack([model.preprocess(p) for p in pils])
        with torch.no_grad():
            reward = torch.tensor([model.score(prompts[i], pils[i]) for i in range(3)], dtype=torch.float32)
            # the same path, batched, for the intermediates (score_gard is the original batched form)
            image_embeds = model.blip.visual_encoder(pixels)
            image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
            text_out = model.blip.text_encoder(ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                                               encoder_attention_mask=image_atts, return_dict=True)
            text_cls = text_out.last_hidden_state[:, 0, :].float()
            batched = model.score_gard(ids, mask, pixels).reshape(-1)
            mlp_raw = model.mlp(text_cls).reshape(-1)
        assert len(tok.calls) == 3
        torch.testing.assert_close(batched, reward, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close((mlp_raw - IR_MEAN) / IR_STD, reward, atol=1e-5, rtol=1e-5)
        assert len(set(np.round(reward.numpy(), 4))) == 3, reward

        tensors = state_tensors(model)
        tensors.update(image_tensors(images))
        tensors.update({
            "pixels": pixels.contiguous(), "input_ids": ids, "attention_mask": mask,
            "image_embeds": image_embeds.contiguous(), "text_cls": text_cls.contiguous(),
            "reward": reward, "mlp_raw": mlp_raw.contiguous(),
        })
        cfg = {
            "vision": {**IR_TINY_VIT, "class": "ImageReward/models/BLIP/vit.py VisionTransformer",
                       "qkv_bias": True, "mlp_ratio": 4.0, "layer_norm_eps": 1e-6, "act": "nn.GELU (exact erf)"},
            "text": {**IR_TINY_BERT, "class": "ImageReward/models/BLIP/med.py BertModel(config, add_pooling_layer=False)"},
            "blip_embed_dim": IR_TINY_EMBED_DIM,
            "mlp": {"input_size": 32, "class": "ImageReward/ImageReward.py MLP (Linear 32-1024-128-64-16-1, no activations)"},
            "mean": IR_MEAN, "std": IR_STD,
            "preprocess": "ImageReward._transform(32): PIL Resize(32, BICUBIC) shortest side, CenterCrop(32), RGB, "
                          "ToTensor, Normalize(OpenAI mean/std)",
            "image_sizes_hw": [list(s) for s in IMAGE_SIZES],
            "tensors": {
                "state.<key>": "state_dict of the assembled ImageReward module (published naming), random; floating "
                               "tensors STORED AS FLOAT16 (exact: the model computed in float32 with these values; "
                               "cast to float32 before loading); position_ids int64",
                "images.<i>": "uint8 (H_i, W_i, 3) RGB; sizes differ so they are stored one by one",
                "image_sizes": "int64 (3, 2) [H, W]",
                "pixels": "float32 (3, 3, 32, 32): model.preprocess(PIL image i)",
                "input_ids/attention_mask": "int64 (3, 35): [CLS]-like 1, body 3..62, [SEP]-like 2, pad 0",
                "image_embeds": "float32 (3, 5, 32): blip.visual_encoder(pixels) (after the final norm)",
                "text_cls": "float32 (3, 32): text_encoder(...).last_hidden_state[:, 0]",
                "mlp_raw": "float32 (3,): mlp(text_cls) before (r - mean) / std",
                "reward": "float32 (3,): ImageReward.score(prompt_i, image_i) for each i (batch of 1, as score runs)",
            },
            "rows": "row i of pixels/input_ids/attention_mask/reward belong together",
        }
    return tensors, cfg


# ----------------------------------------------------------------------------- HPS


def hps_layout(hps) -> dict:
    with torch.device("meta"):
        model = hps.oc.create_model("ViT-H-14", pretrained=None, precision="fp32", device="meta")
    out = layout(model)
    out["source"] = "hpsv2.src.open_clip.create_model('ViT-H-14', pretrained=None) (model.CLIP, ViT-H-14.json)"
    out["config"] = hps.oc.get_model_config("ViT-H-14")
    out["config"]["quick_gelu"] = False
    out["layer_norm_eps"] = 1e-5
    out["published_checkpoint_note"] = (
        "img_score.score(): checkpoint = torch.load(cp); model.load_state_dict(checkpoint['state_dict']) with "
        "strict=True -> the file is {'state_dict': {...}} with exactly these keys, no 'module.' prefix and no "
        "attn_mask (it is a non-persistent buffer). (factory.load_state_dict also strips 'module.' but score() "
        "does not use it.)")
    return out


def hps_tiny(hps, images: list[np.ndarray]) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg_dir = Path(tmp) / "cfg"
        cfg_dir.mkdir()
        (cfg_dir / "HPS-tiny.json").write_text(json.dumps(HPS_TINY))
        hps.oc.add_model_config(cfg_dir)
        torch.manual_seed(0)
        # the arguments of img_score.initialize_model, with the tiny config and no pretrained download
        model, _, preprocess_val = hps.oc.create_model_and_transforms(
            "HPS-tiny", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False,
            force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
            image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
            with_score_predictor=False, with_region_predictor=False)
        assert type(model).__name__ == "CLIP"
        randomize(model, seed=2025, small=(
            "visual.conv1", "visual.class_embedding", "visual.positional_embedding", "token_embedding",
            "positional_embedding"))
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ckpt = Path(tmp) / "HPS_tiny.pt"
        torch.save({"state_dict": state}, ckpt)

        ids = hps_ids()
        prompts = [f"prompt {i}" for i in range(3)]
        tok = FakeTokenizer({p: (ids[i:i + 1], None) for i, p in enumerate(prompts)})
        hps.img_score.model_dict["model"] = model
        hps.img_score.model_dict["preprocess_val"] = preprocess_val
        hps.img_score.get_tokenizer = lambda name: tok
        os.environ.setdefault("HPS_ROOT", str(Path(tmp) / "hps_root"))
        hps.img_score.root_path = str(Path(tmp) / "hps_root")

        pils = [Image.fromarray(img) for img in images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = torch.tensor([float(hps.img_score.score(pils[i], prompts[i], cp=str(ckpt))[0]) for i in range(3)],
                                 dtype=torch.float32)
        assert len(tok.calls) == 3
        model.eval()
        pixels = torch.stack([preprocess_val(p) for p in pils])
        # the same transform built directly, as the brief names it
        direct = hps.transform.image_transform(28, is_train=False, resize_longest_max=True)
        torch.testing.assert_close(torch.stack([direct(p) for p in pils]), pixels, atol=0, rtol=0)
        with torch.no_grad():
            out = model(pixels, ids)
            image_features, text_features = out["image_features"], out["text_features"]
            batched = torch.diagonal(image_features @ text_features.T)
        torch.testing.assert_close(batched, score, atol=1e-5, rtol=1e-5)
        assert len(set(np.round(score.numpy(), 4))) == 3, score

        # torchvision < 0.17 resized TENSORS without antialiasing by default (antialias=None -> False); the
        # published HPS v2 numbers were likely made so. Same original transform, F.resize with antialias=False:
        import functools
        real_f = hps.transform.F
        hps.transform.F = types.SimpleNamespace(resize=functools.partial(real_f.resize, antialias=False),
                                                pad=real_f.pad)
        try:
            old = hps.transform.image_transform(28, is_train=False, resize_longest_max=True)
            pixels_noaa = torch.stack([old(p) for p in pils])
        finally:
            hps.transform.F = real_f
        with torch.no_grad():
            out = model(pixels_noaa, ids)
            score_noaa = torch.diagonal(out["image_features"] @ out["text_features"].T)

        tensors = state_tensors(model)
        tensors.update(image_tensors(images))
        tensors.update({
            "pixels": pixels.contiguous(), "input_ids": ids,
            "image_features": image_features.contiguous(), "text_features": text_features.contiguous(),
            "score": score,
            "pixels_antialias_false": pixels_noaa.contiguous(), "score_antialias_false": score_noaa.contiguous(),
        })
        cfg = {
            "model": {**HPS_TINY, "quick_gelu": False, "class": "hpsv2/src/open_clip/model.py CLIP",
                      "layer_norm_eps": 1e-5, "act": "nn.GELU (exact erf)"},
            "sot_token": HPS_SOT, "eot_token": HPS_EOT, "pad_token": 0,
            "preprocess": "image_transform(28, is_train=False, resize_longest_max=True): RGB, ToTensor, "
                          "ResizeMaxSize(28, BICUBIC, fill=0) on the float tensor, Normalize(OpenAI mean/std)",
            "image_sizes_hw": [list(s) for s in IMAGE_SIZES],
            "tensors": {
                "state.<key>": "CLIP state_dict (as the published {'state_dict': ...} holds it), random; STORED AS "
                               "FLOAT16 (exact: the model computed in float32 with these values; cast to float32)",
                "images.<i>": "uint8 (H_i, W_i, 3) RGB; sizes differ so they are stored one by one",
                "image_sizes": "int64 (3, 2) [H, W]",
                "pixels": "float32 (3, 3, 28, 28): preprocess_val(PIL image i)",
                "input_ids": "int64 (3, 77): sot 62, body 1..61, eot 63, zeros",
                "image_features/text_features": "float32 (3, 16), L2-normalised, model(pixels, input_ids)",
                "score": "float32 (3,): img_score.score(image_i, prompt_i, cp=...)[0] (batch of 1 each); "
                         "= diag(image_features @ text_features.T); NOT multiplied by 100",
                "pixels_antialias_false/score_antialias_false": "the same with ResizeMaxSize's F.resize(..., "
                                                                "antialias=False), i.e. what torchvision < 0.17 "
                                                                "did by default on tensors",
            },
            "rows": "row i of pixels/input_ids/score belong together",
        }
    return tensors, cfg


HPS_PROMPTS = [
    "a cat",
    "A  photo of an astronaut riding a horse on the Moon, 4K, trending on ArtStation!!",
    "caf\u00e9 &amp; cr\u00e8me br\u00fbl\u00e9e \u2014 it\u2019s \u201cdelicious\u201d",
    "  Mixed CASE, numbers 1234567 and emoji \U0001F431 ",
    " ".join(["a very long prompt that has to be truncated"] * 12),
]


def hps_tokenizer_cases(hps) -> dict:
    """Real ids from HPS's open_clip tokenize() (the BPE vocab ships in the package, nothing is downloaded):
    what get_tokenizer('ViT-H-14') gives img_score.score."""
    tok = hps.oc.get_tokenizer("ViT-H-14")
    assert tok is hps.oc.tokenize
    ids = tok(HPS_PROMPTS)
    assert ids.shape == (len(HPS_PROMPTS), 77)
    return {
        "source": "hpsv2.src.open_clip.tokenize (SimpleTokenizer, bpe_simple_vocab_16e6.txt.gz): ftfy.fix_text, "
                  "html.unescape twice, strip, whitespace collapse, lower(); [sot] + bpe + [eot], zero padding to "
                  "77; longer rows are cut to 77 and the last id set to eot",
        "sot_token": 49406, "eot_token": 49407, "context_length": 77,
        "cases": [{"prompt": p, "ids": [int(i) for i in row if i != 0]} for p, row in zip(HPS_PROMPTS, ids)],
    }


# ----------------------------------------------------------------------------- main


def versions() -> dict:
    import importlib.metadata as md
    names = ["torch", "torchvision", "timm", "fairscale", "transformers", "tokenizers", "numpy", "pillow",
             "safetensors", "huggingface_hub", "ftfy", "regex"]
    out = {"python": sys.version.split()[0]}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-reward-repo", default="/work/.mirror/THUDM+ImageReward/repo")
    ap.add_argument("--hps-repo", default="/work/.mirror/tgxs002+HPSv2/repo")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions

    with tempfile.TemporaryDirectory() as tmp:
        ir_src, ir_commit = source_tree(args.image_reward_repo, Path(tmp) / "ir")
        hps_src, hps_commit = source_tree(args.hps_repo, Path(tmp) / "hps")
        ir = import_image_reward(ir_src)
        hps = import_hps(hps_src)
        meta = {"generated_by": "tests/data/reward_models/make_fixtures.py", "versions": versions(),
                "image_reward_commit": ir_commit, "hps_commit": hps_commit}

        images = make_images()

        lay = image_reward_layout(ir, ir_src)
        (out / "image_reward_v1_layout.json").write_text(dump_json({**meta, **lay}))
        lay = hps_layout(hps)
        (out / "hps_v21_layout.json").write_text(dump_json({**meta, **lay}))
        (out / "hps_tokenizer_cases.json").write_text(dump_json({**meta, **hps_tokenizer_cases(hps)}))

        for name, fn in (("image_reward_tiny", image_reward_tiny), ("hps_tiny", hps_tiny)):
            tensors, cfg = fn(ir if name.startswith("image") else hps, images)
            save_file(tensors, str(out / f"{name}.safetensors"))
            (out / f"{name}.json").write_text(dump_json({**meta, **cfg}))
            print(name, {k: v for k, v in tensors.items() if k in ("reward", "score")})
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>9}  {f.name}")


if __name__ == "__main__":
    main()
