"""ImageReward-v1.0 and HPS v2.1 on transformers' classes against the original implementations.

``tests/data/reward_models`` holds answers computed by the original code (ImageReward's BLIP ViT / med BERT /
MLP, HPS's vendored open_clip) on tiny random models, and the key layout of the full-size published models;
``make_fixtures.py`` there says how they were made. Nothing here imports the original packages.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from train.scoring import inpaint_metrics as im
from train.scoring import reward_models as rm
from train.scoring.preprocess import resize_max_pad, short_side_center_crop

DATA = Path(__file__).parent / "data" / "reward_models"


def fixture(name):
    tensors = load_file(str(DATA / f"{name}.safetensors"))
    config = json.loads((DATA / f"{name}.json").read_text())
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return tensors, config, state


def images(tensors):
    return [tensors[f"images.{i}"].numpy() for i in range(len(tensors["image_sizes"]))]


# ------------------------------------------------------------- ImageReward


def test_image_reward_preprocessing_is_imagerewards():
    t, _, _ = fixture("image_reward_tiny")
    ours = torch.stack([short_side_center_crop(img, 32) for img in images(t)])
    torch.testing.assert_close(ours, t["pixels"], atol=1e-6, rtol=0)


def test_image_reward_scores_equal_the_original_code():
    t, _, state = fixture("image_reward_tiny")
    model = rm.load_into(rm.ImageRewardModel(rm.IMAGE_REWARD_TINY), rm.image_reward_state(state), "tiny").eval()
    with torch.no_grad():
        image = model.vision(pixel_values=t["pixels"]).last_hidden_state
        reward = model(t["pixels"], t["input_ids"], t["attention_mask"])
    torch.testing.assert_close(image, t["image_embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reward, t["reward"].reshape(-1), atol=1e-5, rtol=1e-5)
    assert len(set(np.round(reward.numpy(), 4))) == len(reward)  # the images and captions give different rewards


def test_image_reward_scorer_tokenises_like_blip():
    tok = rm.tiny_bert_tokenizer()
    assert len(tok) == rm.IMAGE_REWARD_TINY["text"]["vocab_size"]
    ids = tok(["a cat"], padding="max_length", truncation=True, max_length=35).input_ids[0]
    assert ids[0] == tok.cls_token_id and len(ids) == 35  # [CLS] first: ImageReward.score does not put [ENC] there
    assert tok.convert_tokens_to_ids("[ENC]") == 63 and tok.bos_token == "[DEC]"


# -------------------------------------------------------------------- HPS


def test_hps_preprocessing_is_hps():
    t, _, _ = fixture("hps_tiny")
    ours = torch.stack([resize_max_pad(img, 28) for img in images(t)])
    torch.testing.assert_close(ours, t["pixels"], atol=1e-5, rtol=0)


def test_hps_reference_convention_resizes_as_torchvision_0_13():
    """BrushNet's tested environment (torchvision 0.13) did not antialias tensor resizes; today's does."""
    t, _, state = fixture("hps_tiny")
    plain = torch.stack([resize_max_pad(img, 28, antialias=False) for img in images(t)])
    torch.testing.assert_close(plain, t["pixels_antialias_false"], atol=1e-5, rtol=0)
    assert (plain - t["pixels"]).abs().max() > 0.1
    scorer = rm.HpsScorer(rm.load_into(rm.hps_model(rm.HPS_TINY), rm.hps_state(state), "tiny"), tokenizer=None)
    img, txt = scorer.features(plain, t["input_ids"])
    torch.testing.assert_close((img * txt).sum(-1), t["score_antialias_false"].reshape(-1), atol=1e-5, rtol=1e-5)
    suite = im.MetricSuite(["hps_v21"], im.MetricModels(clip=None, hps="tiny"), convention="reference")
    assert suite._hps.antialias is False
    assert im.MetricSuite(["hps_v21"], im.MetricModels(clip=None, hps="tiny"))._hps.antialias is True


def test_hps_captions_are_cleaned_as_open_clip_does():
    assert rm.clean_caption("  caf\u00e9 &amp;amp; it\u2019s \u201cgood\u201d\n\tnow ") == 'caf\u00e9 & it\'s "good" now'


def test_hps_tokenisation_equals_open_clips_where_the_clip_tokenizer_is_at_hand():
    """Needs the OpenAI CLIP tokenizer files in the hub cache (nothing is downloaded)."""
    from transformers import CLIPTokenizer

    try:
        tok = CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14", local_files_only=True)
    except Exception:  # noqa: BLE001
        tok = None
    if tok is None or len(tok) != rm.HPS_V21["text"]["vocab_size"]:  # transformers 5 can return an empty one
        pytest.skip("openai/clip-vit-large-patch14's tokenizer is not in the hub cache")
    cases = json.loads((DATA / "hps_tokenizer_cases.json").read_text())["cases"]
    for case in cases:
        ids = tok([rm.clean_caption(case["prompt"])], truncation=True, max_length=77).input_ids[0]
        assert ids == case["ids"], case["prompt"]


def test_hps_scores_equal_the_original_code():
    t, _, state = fixture("hps_tiny")
    scorer = rm.HpsScorer(rm.load_into(rm.hps_model(rm.HPS_TINY), rm.hps_state(state), "tiny"), tokenizer=None)
    img, txt = scorer.features(t["pixels"], t["input_ids"])
    torch.testing.assert_close(img, t["image_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, t["text_features"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((img * txt).sum(-1), t["score"].reshape(-1), atol=1e-5, rtol=1e-5)


def test_hps_padding_after_the_end_of_text_does_not_change_the_score():
    """open_clip pads with 0, transformers' CLIPTokenizer with <|endoftext|>: the score is read at the first one."""
    t, _, state = fixture("hps_tiny")
    scorer = rm.HpsScorer(rm.load_into(rm.hps_model(rm.HPS_TINY), rm.hps_state(state), "tiny"), tokenizer=None)
    ids = t["input_ids"].clone()
    eot = rm.HPS_TINY["text"]["eos_token_id"]
    for row in ids:
        end = int((row == eot).nonzero()[0])
        row[end + 1:] = eot
    _, a = scorer.features(t["pixels"], t["input_ids"])
    _, b = scorer.features(t["pixels"], ids)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout, rename, build", [
    ("image_reward_v1_layout.json", rm.image_reward_state, lambda: rm.ImageRewardModel(rm.IMAGE_REWARD_V1)),
    ("hps_v21_layout.json", rm.hps_state, lambda: rm.hps_model(rm.HPS_V21)),
], ids=["image_reward", "hps"])
def test_the_full_size_published_layout_maps_onto_the_model(layout, rename, build):
    """Every key of the original full-size model (names and shapes, recorded from the original code) lands on
    one of ours with its shape, and none of ours is left without one."""
    spec = json.loads((DATA / layout).read_text())["state_dict"]
    published = {k: torch.empty(v, device="meta") for k, v in spec.items()}
    with torch.device("meta"):
        model = build()
    ours = rename(published)
    expected = model.state_dict()
    assert set(ours) == set(expected)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in expected.items()}


