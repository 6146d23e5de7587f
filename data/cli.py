"""BrushData shard tools: ``brushtrain data build|synth|validate|preview|bench|index``.

  brushtrain data synth shards/ --samples 1000 --per-shard 100
  brushtrain data build coco --images val2017/ --instances instances_val2017.json \\
      --captions captions_val2017.json --out shards/ --max-bytes 1GB
  brushtrain data build folder --images imgs/ --masks masks/ --out shards/
  brushtrain data validate 'shards/{00000..00009}.tar' --json --strict
  brushtrain data preview shards/ --out grid.png --mask-mode brush
  brushtrain data preview shards/ --out grid.png --config configs/sd15_random.yaml   # a run's data.mask policy
  brushtrain data bench shards/ --resolution 512 --workers 4 --mask-mode brush --mask-stats
  brushtrain data index shards/          # writes shards/sizes.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from common.errors import UserError

__all__ = ["add_arguments", "run"]

class ToolConfigError(UserError, ValueError):
    """A --config file whose data section cannot be used; the message names the file and key."""


_SIZE = re.compile(r"^\s*([0-9.]+)\s*([kmgt]?i?b?)?\s*$", re.I)


def parse_bytes(text: str) -> int:
    """'500MB', '1GiB', '2g', '1000' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 1GB)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    power = "kmgt".find(unit[:1]) + 1 if unit[:1] in "kmgt" and unit else 0
    base = 1024 if "i" in unit else 1000
    return int(number * base**power)


