"""The inpainting metrics of BrushBench, each with its exact formula and region.

Images are HxWx3 uint8 RGB (``pred`` the generated image, ``target`` the
original), read as ``x / 255`` in [0, 1]. ``keep`` is the HxW preserved region
(1 = kept pixel, 0 = hole), i.e. ``1 - hole``. ``K = sum(keep)`` kept pixels.

Preserved-region metrics, ``convention="standard"`` (the default):

* ``mse`` = ``sum_{kept p, c in RGB} (pred - target)^2 / (3 K)``: the mean
  squared error per element over the kept pixels. NaN when ``K = 0``.
* ``psnr`` = ``10 log10(1 / mse)`` dB, capped at 100 dB (``mse <= 1e-10``,
  identical kept pixels, gives 100).
* ``ssim``: the SSIM map (torchmetrics: 11x11 Gaussian window, sigma 1.5,
  K1 0.01, K2 0.03, data range 1) of ``pred * keep`` against ``target * keep``
  (the hole black in both, so generated hole content cannot count), averaged
  over the 3 channels and the kept pixels only.
* ``lpips``: LPIPS (SqueezeNet-1.1 features, torchmetrics' linear heads, inputs
  ``2 x - 1``) of ``pred * keep`` against ``target * keep``, computed as the
  spatial LPIPS map (each layer's distance upsampled bilinearly to HxW, summed
  over layers) averaged over the kept pixels only, so a small preserved region
  is not diluted by the (identical) black hole.

``convention="reference"`` reproduces ``examples/brushnet/evaluate_brushnet.py``
exactly, so numbers line up with published tables:

* ``mse`` = ``sum_{all p, c} (pred*keep - target*keep)^2 / K``: divided by the
  kept pixels of one channel, 3x the per-element MSE;
* ``psnr`` = ``20 log10(1 / sqrt(mse_reference))``, 1000 when
  ``mse_reference < 1e-10``: 10 log10(3) = 4.77 dB below the standard PSNR;
* ``lpips`` = torchmetrics' LPIPS (squeeze) of ``pred*keep*2-1`` against
  ``target*keep*2-1``, averaged over the whole image (holes included, not
  normalised by area);
* ``ssim``: the reference has none; the standard definition is used;
* ``hps_v21``: HPS's tensor resize without antialiasing, as torchvision 0.13 (BrushNet's tested
  environment) did; the standard convention antialiases, as torchvision >= 0.17 (today's ``hpsv2``) does.

Whole-image metrics (both conventions):

* ``clip_similarity`` = ``100 * max(0, cos(E_img(pred), E_txt(caption)))``
  (torchmetrics' ``CLIPScore``), CLIP ViT-L/14 (``openai/clip-vit-large-patch14``);
* ``aesthetic`` = ``w . f / |f| + b``: the LAION aesthetic predictor, a
  ``Linear(768, 1)`` on the L2-normalised CLIP ViT-L/14 (OpenAI weights) image
  features ``f`` (``sa_0_4_vit_l_14_linear.pth``); the HF and open_clip copies
  of these OpenAI weights give the same features;
* ``hps_v21`` = ``100 * cos(E_img, E_txt)`` of open_clip ViT-H-14 with the
  HPS v2.1 weights (``HPS_v2.1_compressed.pt``; ``hpsv2.score`` returns the
  cosine itself, the paper's tables print 100x it);
* ``image_reward``: ImageReward-v1.0 (BLIP ViT-L + BERT cross-attention +
  MLP head), ``(r - 0.1672) / 1.0333`` as ``ImageReward.score`` returns it.

Both reward models run on transformers' BLIP / CLIP classes with the published
weights renamed (train/scoring/reward_models.py has the architectures and the
exact scoring steps); each scorer's own preprocessing is in
train/scoring/preprocess.py.

Per-image values are rounded to 9 significant digits. Models come from local paths or hub ids in :class:`MetricModels`; one that is
not available makes its metric *skipped* with the reason
(:class:`Skipped`), never zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .loading import from_pretrained_cached_first
from .preprocess import clip_processor

__all__ = ["METRICS", "PRESERVED", "LOWER_IS_BETTER", "CONVENTIONS", "MetricModels", "Skipped", "mse", "psnr",
           "ssim", "lpips", "SqueezeLPIPS", "build_lpips", "ClipScorer", "build_clip", "MetricSuite",
           "check_metric_names"]

METRICS = ("psnr", "mse", "lpips", "ssim", "clip_similarity", "aesthetic", "image_reward", "hps_v21")
PRESERVED = ("psnr", "mse", "lpips", "ssim")
LOWER_IS_BETTER = ("mse", "lpips")
CONVENTIONS = ("standard", "reference")
PSNR_CAP = 100.0  # standard convention: 10 log10(1 / 1e-10)
SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"  # torchvision's checkpoint name (in torch.hub's cache)


def _why(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for a skip reason: its type and message, whitespace collapsed, cut at a word."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Skipped(Exception):
    """A metric that cannot be computed here (its weights or package are missing); the text says why."""


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The names, checked: an unknown one raises ValueError naming the known ones."""
    bad = [n for n in names if n not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad))}; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