# ------------------------------------------------- through the metric suite


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer with HPS_TINY's 64 ids: letters, letters</w>, digits, then <|startoftext|> 62, <|endoftext|> 63."""
    import string

    from transformers import CLIPTokenizer

    words = list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase] + list(string.digits)
    vocab = {w: i for i, w in enumerate(words + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def test_the_suite_loads_published_files_and_scores_with_them(tmp_path, monkeypatch):
    """Weights in the original layout, saved as the published files are (a ``{"state_dict"}`` .pt in a folder, a
    .safetensors), tokenizers from folders: the suite's scores are those of the models built from the fixtures."""
    _, _, ir_state = fixture("image_reward_tiny")
    _, _, hps_state = fixture("hps_tiny")
    (tmp_path / "hps").mkdir()
    torch.save({"state_dict": {"module." + k: v for k, v in hps_state.items()}}, tmp_path / "hps" / "HPS_v2.1_compressed.pt")
    save_file(ir_state, str(tmp_path / "ImageReward.safetensors"))
    rm.tiny_bert_tokenizer().save_pretrained(tmp_path / "bert")
    tiny_clip_tokenizer().save_pretrained(tmp_path / "clip")
    monkeypatch.setattr(rm, "IMAGE_REWARD_V1", rm.IMAGE_REWARD_TINY)  # the file holds the tiny architecture
    monkeypatch.setattr(rm, "HPS_V21", rm.HPS_TINY)
    suite = im.MetricSuite(["hps_v21", "image_reward"], im.MetricModels(
        clip=None, hps=str(tmp_path / "hps"), hps_tokenizer=str(tmp_path / "clip"),
        image_reward=str(tmp_path / "ImageReward.safetensors"), image_reward_tokenizer=str(tmp_path / "bert")))
    assert suite.skipped == {}
    hps = rm.HpsScorer(rm.load_into(rm.hps_model(), rm.hps_state(hps_state), "tiny"), tiny_clip_tokenizer())
    ir = rm.ImageRewardScorer(rm.load_into(rm.ImageRewardModel(), rm.image_reward_state(ir_state), "tiny"),
                              rm.tiny_bert_tokenizer())
    rng = np.random.default_rng(1)
    for caption, shape in [("a red bird", (40, 56, 3)), ("two cats on a sofa", (64, 48, 3))]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        got = suite.score(img, img, np.zeros(shape[:2]), caption)
        assert got["hps_v21"] == pytest.approx(100 * hps.score([img], [caption])[0], abs=1e-5)
        assert got["image_reward"] == pytest.approx(ir.score([img], [caption])[0], abs=1e-6)


def test_wrong_checkpoints_are_skipped_naming_what_is_wrong(tmp_path, monkeypatch):
    torch.save({"visual.conv1.weight": torch.zeros(2), "bogus.key": torch.zeros(1)}, tmp_path / "hps.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "ir.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    real_tokenizer = im._tokenizer
    monkeypatch.setattr(im, "_tokenizer", lambda *a: None)  # tokenizers are checked first; here the weights are
    suite = im.MetricSuite(["hps_v21", "image_reward"], im.MetricModels(
        clip=None, hps=str(tmp_path / "hps.pt"), image_reward=str(tmp_path / "ir.pt")))
    assert "unknown key(s), e.g. bogus.key" in suite.skipped["hps_v21"]
    assert "not ImageReward's layout" in suite.skipped["image_reward"] and "foo" in suite.skipped["image_reward"]
    suite = im.MetricSuite(["hps_v21"], im.MetricModels(clip=None, hps=str(tmp_path / "broken.pt")))
    assert "could not be read" in suite.skipped["hps_v21"] and "broken.pt" in suite.skipped["hps_v21"]
    suite = im.MetricSuite(["hps_v21", "image_reward"], im.MetricModels(
        clip=None, hps=str(tmp_path / "none.pt"), image_reward=str(tmp_path)))
    assert "none.pt: no such file" in suite.skipped["hps_v21"]
    assert "holds no ImageReward.pt" in suite.skipped["image_reward"]
    # weights fine, tokenizer folder empty: transformers builds a tokenizer of a few special tokens from it
    monkeypatch.setattr(rm, "HPS_V21", rm.HPS_TINY)
    monkeypatch.setattr(im, "_tokenizer", real_tokenizer)
    torch.save(fixture("hps_tiny")[2], tmp_path / "HPS_v2.1_compressed.pt")
    (tmp_path / "empty").mkdir()
    suite = im.MetricSuite(["hps_v21"], im.MetricModels(clip=None, hps=str(tmp_path), hps_tokenizer=str(tmp_path / "empty")))
    assert "hps_tokenizer" in suite.skipped["hps_v21"]


def test_tiny_reward_models_score_through_the_suite():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    suite = im.MetricSuite(["hps_v21", "image_reward"], im.MetricModels(clip=None, hps="tiny", image_reward="tiny"))
    assert suite.skipped == {}
    a, b = suite.score(img, img, np.zeros((48, 64)), "a cat"), suite.score(img, img, np.zeros((48, 64)), "a cat")
    c = suite.score(img[::-1].copy(), img, np.zeros((48, 64)), "a dog on the grass")
    assert a == b and set(a) == {"hps_v21", "image_reward"}
    assert -100 <= a["hps_v21"] <= 100 and a["hps_v21"] != c["hps_v21"] and a["image_reward"] != c["image_reward"]


def test_clip_preprocessing_is_clipimageprocessors():
    """clip_similarity / aesthetic: the pixels transformers' CLIPImageProcessor (PIL backend) gives, non-square too."""
    from transformers.models.clip import CLIPImageProcessorPil

    from train.scoring.preprocess import OPENAI_MEAN, OPENAI_STD, clip_processor

    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                 image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD))
    rng = np.random.default_rng(4)
    for shape in [(60, 80, 3), (80, 60, 3), (45, 67, 3), (32, 32, 3)]:
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        theirs = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]))
        torch.testing.assert_close(clip_processor(img, 32), theirs.float(), atol=2e-5, rtol=0)


