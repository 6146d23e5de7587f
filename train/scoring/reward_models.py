"""ImageReward-v1.0 and HPS v2.1 on transformers' BLIP and CLIP classes, from the published checkpoints.

Neither original package is a dependency: ``image-reward`` pins ``timm==0.6.13`` and ``fairscale``, ``hpsv2``
vendors its own open_clip, and both need a torchvision that matches torch. Their models are standard
architectures, so the published weights are renamed onto transformers' classes and scored with the same
steps (``tests/data/reward_models`` holds known answers computed by the original code, and each checkpoint's
full key layout, to test the renaming against).

**ImageReward** (``ImageReward.pt`` of ``THUDM/ImageReward``): BLIP's ViT-L/16 at 224 px (eps 1e-6, exact
GELU) gives ``image_embeds`` (all 197 tokens after the final norm); BLIP's BERT text encoder (bert-base, one
cross-attention per layer onto ``image_embeds``, all image tokens attended) reads the caption tokenised by
``bert-base-uncased`` (+ ``[DEC]`` and ``[ENC]`` added, as BLIP's ``init_tokenizer``; padded to 35 tokens,
``[CLS]`` first: ``[ENC]`` does not replace it); the ``[CLS]`` output goes through the MLP
``768 -> 1024 -> 128 -> 64 -> 16 -> 1`` (linear layers only, dropouts off) and ``(r - 0.16717362830052426) /
1.0333394966054072``. Preprocessing: :func:`~train.scoring.preprocess.short_side_center_crop`.

**HPS v2.1** (``HPS_v2.1_compressed.pt`` of ``xswu/HPSv2``, ``{"state_dict": ...}``): open_clip's ViT-H-14
(vision 1280 wide, 32 layers, patch 14, 224 px; text 1024 wide, 24 layers, context 77; exact GELU; eps 1e-5;
projection 1024). The score is ``cos(E_img, E_txt)`` of the L2-normalised projected features (the diagonal of
``image_features @ text_features.T`` in ``hpsv2.score``; the paper's tables print 100x it, as ``hps_v21``
does). The caption is tokenised with the OpenAI CLIP BPE (open_clip's and transformers' CLIPTokenizer share the
vocabulary); open_clip pads with 0 and transformers with ``<|endoftext|>``, which cannot change the score:
the text is read at the first end-of-text token under a causal mask. Preprocessing:
:func:`~train.scoring.preprocess.resize_max_pad`.

The originals run under fp16 autocast on CUDA; these run in fp32.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .loading import from_pretrained_cached_first
from .preprocess import resize_max_pad, short_side_center_crop

__all__ = ["IMAGE_REWARD_V1", "HPS_V21", "ImageRewardModel", "ImageRewardScorer", "HpsScorer",
           "image_reward_state", "hps_state", "load_published", "check_layout", "load_into", "LayoutError"]

IMAGE_REWARD_MEAN = 0.16717362830052426
IMAGE_REWARD_STD = 1.0333394966054072
IMAGE_REWARD_MAX_LENGTH = 35
IMAGE_REWARD_HIDDEN = (1024, 128, 64, 16)  # the MLP's widths after the text width

# BLIP ViT-L/16 at 224 px and BLIP's med_config.json (bert-base with cross-attention, vocab 30522 + [DEC], [ENC]).
IMAGE_REWARD_V1 = {
    "vision": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                   image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu"),
    "text": dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu",
                 encoder_hidden_size=1024, pad_token_id=0),
}
# open_clip ViT-H-14 (model_configs/ViT-H-14.json).
HPS_V21 = {
    "vision": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                   image_size=224, patch_size=14, layer_norm_eps=1e-5, hidden_act="gelu"),
    "text": dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="gelu",
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
    "projection_dim": 1024,
}


class LayoutError(ValueError):
    """A checkpoint whose keys or shapes are not the published layout; the text names them."""


# ----------------------------------------------------------------- loading


def load_published(path: str | Path) -> dict:
    """A ``.pt`` / ``.pth`` (``weights_only``) or ``.safetensors`` state dict; ``{"state_dict": ...}`` and
    DistributedDataParallel's ``module.`` prefixes are unwrapped."""
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise LayoutError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def check_layout(ours: dict, model, name: str):
    """:class:`LayoutError` naming the missing, unexpected and mis-shaped keys of ``ours`` against ``model``."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in ours)
    shapes = sorted(f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                    for k, v in ours.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape))
    unexpected = sorted(k for k in ours if k not in expected)
    if missing or shapes or unexpected:
        raise LayoutError(f"{name}: " + "; ".join(
            ([f"missing {len(missing)} key(s), e.g. {', '.join(missing[:4])}"] if missing else [])
            + ([f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:4])}"] if unexpected else [])
            + ([f"{len(shapes)} shape(s) differ, e.g. {'; '.join(shapes[:3])}"] if shapes else [])))


# ------------------------------------------------------------- ImageReward

_BLIP_VISION = [  # BLIP's timm-style ViT -> transformers' BlipVisionModel
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.fc(\d)\.", r"encoder.layers.\1.mlp.fc\2."),
    (r"^norm\.", "post_layernorm."),
]
_MLP_LAYERS = (0, 2, 4, 6, 7)  # nn.Sequential indices of the Linear layers (dropouts between)


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def image_reward_state(published: Mapping) -> dict:
    """ImageReward.pt's keys -> :class:`ImageRewardModel`'s. BLIP's ``vision_proj`` / ``text_proj`` (unused when
    scoring) and the ``position_ids`` buffer are dropped; an unknown key raises :class:`LayoutError`."""
    out, unknown = {}, []
    for key, value in published.items():
        if key.startswith("blip.visual_encoder."):
            new = _rename(key[len("blip.visual_encoder."):], _BLIP_VISION)
            new = new and "vision." + new
        elif key.startswith("blip.text_encoder."):
            rest = key[len("blip.text_encoder."):]
            new = None if rest.endswith("position_ids") else "text." + rest
            if new is None:
                continue
        elif key.startswith("mlp.layers."):
            index, param = key[len("mlp.layers."):].split(".", 1)
            new = f"head.{_MLP_LAYERS.index(int(index))}.{param}" if int(index) in _MLP_LAYERS else None
        elif key.startswith(("blip.vision_proj.", "blip.text_proj.")):
            continue
        else:
            new = None
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise LayoutError(f"not ImageReward's layout: {len(unknown)} unknown key(s), e.g. {', '.join(unknown[:4])}")
    return out


class ImageRewardModel(nn.Module):
    """BLIP vision + text encoder with the reward MLP; ``forward`` returns the normalised reward (N,)."""

    def __init__(self, config: Mapping | None = None):
        super().__init__()
        config = IMAGE_REWARD_V1 if config is None else config
        from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        self.vision = BlipVisionModel(BlipVisionConfig(**config["vision"]))
        # is_decoder builds the cross-attention layers; forward(is_decoder=False) keeps attention bidirectional
        self.text = BlipTextModel(BlipTextConfig(**config["text"], is_decoder=True), add_pooling_layer=False)
        widths = (config["text"]["hidden_size"], *IMAGE_REWARD_HIDDEN, 1)
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, pixels, input_ids, attention_mask):
        image = self.vision(pixel_values=pixels).last_hidden_state
        ones = torch.ones(image.shape[:2], dtype=torch.long, device=image.device)
        x = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                      encoder_attention_mask=ones, is_decoder=False).last_hidden_state[:, 0].float()
        for layer in self.head:
            x = layer(x)
        return (x[:, 0] - IMAGE_REWARD_MEAN) / IMAGE_REWARD_STD


class ImageRewardScorer:
    """``score(images, captions)`` -> ImageReward of each (image, caption) pair."""

    def __init__(self, model, tokenizer, device="cpu", max_length: int = IMAGE_REWARD_MAX_LENGTH):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.max_length = max_length
        self.size = int(model.vision.config.image_size)

    def score(self, images, captions) -> list[float]:
        pixels = torch.stack([short_side_center_crop(im, self.size) for im in images]).to(self.device)
        tok = self.tokenizer(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.no_grad():
            r = self.model(pixels, tok.input_ids.to(self.device), tok.attention_mask.to(self.device))
        return [float(v) for v in r]


def blip_tokenizer(spec: str):
    """BLIP's ``init_tokenizer``: bert-base-uncased with ``[DEC]`` as bos and ``[ENC]`` added."""
    from transformers import BertTokenizer

    tok = from_pretrained_cached_first(BertTokenizer.from_pretrained, spec)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