@dataclass
class MetricModels:
    """Where the metric models come from (local paths or hub ids). ``tiny`` / ``random``: test models."""

    clip: str | None = "openai/clip-vit-large-patch14"  # clip_similarity and aesthetic; "tiny" for tests
    aesthetic_head: str | None = None  # sa_0_4_vit_l_14_linear.pth (LAION); "random" for tests
    lpips_backbone: str | None = None  # torchvision squeezenet1_1 state dict; None: torch.hub's cache; "random"
    lpips_heads: str | None = None  # None: the heads torchmetrics ships (lpips_models/squeeze.pth)
    hps: str | None = None  # HPS_v2.1_compressed.pt, a folder with it, or the hub id xswu/HPSv2; "tiny" for tests
    hps_tokenizer: str | None = "openai/clip-vit-large-patch14"  # the OpenAI CLIP BPE (open_clip's vocabulary)
    image_reward: str | None = None  # ImageReward.pt, a folder with it, THUDM/ImageReward or ImageReward-v1.0; "tiny"
    image_reward_tokenizer: str | None = "bert-base-uncased"  # BLIP's tokenizer ([DEC] and [ENC] are added)

    @classmethod
    def from_config(cls, cfg) -> "MetricModels":
        if cfg is None:
            return cls()
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        return cls(**{k: get(k, getattr(cls(), k)) for k in cls.__dataclass_fields__})


# ------------------------------------------------------ preserved region


def _floats(pred, target, keep):
    p = np.asarray(pred, np.float64) / 255.0
    t = np.asarray(target, np.float64) / 255.0
    k = np.asarray(keep, np.float64)
    if p.shape != t.shape or p.ndim != 3 or k.shape != p.shape[:2]:
        raise ValueError(f"pred {p.shape}, target {t.shape} and keep {k.shape} must be HxWx3, HxWx3 and HxW")
    return p, t, k


def mse(pred, target, keep, convention: str = "standard") -> float:
    p, t, k = _floats(pred, target, keep)
    kept = k.sum()
    if kept == 0:
        return float("nan")
    if convention == "reference":
        return float((((p * k[..., None]) - (t * k[..., None])) ** 2).sum() / kept)
    return float((k[..., None] * (p - t) ** 2).sum() / (3.0 * kept))


def psnr(pred, target, keep, convention: str = "standard") -> float:
    m = mse(pred, target, keep, convention)
    if math.isnan(m):
        return m
    if convention == "reference":
        return 1000.0 if m < 1e-10 else 20 * math.log10(1.0 / math.sqrt(m))
    return PSNR_CAP if m <= 1e-10 else min(PSNR_CAP, 10 * math.log10(1.0 / m))


def _tensor(img, keep, device="cpu"):
    import torch

    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1)[None]
    k = torch.from_numpy(np.asarray(keep, np.float32))[None, None]
    return (x * k).to(device), k.to(device)


