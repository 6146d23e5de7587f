"""Generate a benchmark's images with one or more branches and score them with BrushBench's metrics.

  brushtrain evaluate --base stable-diffusion-v1-5/stable-diffusion-v1-5 --brushnet runs/sd15/brushnet \\
      --bench brushbench data/BrushBench --mask inside --blend --baseline --out runs/eval/brushbench
  torchrun --nproc-per-node 8 -m train evaluate ...        (the images split over the processes)

The reference protocol by default: the hole blacked out in the input, the
benchmark's images at --resolution (512), UniPC, 50 steps, the pipeline's
default guidance (7.5 for SD1.5), a generator re-seeded with --seed (1234) for
every image, conditioning_scale 1.0, and with --blend the blurred paste-back
onto the original. Images already generated are skipped (a rerun resumes).
--baseline adds the branch-off method: the frozen model alone
(conditioning_scale 0) with the same paste-back.

Outputs under --out: <method>/<benchmark path>.png, per_image.csv,
summary.json, summary.md, grid-<metric>.png (best and worst images).
Metric formulas: train/scoring/inpaint_metrics.py and the README's "Evaluate".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

from common.errors import UserError
from common.files import write_bytes_atomic

__all__ = ["add_arguments", "run", "EvaluateError", "summarize", "generation_settings", "SETTINGS_FILE"]

DEFAULT_METRICS = ("psnr", "mse", "lpips", "ssim", "clip_similarity", "aesthetic", "image_reward", "hps_v21")


class EvaluateError(UserError, ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from train.scoring.inpaint_metrics import CONVENTIONS, METRICS

    parser.add_argument("--base", required=True, help="diffusers model folder or hub id (SD1.5 or SDXL), or tiny:sd15 / tiny:sdxl")
    parser.add_argument("--brushnet", action="append", default=[], help="branch folder; repeat for several branches")
    parser.add_argument("--name", action="append", default=[], help="method name for each --brushnet (default: folder name)")
    parser.add_argument("--bench", nargs=2, metavar=("KIND", "SOURCE"), required=True,
                        help="brushbench DIR | folder DIR | shards SPEC")
    parser.add_argument("--mask", choices=["inside", "outside"], default="inside",
                        help="BrushBench: inpainting_mask (inside) or outpainting_mask (outside)")
    parser.add_argument("--blend", action="store_true", help="paste the result onto the original through the blurred mask")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--baseline", action="store_true", help="add the branch-off method (conditioning_scale 0)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per image (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="the generator is re-seeded with it for every image")
    parser.add_argument("--guidance", type=float, default=None, help="default: the pipeline's (7.5 SD1.5, 5.0 SDXL)")
    parser.add_argument("--scheduler", default="unipc",
                        help="unipc (default), ddim, ddpm, pndm, euler, euler_a, dpmpp or a class name")
    parser.add_argument("--scale", type=float, default=1.0, help="conditioning_scale of the branches")
    parser.add_argument("--resolution", type=int, default=512, help="images are resized to this square size")
    parser.add_argument("--metric-convention", choices=list(CONVENTIONS), default="standard",
                        help="standard (default) or the reference script's formulas (the README's Evaluate section)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), metavar="METRIC",
                        help=f"any of {', '.join(METRICS)} (default: all)")
    parser.add_argument("--metric-models", default=None,
                        help="YAML/JSON file with metric model paths (clip, aesthetic_head, lpips_backbone, lpips_heads, hps, "
                             "hps_tokenizer, image_reward, image_reward_tokenizer)")
    parser.add_argument("--grid-metric", default=None, help="metric for the best/worst grid (default: psnr or the first)")
    parser.add_argument("--grid-count", type=int, default=4, help="best and worst images in the grid, each")
    parser.add_argument("--wandb", default=None, metavar="PROJECT", help="also log the tables to this W&B project")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: this process's GPU when there is one)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--gather-timeout", type=float, default=3600.0, help="seconds rank 0 waits for the other ranks")


# ------------------------------------------------------------- helpers


def _png_bytes(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _resize(image, hole, size: int):
    import numpy as np
    from PIL import Image

    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    if hole.shape != (size, size):
        hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    return np.ascontiguousarray(image), hole.astype(np.uint8)


def _methods(args) -> list[tuple[str, str | None, float]]:
    """(name, branch folder or None, conditioning_scale)."""
    if args.name and len(args.name) != len(args.brushnet):
        raise EvaluateError(f"--name given {len(args.name)} times for {len(args.brushnet)} --brushnet")
    from train.model.brushnet import branch_folder_problem

    out, seen = [], set()
    for i, path in enumerate(args.brushnet):
        problem = branch_folder_problem(path)
        if problem:
            raise EvaluateError(f"--brushnet: {problem}")
        name = args.name[i] if args.name else Path(path.rstrip("/")).name or f"branch{i}"
        base_name, k = name, 2
        while name in seen or name == "baseline":
            name, k = f"{base_name}-{k}", k + 1
        seen.add(name)
        out.append((name, path, args.scale))
    if args.baseline:
        out.append(("baseline", args.brushnet[0] if args.brushnet else None, 0.0))
    if not out:
        raise EvaluateError("nothing to evaluate: give --brushnet (one or more) and/or --baseline")
    return out


def _metric_models(path):
    from train.scoring.inpaint_metrics import MetricModels

    if path is None:
        return MetricModels()
    p = Path(path)
    if not p.is_file():
        raise EvaluateError(f"--metric-models {path} does not exist")
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(p))
    except Exception as exc:  # noqa: BLE001
        raise EvaluateError(f"--metric-models {path} cannot be read: {exc}") from None
    unknown = set(data or {}) - set(MetricModels.__dataclass_fields__)
    if unknown:
        raise EvaluateError(f"--metric-models {path}: unknown keys {sorted(unknown)}; known: "
                            f"{sorted(MetricModels.__dataclass_fields__)}")
    return MetricModels(**(data or {}))


class _Progress:
    """One line per update on rank 0: done / total, seconds per image, ETA."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled
        self.done, self.start = 0, time.monotonic()
        self.bar = None
        if enabled and total:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, unit="img", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        from train.callbacks.progress import format_eta

        elapsed = time.monotonic() - self.start
        rate = elapsed / self.done
        eta = rate * (self.total - self.done)
        print(f"{self.label}: {self.done}/{self.total}, {rate:.2f} s/img, ETA {format_eta(eta)}", file=sys.stderr,
              flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------ generation


def _load_base(spec: str, out: Path, dtype):
    from train.model.components import load_base
    from train.model.tiny import generated_folder, is_generated
    from train.setup.prepare import wait_for

    if is_generated(spec):  # run() has rank 0 write it before any rank gets here; the others wait for it
        path = generated_folder(spec, out)
        wait_for(path / "model_index.json", "the generated base", 600, poll=0.2)
        return load_base(path, dtype=dtype).freeze()
    from train.model.components import hub_id_like

    if not Path(spec).expanduser().exists() and not hub_id_like(spec):
        raise EvaluateError(f"--base {spec} does not exist (and is not a hub id like org/name)")
    return load_base(spec, dtype=dtype).freeze()


SETTINGS_FILE = ".generation.json"  # in each <out>/<method>/: what its images were generated with


def _where(spec: str | None) -> str | None:
    """A local path made absolute (so ./x and /abs/x compare equal); a hub id or tiny:sd15 as given."""
    return str(Path(spec).expanduser().resolve()) if spec and Path(spec).expanduser().exists() else spec


def generation_settings(args, method, dtype: str) -> dict:
    """Everything that decides a method's images (not the metrics: a rerun may score the same images otherwise).
    ``dtype`` is the generation dtype as resolved (fp16 on CUDA, fp32 on CPU unless --dtype says)."""
    name, path, scale = method
    settings = {"base": _where(args.base), "brushnet": _where(path) if scale else None, "conditioning_scale": scale,
                "bench": [args.bench[0], _where(args.bench[1])], "mask": args.mask, "resolution": args.resolution,
                "steps": args.steps, "seed": args.seed, "guidance": args.guidance, "scheduler": args.scheduler,
                "blend": args.blend, "dtype": dtype}
    return json.loads(json.dumps(settings))


_LATER_SETTINGS = ("dtype",)  # not in the records of earlier versions: compared only when recorded


def _record_generation_settings(args, methods, out: Path, dtype: str, write: bool) -> None:
    """A rerun skips the images that exist: refuse when they were made with other settings instead of mixing them
    into one table; rank 0 records the settings before the first image."""
    for method in methods:
        folder = out / method[0]
        record = folder / SETTINGS_FILE
        want = generation_settings(args, method, dtype)
        if record.is_file():
            try:
                have = json.loads(record.read_text())
            except ValueError:
                have = {}
            differ = [k for k in want if have.get(k) != want[k] and (k in have or k not in _LATER_SETTINGS)]
            if differ:
                what = "; ".join(f"{k} {have.get(k)!r} then, {want[k]!r} now" for k in differ)
                raise EvaluateError(
                    f"{folder} holds images generated with other settings ({what}); a rerun only adds the missing "
                    f"images, so give another --out (or --name), or remove {folder}")
            continue
        if any(folder.rglob("*.png")):
            print(f"brushtrain evaluate: {folder} holds images without a record of their settings ({SETTINGS_FILE}); "
                  "they are reused as they are", file=sys.stderr, flush=True)
        if write:
            write_bytes_atomic(record, (json.dumps(want, indent=1) + "\n").encode())


def _check_branches_fit(args, methods, out: Path) -> None:
    """Every local branch fits the base's UNet (read off the config files), before any image is made."""
    from train.model.brushnet import check_fits
    from train.model.tiny import generated_folder, is_generated

    unet_config = (generated_folder(args.base, out) if is_generated(args.base) else Path(args.base)) / "unet" / "config.json"
    try:
        unet = json.loads(unet_config.read_text())
    except (OSError, ValueError):
        return  # a hub id, or a generated base another rank is still writing: checked when loaded
    for _, path, scale in methods:
        config = Path(path) / "config.json" if path and scale else None
        if config is not None and config.is_file():
            check_fits(json.loads(config.read_text()), unet, f"--brushnet {path}", f"--base {args.base}")


def generate(args, items, methods, out: Path, rank: int, device, dtype) -> int:
    """Generate this rank's missing images; returns how many were made."""
    import numpy as np
    import torch

    from train.model.brushnet import BrushNetModel, check_fits
    from train.model.pipeline import BrushNetInpaintPipeline, blend_with_blurred_mask

    todo = [(m, it) for m in methods for it in items if not (out / m[0] / it.out_name).is_file()]
    if not todo:
        return 0
    base = _load_base(args.base, out, dtype)
    base.to(device)
    progress = _Progress(len(todo), "generate", rank == 0)
    made = 0
    for name, branch_path, scale in methods:
        mine = [it for (m, it) in todo if m[0] == name]
        if not mine:
            continue
        if branch_path is None:
            branch = BrushNetModel.from_unet(base.unet)
        else:
            branch = BrushNetModel.from_pretrained(branch_path, torch_dtype=dtype)
            check_fits(branch.config, base.unet.config, f"--brushnet {branch_path}", f"--base {args.base}")
        branch = branch.to(device=device, dtype=dtype).eval().requires_grad_(False)
        pipe = BrushNetInpaintPipeline(base, branch, scheduler=args.scheduler)
        for item in mine:
            image, hole = _resize(*_load_item(item), args.resolution)
            masked = image * (1 - hole[..., None])  # the reference's input: the hole blacked out
            generator = torch.Generator(device=device).manual_seed(args.seed)
            result = pipe(masked, hole * 255, item.caption, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, conditioning_scale=scale, generator=generator, blend=False,
                          output_type="np")[0]
            if args.blend:
                result = blend_with_blurred_mask(image, result, hole.astype(np.float32))
            write_bytes_atomic(out / name / item.out_name, _png_bytes(result))
            made += 1
            progress.update()
        del pipe, branch
    progress.close()
    return made


def _load_item(item):
    from data.benchmarks import BenchError

    try:
        return item.load()
    except BenchError as exc:
        raise EvaluateError(str(exc)) from None


# -------------------------------------------------------------- scoring


def score(args, items, methods, out: Path, rank: int, device) -> tuple[list[dict], dict]:
    import numpy as np
    from PIL import Image

    from train.scoring.inpaint_metrics import MetricSuite

    suite = MetricSuite(args.metrics, _metric_models(args.metric_models), args.metric_convention, device=device)
    rows = []
    progress = _Progress(len(items) * len(methods), "score", rank == 0)
    for item in items:
        image, hole = _resize(*_load_item(item), args.resolution)
        for name, _, _ in methods:
            path = out / name / item.out_name
            with Image.open(path) as im:
                pred = np.asarray(im.convert("RGB"))
            if pred.shape != image.shape:
                raise EvaluateError(f"{path} is {pred.shape[1]}x{pred.shape[0]}, expected {args.resolution}")
            rows.append({"method": name, "id": item.id, **suite.score(pred, image, hole, item.caption)})
            progress.update()
    progress.close()
    return rows, suite.skipped


def summarize(rows: list[dict], methods: list[str], metrics: list[str], skipped: dict) -> dict:
    """method -> metric -> {"mean", "stderr", "n"} (NaN values left out of n), or {"skipped": why}."""
    out = {}
    for m in methods:
        out[m] = {}
        for k in metrics:
            if k in skipped:
                out[m][k] = {"mean": None, "stderr": None, "n": 0, "skipped": skipped[k]}
                continue
            vals = [r[k] for r in rows if r["method"] == m and isinstance(r.get(k), float) and not math.isnan(r[k])]
            n = len(vals)
            mean = sum(vals) / n if n else None
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0 if n else None
            out[m][k] = {"mean": mean, "stderr": sd / math.sqrt(n) if n else None, "n": n}
    return out


def markdown(summary: dict, metrics: list[str], convention: str) -> str:
    lines = [f"| method | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for m, row in summary.items():
        cells = []
        for k in metrics:
            v = row[k]
            cells.append("skipped" if "skipped" in v else "n/a" if v["mean"] is None else f"{v['mean']:.4f} ± {v['stderr']:.4f}")
        lines.append(f"| {m} | {' | '.join(cells)} |")
    skipped = {k: v["skipped"] for row in summary.values() for k, v in row.items() if "skipped" in v}
    lines.append("")
    lines.append(f"Metric convention: {convention}; mean ± standard error over the images.")
    for k, why in skipped.items():
        lines.append(f"- {k}: skipped: {why}")
    return "\n".join(lines) + "\n"


def _grid(rows, items, methods, metric, out: Path, args, count: int) -> Path | None:
    import numpy as np
    from PIL import Image

    from data.preview import caption_strip
    from train.scoring.inpaint_metrics import LOWER_IS_BETTER

    by_id = {it.id: it for it in items}
    scored = [r for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])]
    if not scored:
        return None
    better_low = metric in LOWER_IS_BETTER
    ranked = sorted(scored, key=lambda r: r[metric], reverse=not better_low)
    picks = [("best", r) for r in ranked[:count]] + [("worst", r) for r in ranked[::-1][:count]]
    panels = []
    for label, r in picks:
        image, hole = _resize(*_load_item(by_id[r["id"]]), args.resolution)
        masked = image * (1 - hole[..., None])
        with Image.open(out / r["method"] / by_id[r["id"]].out_name) as im:
            pred = np.asarray(im.convert("RGB"))
        panel = np.concatenate([masked, pred, image], axis=1)
        strip = caption_strip(f"{label} {metric}={r[metric]:.4g} {r['method']} {r['id']}", panel.shape[1], height=22,
                              scale=0.35)
        panels.append(np.concatenate([panel, strip], axis=0))
    path = out / f"grid-{metric}.png"
    write_bytes_atomic(path, _png_bytes(np.concatenate(panels, axis=0)))
    return path