def test_metric_models_load_from_the_cache_first_and_say_why_they_could_not(monkeypatch, tmp_path):
    """Offline, CLIP's load retried the hub for ~20 s, then the skip reason was cut mid-sentence at 160 chars."""
    from train.scoring.inpaint_metrics import _why
    from train.scoring.loading import from_pretrained_cached_first

    calls = []

    def load(spec, **kw):
        calls.append(kw)
        raise OSError("not cached")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        from_pretrained_cached_first(load, "org/name")
    assert calls == [{"local_files_only": True}], "offline: the hub is not tried"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls.clear()
    with pytest.raises(OSError):
        from_pretrained_cached_first(load, "org/name")
    assert calls == [{"local_files_only": True}, {}], "the cache first, then the hub"
    calls.clear()
    with pytest.raises(OSError):
        from_pretrained_cached_first(load, str(tmp_path))
    assert calls == [{"local_files_only": True}], "a local folder is not looked up on the hub"
    import huggingface_hub

    from train.scoring.inpaint_metrics import Skipped, _weights_file

    downloads = []

    def hf_hub_download(repo, filename, **kw):
        downloads.append((repo, filename, kw))
        raise OSError("not cached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Skipped, match="hub repository org/name could not be had"):
        _weights_file("org/name", "ImageReward.pt", "metric_models.image_reward", "ImageReward")
    assert downloads == [("org/name", "ImageReward.pt", {"local_files_only": True})], "weights: the cache alone"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    downloads.clear()
    with pytest.raises(Skipped):
        _weights_file("org/name", "ImageReward.pt", "metric_models.image_reward", "ImageReward")
    assert [kw for *_, kw in downloads] == [{"local_files_only": True}, {}], "weights: the cache, then the hub"
    downloads.clear()
    with pytest.raises(Skipped, match="no such file or folder"):
        _weights_file("org/ImageReward.pt", "ImageReward.pt", "metric_models.image_reward", "ImageReward")
    assert downloads == [], "a missing file name is not taken for a hub id"
    long = OSError("word " * 100)
    assert _why(long).startswith("OSError: word word") and _why(long).endswith("word ...") and len(_why(long)) < 320
    assert _why(ValueError("a\n  b")) == "ValueError: a b" and _why(KeyError()) == "KeyError"