def ssim(pred, target, keep, convention: str = "standard") -> float:
    """Both conventions: the standard definition (the reference script has no SSIM)."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    p, k = _tensor(pred, keep)
    t, _ = _tensor(target, keep)
    if float(k.sum()) == 0:
        return float("nan")
    with torch.no_grad():
        _, full = structural_similarity_index_measure(p.double(), t.double(), data_range=1.0, gaussian_kernel=True,
                                                      sigma=1.5, kernel_size=11, return_full_image=True)
    return float((full.mean(1, keepdim=True) * k).sum() / k.sum())


# ----------------------------------------------------------------- LPIPS


def _squeezenet_features():
    """torchvision's ``squeezenet1_1().features`` in plain torch (same module indices and parameter names)."""
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, inplanes, squeeze, e1, e3):
            super().__init__()
            self.squeeze = nn.Conv2d(inplanes, squeeze, 1)
            self.squeeze_activation = nn.ReLU(inplace=True)
            self.expand1x1 = nn.Conv2d(squeeze, e1, 1)
            self.expand1x1_activation = nn.ReLU(inplace=True)
            self.expand3x3 = nn.Conv2d(squeeze, e3, 3, padding=1)
            self.expand3x3_activation = nn.ReLU(inplace=True)

        def forward(self, x):
            import torch

            x = self.squeeze_activation(self.squeeze(x))
            return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                              self.expand3x3_activation(self.expand3x3(x))], 1)

    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(inplace=True), pool(), Fire(64, 16, 64, 64), Fire(128, 16, 64, 64),
        pool(), Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(), Fire(256, 48, 192, 192),
        Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
    )