def _fingerprint(args, items, methods) -> str:
    key = json.dumps([args.base, [m[:2] for m in methods], [m[2] for m in methods], [it.id for it in items],
                      args.metrics, args.metric_convention, args.resolution, args.steps, args.seed, args.guidance,
                      args.scheduler, args.blend, args.mask], default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _gather(parts: Path, world: int, fingerprint: str, timeout: float) -> tuple[list[dict], dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for r in range(world):
            f = parts / f"rank{r}-of-{world}.json"
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if data.get("fingerprint") == fingerprint:
                found[r] = data
        if len(found) == world:
            break
        if time.monotonic() > deadline:
            missing = sorted(set(range(world)) - set(found))
            raise EvaluateError(f"ranks {missing} did not write their scores to {parts} within {timeout:.0f} s")
        time.sleep(0.5)
    rows = [row for r in range(world) for row in found[r]["rows"]]
    skipped = {}
    for r in range(world):
        skipped.update(found[r]["skipped"])
    return rows, skipped


def _wandb(project: str, summary: dict, rows: list[dict], metrics: list[str], out: Path) -> None:
    try:
        import wandb
    except ImportError:
        print("brushtrain evaluate: --wandb given but wandb is not installed", file=sys.stderr)
        return
    run = wandb.init(project=project, dir=str(out), job_type="evaluate",
                     mode=os.environ.get("WANDB_MODE") or "offline")
    table = wandb.Table(columns=["method"] + metrics)
    for m, row in summary.items():
        table.add_data(m, *[None if "skipped" in row[k] else row[k]["mean"] for k in metrics])
    per = wandb.Table(columns=["method", "id"] + metrics)
    for r in rows:
        per.add_data(r["method"], r["id"], *[r.get(k) for k in metrics])
    run.log({"evaluate/summary": table, "evaluate/per_image": per})
    run.finish()


# ------------------------------------------------------------------ run


def run(args: argparse.Namespace) -> int:
    from data.benchmarks import BenchError, read_bench
    from launch.env import detect_launch
    from train.scoring.inpaint_metrics import check_metric_names

    try:
        args.metrics = check_metric_names(args.metrics)
    except ValueError as exc:
        raise EvaluateError(f"--metrics: {exc}") from None
    if args.grid_metric is not None and args.grid_metric not in args.metrics:
        raise EvaluateError(f"--grid-metric {args.grid_metric!r} is not one of --metrics ({', '.join(args.metrics)})")
    for flag, value, low in (("--resolution", args.resolution, 8), ("--grid-count", args.grid_count, 0)):
        if value < low:
            raise EvaluateError(f"{flag} must be >= {low}, got {value}")
    if args.limit is not None and args.limit < 1:
        raise EvaluateError(f"--limit must be >= 1, got {args.limit}")
    from train.commands.sample import GENERATION_FLAGS
    from train.model.pipeline import generation_problems

    problems = generation_problems(args.steps, args.scale, args.guidance, args.scheduler, GENERATION_FLAGS)
    if problems:
        raise EvaluateError("; ".join(problems))
    if args.resolution % 8:
        raise EvaluateError(f"--resolution must be a multiple of 8 (the VAE's factor), got {args.resolution}")
    from train.commands.sample import device_problem

    problem = device_problem("--device", args.device)
    if problem:
        raise EvaluateError(problem)
    methods = _methods(args)
    _metric_models(args.metric_models)  # a bad file is reported before any work
    kind, source = args.bench
    try:
        items = read_bench(kind, source, args.mask, args.limit)
    except BenchError as exc:
        raise EvaluateError(f"--bench {kind} {source}: {exc}") from None
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids) or len({it.out_name for it in items}) != len(items):
        raise EvaluateError(f"--bench {kind} {source}: ids or image paths are not unique")

    from train.setup.runtime import quiet_libraries

    quiet_libraries()  # our own progress bars stay; the libraries' chatter (dtype casts, DeepSpeed's probe) goes
    launch = detect_launch()
    rank, world = launch.rank, max(1, launch.world_size)
    import torch

    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", launch.local_rank % torch.cuda.device_count())
    else:
        device = torch.device("cpu")
    dtype_name = args.dtype or ("fp16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = out / ".parts"
    mine = items[rank::world]
    fingerprint = _fingerprint(args, items, methods)
    my_part = parts / f"rank{rank}-of-{world}.json"
    my_part.unlink(missing_ok=True)
    if rank == 0:
        print(f"brushtrain evaluate: {len(items)} images x {len(methods)} method(s) "
              f"({', '.join(m[0] for m in methods)}) over {world} process(es), into {out}", flush=True)

    from train.model.tiny import generated_folder, is_generated, write_generated_base

    if rank == 0 and is_generated(args.base):  # before any rank may wait for it
        write_generated_base(generated_folder(args.base, out), args.base)
    _check_branches_fit(args, methods, out)
    _record_generation_settings(args, methods, out, dtype_name, write=rank == 0)
    made = generate(args, mine, methods, out, rank, device, dtype)
    rows, skipped = score(args, mine, methods, out, rank, device)
    write_bytes_atomic(my_part, json.dumps({"fingerprint": fingerprint, "rows": rows, "skipped": skipped}).encode())
    if rank != 0:
        print(f"brushtrain evaluate: rank {rank}: {made} generated, {len(mine)} scored", flush=True)
        return 0

    rows, skipped = _gather(parts, world, fingerprint, args.gather_timeout)
    order = {it.id: i for i, it in enumerate(items)}
    method_order = {m[0]: i for i, m in enumerate(methods)}
    rows.sort(key=lambda r: (method_order[r["method"]], order[r["id"]]))
    metrics = list(args.metrics)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "id"] + metrics)
    for r in rows:
        writer.writerow([r["method"], r["id"]] + ["" if k not in r else repr(float(r[k])) for k in metrics])
    write_bytes_atomic(out / "per_image.csv", buf.getvalue().encode())
    summary = summarize(rows, [m[0] for m in methods], metrics, skipped)
    write_bytes_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    table = markdown(summary, metrics, args.metric_convention)
    write_bytes_atomic(out / "summary.md", table.encode())
    grid_metric = args.grid_metric or ("psnr" if "psnr" in metrics and "psnr" not in skipped else
                                       next((k for k in metrics if k not in skipped), None))
    grid = _grid(rows, items, methods, grid_metric, out, args, args.grid_count) if grid_metric and args.grid_count else None
    print(table, flush=True)
    print(f"brushtrain evaluate: {made} generated here; per_image.csv, summary.json, summary.md"
          f"{', ' + grid.name if grid else ''} in {out}", flush=True)
    if args.wandb:
        _wandb(args.wandb, summary, rows, metrics, out)
    return 0