def parse_hw(text: str) -> tuple[int, int]:
    """'1024x1366' -> (1024, 1366): height x width."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (height x width, e.g. 1024x1366)")
    return int(parts[0]), int(parts[1])


def parse_mask_mode(text: str) -> dict[str, float]:
    """'brush' or 'segmentation=0.5,brush=0.5' -> source weights."""
    from data.masks import MASK_SOURCES

    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in MASK_SOURCES:
            raise argparse.ArgumentTypeError(f"unknown mask source {name!r}; choose from {', '.join(MASK_SOURCES)}")
        weights[name] = float(weight) if weight else 1.0
    return weights


SHARDS_HELP = ("shard files, folders of shards, glob or brace patterns (shards/{00000..00099}.tar), URLs (http(s)://, "
               "s3://, pipe:CMD, ...); :: joins lists")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="TOOL", required=True)

    p = sub.add_parser("synth", help="write synthetic shards (shapes with exact masks and captions)")
    p.add_argument("out", help="output folder")
    p.add_argument("--samples", type=_at_least(1, int), default=1000, help="records to write (default %(default)s)")
    p.add_argument("--per-shard", type=_at_least(1, int), default=100, help="records per shard (default %(default)s)")
    p.add_argument("--seed", type=_at_least(0, int), default=0, help="the pictures' seed (default %(default)s)")
    p.add_argument("--min-size", type=_at_least(16, int), default=64, help="smallest image side (pixels)")
    p.add_argument("--max-size", type=_at_least(16, int), default=128, help="largest image side (pixels)")
    p.add_argument("--size", type=parse_hw, default=None, metavar="HxW",
                   help="every image this size, e.g. 1024x1366 (height x width); overrides --min/--max-size")
    p.add_argument("--prefix", default="synth", help="shard file prefix (default %(default)s)")

    p = sub.add_parser("build", help="write shards from COCO annotations or a folder of images")
    kinds = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    coco = kinds.add_parser("coco", help="COCO instances (+ captions) annotations")
    coco.add_argument("--images", required=True, help="folder of the COCO images")
    coco.add_argument("--instances", required=True, help="instances_*.json")
    coco.add_argument("--captions", help="captions_*.json (first caption per image)")
    coco.add_argument("--min-area", type=_at_least(0, float), default=0.0, help="drop instances smaller than this (pixels)")
    coco.add_argument("--include-crowd", action="store_true", help="keep iscrowd instances")
    coco.add_argument("--limit", type=_at_least(1, int), help="only the first N images (by id)")
    folder = kinds.add_parser("folder", help="images with STEM.png / STEM_*.png masks and STEM.txt captions")
    folder.add_argument("--images", required=True, help="folder of the images")
    folder.add_argument("--masks", help="folder of mask images (non-zero = object)")
    folder.add_argument("--captions", help="folder of STEM.txt captions (default: the images folder)")
    for q in (coco, folder):
        q.add_argument("--out", required=True, help="output folder")
        q.add_argument("--max-samples", type=_at_least(1, int), default=1000, help="records per shard")
        q.add_argument("--max-bytes", type=parse_bytes, help="bytes per shard (e.g. 1GB)")
        q.add_argument("--prefix", default=None, help="shard file prefix")

    p = sub.add_parser("validate", help="scan shards: good and bad records by reason, size statistics")
    p.add_argument("shards", nargs="+", help=SHARDS_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any bad record")
    p.add_argument("--workers", type=_at_least(1, int), default=1, help="processes scanning shards in parallel")
    _retry_arguments(p)

    policy_help = ("the mask policy: mask source or mix (segmentation, brush, box, border, or e.g. "
                   "segmentation=0.5,brush=0.5); the other data.mask settings come from --config, else the defaults")
    p = sub.add_parser("preview", help="render image | mask | masked image | caption for a few samples")
    p.add_argument("shards", nargs="+", help=SHARDS_HELP)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--samples", type=_at_least(1, int), default=8, help="samples shown (default %(default)s)")
    p.add_argument("--resolution", type=_at_least(8, int), default=None, help="crop size (default: --config's, else 256)")
    p.add_argument("--mask-mode", type=parse_mask_mode, default=None, help=policy_help)
    p.add_argument("--config", metavar="YAML", help="a `brushtrain fit` config: use its data.mask and data.resolution")
    p.add_argument("--seed", type=_at_least(0, int), default=0, help="the stream's seed (default %(default)s)")

    p = sub.add_parser("bench", help="samples/s of the training stream (last line: JSON)")
    p.add_argument("shards", nargs="+", help=SHARDS_HELP)
    p.add_argument("--resolution", type=_at_least(8, int), default=None, help="crop size (default: --config's, else 512)")
    p.add_argument("--mask-mode", type=parse_mask_mode, default=None, help=policy_help)
    p.add_argument("--config", metavar="YAML", help="a `brushtrain fit` config: use its data.mask and data.resolution")
    p.add_argument("--mask-stats", action="store_true",
                   help="add the hole statistics of the keep masks the stream yields to the JSON line ('masks')")
    p.add_argument("--workers", type=_at_least(0, int), default=0, help="DataLoader worker processes (0: in this process)")
    p.add_argument("--batch-size", type=_at_least(1, int), default=8, help="samples per batch (default %(default)s)")
    p.add_argument("--samples", type=_at_least(1, int), default=500, help="samples timed (default %(default)s)")
    _retry_arguments(p)

    p = sub.add_parser("index", help="count records per shard and write sizes.json beside local shards")
    p.add_argument("shards", nargs="+", help=SHARDS_HELP)


def _retry_arguments(p: argparse.ArgumentParser) -> None:
    """The remote-shard retry settings (data.shard_retries / data.shard_retry_delay in training)."""
    from data.brushdata import DataConfig

    p.add_argument("--retries", type=_at_least(0, int), default=DataConfig.shard_retries,
                   help="re-open a failing URL / pipe: shard this often before reporting it (default %(default)s)")
    p.add_argument("--retry-delay", type=_at_least(0, float), default=DataConfig.shard_retry_delay, metavar="SECONDS",
                   help="wait before the first retry, doubled for each further one (default %(default)s)")


def _at_least(low, kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value

    return parse


def _data_config(args, default_resolution: int, **overrides):
    """A DataConfig for the tools: --config's data.mask / data.resolution, then the flags given."""
    from omegaconf import OmegaConf

    from data.brushdata import DataConfig, MaskConfig
    from data.masks import MASK_SOURCES

    mask = OmegaConf.structured(MaskConfig)
    resolution = default_resolution
    if args.config:
        from configs import resolve

        path = resolve(args.config)  # a file, or a shipped config by name
        if not path.is_file():
            raise FileNotFoundError(f"--config {args.config} does not exist")
        try:
            layer = OmegaConf.load(path).get("data") or {}
            mask = OmegaConf.merge(mask, layer.get("mask") or {})
            resolution = int(layer.get("resolution", resolution))
        except Exception as exc:  # OmegaConf's validation errors name the key
            raise ToolConfigError(f"{args.config}: {str(exc).splitlines()[0]}") from None
    if args.mask_mode is not None:
        mask = OmegaConf.merge(mask, {name: float(args.mask_mode.get(name, 0.0)) for name in MASK_SOURCES})
    if args.resolution is not None:
        resolution = args.resolution
    where = " and ".join(n for n, given in ((f"--config {args.config}", args.config), ("--mask-mode", args.mask_mode))
                         if given) or "the defaults"
    if resolution < 8:
        raise ToolConfigError(f"{where}: data.resolution must be >= 8, got {resolution}")
    mask = MaskConfig(**OmegaConf.to_container(mask))
    try:
        mask.policy()  # checks the weights and probabilities
    except ValueError as exc:
        raise ToolConfigError(f"{where}: {exc}") from None
    return DataConfig(shards=list(args.shards), resolution=resolution, mask=mask, **overrides)


class ToolIOError(UserError, OSError):
    """A file the tool cannot read or write (permissions, a folder where a file should be, a full disk)."""

    exit_code = 1


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    tool = {"synth": _synth, "build": _build, "validate": _validate, "preview": _preview,
            "bench": _bench, "index": _index}[args.data_command]
    try:
        return tool(args)
    except (FileNotFoundError, FileExistsError, UserError):
        raise  # one line already
    except OSError as exc:
        raise ToolIOError(str(exc)) from None