class SqueezeLPIPS:
    """LPIPS with the SqueezeNet-1.1 backbone, as torchmetrics computes it, plus a kept-pixel average.

    The pieces (scaling layer, unit-normalised features, 1x1 linear heads, the
    7 slices of the backbone) are torchmetrics'; only the backbone is built
    here, so torchvision is not needed.
    """

    SLICES = [range(2), range(2, 5), range(5, 8), range(8, 10), range(10, 11), range(11, 12), range(12, 13)]
    CHANNELS = [64, 128, 256, 384, 384, 512, 512]

    def __init__(self, features, heads):
        from torchmetrics.functional.image.lpips import ScalingLayer

        self.features = features.eval().requires_grad_(False)
        self.heads = heads.eval().requires_grad_(False)
        self.scaling = ScalingLayer()

    def to(self, device=None, dtype=None):
        for m in (self.features, self.heads, self.scaling):
            m.to(device=device, dtype=dtype)
        return self

    def layer_distances(self, x0, x1):
        """Per layer, the (B, 1, h_l, w_l) distance map; inputs in [-1, 1]."""
        from torchmetrics.functional.image.lpips import _normalize_tensor

        a, b = self.scaling(x0), self.scaling(x1)
        out = []
        for i, sl in enumerate(self.SLICES):
            for j in sl:
                a, b = self.features[j](a), self.features[j](b)
            d = (_normalize_tensor(a) - _normalize_tensor(b)) ** 2
            out.append(self.heads[i](d))
        return out

    def __call__(self, x0, x1, keep=None):
        """``keep`` None: torchmetrics' LPIPS (whole-image mean per layer, summed). Else the summed spatial
        map (bilinear upsampling to the input size, as ``spatial=True``) averaged over ``keep``."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            layers = self.layer_distances(x0, x1)
            if keep is None:
                return sum(d.mean([2, 3]) for d in layers).flatten()
            size = tuple(x0.shape[-2:])
            full = sum(F.interpolate(d, size=size, mode="bilinear", align_corners=False) for d in layers)
            return ((full * keep).sum([1, 2, 3]) / keep.sum([1, 2, 3]))


def build_lpips(backbone: str | None = None, heads: str | None = None, seed: int = 0) -> SqueezeLPIPS:
    """``backbone``: a torchvision squeezenet1_1 state dict file; None: torch.hub's cache
    (``<hub>/checkpoints/squeezenet1_1-b8a52dc0.pth``); ``"random"``: seeded random weights (tests).
    ``heads``: the LPIPS linear heads; None: torchmetrics' ``lpips_models/squeeze.pth``."""
    import torch
    from torch import nn
    from torchmetrics.functional.image.lpips import NetLinLayer

    torch.manual_seed(seed)
    features = _squeezenet_features()
    head_list = nn.ModuleList([NetLinLayer(c, use_dropout=True) for c in SqueezeLPIPS.CHANNELS])
    if backbone != "random":
        path = Path(backbone).expanduser() if backbone else Path(torch.hub.get_dir()) / "checkpoints" / SQUEEZENET_FILE
        if not path.is_file():
            raise Skipped(f"SqueezeNet-1.1 weights not found at {path} (set metric_models.lpips_backbone to "
                          f"torchvision's {SQUEEZENET_FILE})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
        features.load_state_dict(state)
    if heads is None:
        import torchmetrics.functional.image.lpips as tm_lpips

        heads = str(Path(tm_lpips.__file__).parent / "lpips_models" / "squeeze.pth")
    if heads != "random":
        if not Path(heads).is_file():
            raise Skipped(f"LPIPS heads not found at {heads}")
        state = torch.load(heads, map_location="cpu", weights_only=True)
        # torchmetrics' keys are lin<i>.model.1.weight; here the heads are a list: <i>.model.1.weight
        head_list.load_state_dict({f"{k[3:].split('.', 1)[0]}.{k.split('.', 1)[1]}": v for k, v in state.items()})
    return SqueezeLPIPS(features, head_list)


def lpips(model: SqueezeLPIPS, pred, target, keep, convention: str = "standard", device="cpu") -> float:
    """In the model's dtype (float64 as :class:`MetricSuite` builds it: the sums do not depend on threads)."""
    dtype = model.heads[0].model[1].weight.dtype
    p, k = _tensor(pred, keep, device)
    t, _ = _tensor(target, keep, device)
    p, t, k = p.to(dtype), t.to(dtype), k.to(dtype)
    if float(k.sum()) == 0:
        return float("nan")
    if convention == "reference":
        return float(model(p * 2 - 1, t * 2 - 1)[0])
    return float(model(p * 2 - 1, t * 2 - 1, keep=k)[0])


# ------------------------------------------------------------------ CLIP


def _tiny_clip(seed: int = 0):
    import torch
    from transformers import CLIPConfig, CLIPModel

    from train.model.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(config).eval(), tok


class ClipScorer:
    """CLIP image / text embeddings with CLIPImageProcessor's OpenAI preprocessing (no processor files needed)."""

    def __init__(self, model, tokenizer, device="cpu"):
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer = tokenizer
        self.device = device
        self.size = int(model.config.vision_config.image_size)

    def pixels(self, images: Sequence[np.ndarray]):
        import torch

        return torch.stack([clip_processor(img, self.size) for img in images]).to(self.device)

    def image_features(self, images):
        import torch

        with torch.no_grad():
            f = self.model.get_image_features(pixel_values=self.pixels(images))
        f = getattr(f, "image_embeds", getattr(f, "pooler_output", f)) if not torch.is_tensor(f) else f
        return f / f.norm(dim=-1, keepdim=True)

    def text_features(self, captions):
        import torch

        ids = self.tokenizer(list(captions), padding="max_length", truncation=True,
                             max_length=min(77, self.tokenizer.model_max_length), return_tensors="pt")
        with torch.no_grad():
            f = self.model.get_text_features(input_ids=ids.input_ids.to(self.device),
                                             attention_mask=ids.attention_mask.to(self.device))
        f = getattr(f, "text_embeds", getattr(f, "pooler_output", f)) if not torch.is_tensor(f) else f
        return f / f.norm(dim=-1, keepdim=True)


def build_clip(spec: str | None, device="cpu") -> ClipScorer:
    if not spec:
        raise Skipped("metric_models.clip is not set")
    if spec == "tiny":
        model, tok = _tiny_clip()
        return ClipScorer(model, tok, device)
    try:
        from transformers import CLIPModel, CLIPTokenizer

        return ClipScorer(from_pretrained_cached_first(CLIPModel.from_pretrained, spec),
                          from_pretrained_cached_first(CLIPTokenizer.from_pretrained, spec), device)
    except Exception as exc:  # noqa: BLE001 - not on disk, not in the cache, offline
        raise Skipped(f"CLIP model {spec!r} could not be loaded ({_why(exc)}); give metric_models.clip a local "
                      f"folder (offline, HF_HUB_OFFLINE=1 skips the hub's retries)") from None


def build_aesthetic_head(spec: str | None, dim: int):
    import torch

    if not spec:
        raise Skipped("metric_models.aesthetic_head is not set (LAION's sa_0_4_vit_l_14_linear.pth)")
    head = torch.nn.Linear(dim, 1)
    if spec == "random":
        torch.manual_seed(1)
        head.reset_parameters()
        return head.eval()
    if not Path(spec).expanduser().is_file():
        raise Skipped(f"aesthetic head {spec} does not exist")
    state = torch.load(Path(spec).expanduser(), map_location="cpu", weights_only=True)
    if tuple(state["weight"].shape) != (1, dim):
        raise Skipped(f"aesthetic head {spec} is Linear({state['weight'].shape[1]}, 1), the CLIP features are {dim}")
    head.load_state_dict(state)
    return head.eval()


# ------------------------------------------------------- reward models


def _weights_file(spec: str | None, filename: str, key: str, what: str) -> Path:
    """A local file, a folder holding ``filename``, or a hub id (``owner/name``: its ``filename``, downloaded or
    from the hub's cache); :class:`Skipped` saying why not."""
    if not spec:
        raise Skipped(f"{key} is not set ({what}: a path to {filename} or a hub id)")
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise Skipped(f"{key}: {spec} holds no {filename}")
    from train.model.components import hub_id_like

    if hub_id_like(spec) and not path.suffix:  # owner/name
        try:
            from huggingface_hub import hf_hub_download

            def download(repo: str, **kw) -> str:
                return hf_hub_download(repo, filename, **kw)

            return Path(from_pretrained_cached_first(download, spec))
        except Exception as exc:  # noqa: BLE001 - offline, not in the cache, no such repository
            raise Skipped(f"{key}: {filename} of the hub repository {spec} could not be had ({_why(exc)})") from None
    raise Skipped(f"{key}: {what} weights {spec}: no such file or folder (and not a hub id owner/name)")


def _tokenizer(spec: str | None, key: str, kind: str, vocab_size: int):
    """The tokenizer, checked against the model's vocabulary: transformers can hand back an empty tokenizer
    (a handful of special tokens) where the files are missing, which would score every caption alike."""
    if not spec:
        raise Skipped(f"{key} is not set")
    try:
        if kind == "blip":
            from .reward_models import blip_tokenizer

            tok = blip_tokenizer(spec)
        else:
            from transformers import CLIPTokenizer

            tok = from_pretrained_cached_first(CLIPTokenizer.from_pretrained, spec)
    except Exception as exc:  # noqa: BLE001 - not on disk, not in the cache, offline
        raise Skipped(f"{key}: tokenizer {spec!r} could not be loaded ({_why(exc)})") from None
    if len(tok) != vocab_size:
        raise Skipped(f"{key}: tokenizer {spec!r} has {len(tok)} tokens, the model's vocabulary {vocab_size} "
                      "(its files are missing or it is another tokenizer)")
    return tok


def _load_published(path: Path, rename, build, what: str):
    import torch

    from .reward_models import LayoutError, check_layout, load_into, load_published

    try:
        state = rename(load_published(path))
        with torch.device("meta"):  # the layout is checked on a model without storage: a mismatch costs no init
            check_layout(state, build(), f"{what} weights {path}")
        return load_into(build(), state, f"{what} weights {path}")
    except LayoutError as exc:
        raise Skipped(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - unreadable file, a pickle weights_only refuses
        raise Skipped(f"{what} weights {path} could not be read ({_why(exc)})") from None


# ------------------------------------------------------------ the suite


class MetricSuite:
    """Load what the chosen metrics need once; score (pred, target, hole, caption) items.

    ``skipped`` maps a metric to why it is not computed (its models are missing).
    """

    def __init__(self, names: Sequence[str], models: MetricModels | None = None, convention: str = "standard",
                 device="cpu"):
        if convention not in CONVENTIONS:
            raise ValueError(f"metric convention {convention!r}: choose from {', '.join(CONVENTIONS)}")
        self.names = check_metric_names(names)
        self.models = models or MetricModels()
        self.convention = convention
        self.device = device
        self.skipped: dict[str, str] = {}
        self._lpips = self._clip = self._aesthetic = self._hps = self._ir = None
        self._load()

    def _try(self, names, load):
        wanted = [n for n in names if n in self.names]
        if not wanted:
            return None
        try:
            return load()
        except Skipped as exc:
            for n in wanted:
                self.skipped[n] = str(exc)
            return None

    def _load(self):
        import torch

        m = self.models
        self._lpips = self._try(["lpips"], lambda: build_lpips(m.lpips_backbone, m.lpips_heads).to(self.device, torch.float64))
        self._clip = self._try(["clip_similarity", "aesthetic"], lambda: build_clip(m.clip, self.device))
        if self._clip is not None and "aesthetic" in self.names:
            dim = int(self._clip.model.config.projection_dim)
            self._aesthetic = self._try(["aesthetic"], lambda: build_aesthetic_head(m.aesthetic_head, dim).to(self.device))
        elif "aesthetic" in self.names and "aesthetic" not in self.skipped:
            self.skipped["aesthetic"] = self.skipped.get("clip_similarity", "no CLIP model")
        self._hps = self._try(["hps_v21"], self._load_hps)
        self._ir = self._try(["image_reward"], self._load_image_reward)

    @property
    def _antialias(self) -> bool:
        """HPS's resize: antialiased (today's torchvision) in the standard convention; as the torchvision 0.13 of
        BrushNet's tested environment (no antialiasing on tensors) in the reference convention."""
        return self.convention == "standard"

    def _load_hps(self):
        from . import reward_models as rm

        m = self.models
        if m.hps == "tiny":
            from train.model.tiny import tiny_tokenizer

            tok = tiny_tokenizer()
            text = dict(rm.HPS_TINY["text"], vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            import torch

            torch.manual_seed(2)
            return rm.HpsScorer(rm.hps_model(dict(rm.HPS_TINY, text=text)), tok, self.device, self._antialias)
        path = _weights_file(m.hps, "HPS_v2.1_compressed.pt", "metric_models.hps", "HPS v2.1")
        try:  # before the (minutes long) weight load: what can fail cheaply fails first
            import ftfy  # noqa: F401 - clean_caption's, as open_clip's tokenizer
        except ImportError:
            raise Skipped("ftfy is not installed (pip install ftfy): HPS cleans captions with it") from None
        tok = _tokenizer(m.hps_tokenizer, "metric_models.hps_tokenizer", "clip", rm.HPS_V21["text"]["vocab_size"])
        model = _load_published(path, rm.hps_state, rm.hps_model, "HPS v2.1")
        return rm.HpsScorer(model, tok, self.device, self._antialias)

    def _load_image_reward(self):
        from . import reward_models as rm

        m = self.models
        if m.image_reward == "tiny":
            import torch

            torch.manual_seed(3)
            return rm.ImageRewardScorer(rm.ImageRewardModel(rm.IMAGE_REWARD_TINY), rm.tiny_bert_tokenizer(),
                                        self.device)
        spec = m.image_reward
        if spec == "ImageReward-v1.0":  # the image-reward package's name: its download folder, else the hub
            cached = Path("~/.cache/ImageReward/ImageReward.pt").expanduser()
            spec = str(cached) if cached.is_file() else "THUDM/ImageReward"
        path = _weights_file(spec, "ImageReward.pt", "metric_models.image_reward", "ImageReward")
        tok = _tokenizer(m.image_reward_tokenizer, "metric_models.image_reward_tokenizer", "blip",
                         rm.IMAGE_REWARD_V1["text"]["vocab_size"])
        model = _load_published(path, rm.image_reward_state, rm.ImageRewardModel, "ImageReward")
        return rm.ImageRewardScorer(model, tok, self.device)

    def score(self, pred: np.ndarray, target: np.ndarray, hole: np.ndarray, caption: str) -> dict[str, float]:
        """One item: ``pred`` / ``target`` HxWx3 uint8 of the same size, ``hole`` HxW (1 = paint)."""
        import torch

        keep = 1.0 - np.asarray(hole, np.float32)
        c = self.convention
        out: dict[str, float] = {}
        for name in self.names:
            if name in self.skipped:
                continue
            if name == "mse":
                out[name] = mse(pred, target, keep, c)
            elif name == "psnr":
                out[name] = psnr(pred, target, keep, c)
            elif name == "ssim":
                out[name] = ssim(pred, target, keep, c)
            elif name == "lpips":
                out[name] = lpips(self._lpips, pred, target, keep, c, self.device)
            elif name in ("clip_similarity", "aesthetic"):
                feats = self._clip.image_features([pred])
                if name == "clip_similarity":
                    cos = float((feats * self._clip.text_features([caption])).sum())
                    out[name] = 100.0 * max(0.0, cos)
                else:
                    with torch.no_grad():
                        out[name] = float(self._aesthetic(feats.to(self._aesthetic.weight.dtype))[0, 0])
            elif name == "hps_v21":
                out[name] = 100.0 * self._hps.score([pred], [caption])[0]
            elif name == "image_reward":
                out[name] = self._ir.score([pred], [caption])[0]
        # 9 significant digits: the same table whatever the number of processes or threads (float32 models
        # differ in the last bits with the thread count); far below any difference a table can show.
        return {k: float(f"{v:.9g}") for k, v in out.items()}