# -------------------------------------------------------------------- HPS

_CLIP_BLOCK = [  # open_clip residual block -> transformers' CLIPEncoderLayer (in_proj is split into q, k, v)
    (r"ln_1\.", "layer_norm1."), (r"ln_2\.", "layer_norm2."), (r"attn\.out_proj\.", "self_attn.out_proj."),
    (r"mlp\.c_fc\.", "mlp.fc1."), (r"mlp\.c_proj\.", "mlp.fc2."),
]
_OPENCLIP_IGNORED = ("attn_mask", "position_ids")


def hps_state(published: Mapping) -> dict:
    """open_clip CLIP keys (ViT towers, built-in text transformer) -> transformers' CLIPModel's."""
    out, unknown = {}, []
    for key, value in published.items():
        tower, rest = ("vision_model", key[len("visual."):]) if key.startswith("visual.") else ("text_model", key)
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", rest)
        if m:
            layer, param = f"{tower}.encoder.layers.{m.group(1)}.", m.group(2)
            if param.startswith("attn.in_proj_"):
                kind = param[len("attn.in_proj_"):]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{layer}self_attn.{name}_proj.{kind}"] = part.clone()
                continue
            new = _rename(param, _CLIP_BLOCK)
            if new is not None:
                out[layer + new] = value
                continue
        elif tower == "vision_model":
            simple = {"class_embedding": "embeddings.class_embedding", "positional_embedding":
                      "embeddings.position_embedding.weight", "conv1.weight": "embeddings.patch_embedding.weight",
                      "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
                      "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
            if rest in simple:
                out[f"vision_model.{simple[rest]}"] = value
                continue
            if rest == "proj":  # x @ proj  ==  Linear with weight proj.T
                out["visual_projection.weight"] = value.t().contiguous()
                continue
        else:
            simple = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                      "positional_embedding": "text_model.embeddings.position_embedding.weight",
                      "ln_final.weight": "text_model.final_layer_norm.weight",
                      "ln_final.bias": "text_model.final_layer_norm.bias", "logit_scale": "logit_scale"}
            if rest in simple:
                out[simple[rest]] = value
                continue
            if rest == "text_projection":
                out["text_projection.weight"] = value.t().contiguous()
                continue
        if not rest.endswith(_OPENCLIP_IGNORED):
            unknown.append(key)
    if unknown:
        raise LayoutError(f"not open_clip's CLIP layout: {len(unknown)} unknown key(s), e.g. {', '.join(unknown[:4])}")
    return out