def _synth(args) -> int:
    from data.synth import write_synthetic_shards

    if args.size is None and args.min_size > args.max_size:
        raise ToolConfigError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")

    writer = write_synthetic_shards(args.out, args.samples, args.per_shard, args.seed, args.min_size, args.max_size,
                                    args.prefix, size=args.size)
    print(json.dumps({"samples": writer.total_samples, "shards": len(writer.shards), "bytes": writer.total_bytes, "out": args.out}))
    return 0


def _build(args) -> int:
    from pathlib import Path

    from data.build import build_from_coco, build_from_folder

    for flag in ("images",) + (("masks", "captions") if args.source == "folder" else ()):
        folder = getattr(args, flag)
        if folder is not None and not Path(folder).is_dir():
            raise ToolConfigError(f"--{flag} {folder} is not a folder")

    common = dict(max_samples=args.max_samples, max_bytes=args.max_bytes)
    if args.source == "coco":
        summary = build_from_coco(args.images, args.instances, args.out, captions_json=args.captions,
                                  prefix=args.prefix or "coco", min_area=args.min_area,
                                  include_crowd=args.include_crowd, limit=args.limit, **common)
    else:
        summary = build_from_folder(args.images, args.out, masks_dir=args.masks, captions_dir=args.captions,
                                    prefix=args.prefix or "folder", **common)
    print(f"wrote {summary['samples']} records into {len(summary['shards'])} shard(s), "
          f"{summary['bytes'] / 1e6:.1f} MB, in {args.out}; skipped: {summary['skipped'] or 'none'}")
    print(json.dumps(summary))
    return 0


def _validate(args) -> int:
    from data.shards import expand_shards
    from data.validate import validate_shards

    report = validate_shards(expand_shards(args.shards), workers=args.workers, retries=args.retries,
                             retry_delay=args.retry_delay)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['shards']} shard(s): {report['samples']} good records, {report['bad_total']} bad")
        for reason, n in report["bad"].items():
            print(f"  {reason}: {n}")
        for bad in report["bad_records"][:20]:
            print(f"    {bad['shard']} {bad['key'] or '-'}: {bad['reason']} ({bad['detail']})")
        for name in ("height", "width", "masks_per_sample", "image_bytes"):
            if report[name]:
                print(f"  {name}: {report[name]}")
        for shard, n in report["sizes_mismatch"].items():
            print(f"  sizes.json is wrong for {shard}: {n['sizes_json']} records listed, {n['records']} in the shard "
                  f"(training plans the listed number; run `brushtrain data index`)")
    return 1 if args.strict and (report["bad_total"] or report["sizes_mismatch"]) else 0


def _preview(args) -> int:
    from pathlib import Path

    from PIL import Image

    from data.preview import preview_grid

    if Path(args.out).suffix.lower() not in Image.registered_extensions() or Path(args.out).is_dir():
        raise ToolConfigError(f"--out {args.out}: give an image file name (.png, .jpg, ...)")

    cfg = _data_config(args, 256, batch_size=1, num_workers=0, seed=args.seed, shuffle_buffer=1)
    print(f"wrote {preview_grid(cfg, args.out, args.samples)}")
    return 0


def _bench(args) -> int:
    from data.bench import measure_throughput

    cfg = _data_config(args, 512, batch_size=args.batch_size, num_workers=args.workers, shard_retries=args.retries,
                       shard_retry_delay=args.retry_delay)
    result = measure_throughput(cfg, samples=args.samples, mask_stats=args.mask_stats)
    print(f"{result['samples_per_s']} samples/s at {cfg.resolution} px with {args.workers} worker(s), JPEG decode by "
          f"{result['jpeg_decoder']}", file=sys.stderr)
    if args.mask_stats:
        m = result["masks"]
        print(f"masks: mean hole fraction {m['hole_fraction_mean']}, no hole {m['no_hole_fraction']:.1%}, "
              f"all hole {m['all_hole_fraction']:.1%}, histogram (0.1 bins) {m['hole_fraction_histogram']}",
              file=sys.stderr)
    print(json.dumps(result))
    return 0


def _index(args) -> int:
    from collections import defaultdict
    from pathlib import Path

    from data.shards import (
        ShardReadError,
        count_samples,
        expand_shards,
        is_url,
        write_sizes,
    )

    by_folder: dict = defaultdict(dict)
    for shard in expand_shards(args.shards):
        if is_url(shard):
            print(f"skipping {shard}: sizes.json is only written beside local shards", file=sys.stderr)
            continue
        try:
            by_folder[str(Path(shard).parent)][Path(shard).name] = count_samples(shard)
        except ShardReadError as exc:
            print(f"skipping unreadable shard {exc}", file=sys.stderr)
    for folder, sizes in by_folder.items():
        print(f"{write_sizes(folder, sizes)}: {len(sizes)} shard(s), {sum(sizes.values())} records")
    return 0