def hps_model(config: Mapping | None = None):
    from transformers import CLIPConfig, CLIPModel

    config = HPS_V21 if config is None else config
    return CLIPModel(CLIPConfig(text_config=dict(config["text"]), vision_config=dict(config["vision"]),
                                projection_dim=config["projection_dim"]))


def clean_caption(text: str) -> str:
    """open_clip's tokenizer cleaning: ftfy's fix_text (mojibake, curly quotes), HTML entities unescaped twice,
    whitespace collapsed (transformers' CLIPTokenizer lowercases and splits the same way after that)."""
    import html

    import ftfy

    return re.sub(r"\s+", " ", html.unescape(html.unescape(ftfy.fix_text(text))).strip()).strip()


class HpsScorer:
    """``score(images, captions)`` -> ``cos(E_img, E_txt)`` of each pair (HPS's score; x100 is the table's).

    ``antialias``: the tensor resize of HPS's preprocessing; torchvision >= 0.17 antialiases (what ``hpsv2``
    computes today), the torchvision 0.13 of BrushNet's published tables did not."""

    def __init__(self, model, tokenizer, device="cpu", antialias: bool = True):
        self.antialias = antialias
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.size = int(model.config.vision_config.image_size)
        self.context = int(model.config.text_config.max_position_embeddings)

    def features(self, pixels, input_ids):
        def tensor(out):
            return out if torch.is_tensor(out) else out.pooler_output

        with torch.no_grad():
            img = tensor(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            txt = tensor(self.model.get_text_features(input_ids=input_ids.to(self.device)))
        return img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)

    def score(self, images, captions) -> list[float]:
        pixels = torch.stack([resize_max_pad(im, self.size, self.antialias) for im in images])
        ids = self.tokenizer([clean_caption(c) for c in captions], padding="max_length", truncation=True, max_length=self.context,
                             return_tensors="pt").input_ids
        img, txt = self.features(pixels, ids)
        return [float(v) for v in (img * txt).sum(-1)]


# ------------------------------------------------------------- building


def load_into(model, state: dict, name: str):
    """Check ``state`` is ``model``'s layout (:class:`LayoutError` naming what is wrong), load it."""
    check_layout(state, model, name)
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------ test models

IMAGE_REWARD_TINY = {
    "vision": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                   patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu"),
    "text": dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu", encoder_hidden_size=32,
                 pad_token_id=0),
}
HPS_TINY = {
    "vision": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                   patch_size=14, layer_norm_eps=1e-5, hidden_act="gelu"),
    "text": dict(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="gelu", bos_token_id=62,
                 eos_token_id=63, pad_token_id=0),
    "projection_dim": 16,
}


def tiny_bert_tokenizer():
    """A BERT WordPiece tokenizer of 62 ids (words spelt letter by letter, a few punctuation marks), then BLIP's
    [DEC] and [ENC]: 64 ids, :data:`IMAGE_REWARD_TINY`'s vocabulary."""
    import string

    from transformers import BertTokenizer

    letters = list(string.ascii_lowercase)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters] + list(".,!?-")
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok
