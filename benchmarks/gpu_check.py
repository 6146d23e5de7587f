"""Every GPU check of issue 13 in one run: at most 8 minutes on one H200 (``bash benchmarks/gpu_check.sh``).

Cases, in this order (each its own process with its own time limit, all under one deadline; a case that fails
or runs out of time is reported with the end of its log, and the next one starts):

  prepare        SD1.5 / SDXL architectures with random weights (bf16 on disk), synthetic 512 px / 1024 px shards
                 (SDXL's in the background while the SD1.5 cases run)
  eager-b8       SD1.5, 512 px, ZeRO-2, bf16, batch 8, eager; saves a checkpoint at the end
  eager-b32      the same at batch 32
  reference-b2   the reference-style plain loop (fp16 autocast, 0 loader workers, the reference's per-sample
                 preprocessing) at batch 2: the ratio column divides by its samples/s
  sdxl-b2        SDXL, 1024 px, ZeRO-2, bf16, batch 2 x 4 accumulated micro-batches, no gradient checkpointing
                 (configs/sdxl_segmentation.yaml: the reference recipe)
  max-batch      the largest batch our step fits with gradient checkpointing (benchmarks/max_batch.py)
  compiled-b8    batch 8 with model.compile.{branch,unet,vae}: resumes eager-b8's ZeRO-2 checkpoint, trains on,
                 exports it (save + resume + export under ZeRO-2, eager checkpoint into a compiled run)
  compiled-b32   batch 32, compiled
                 (the compiled cases may take what the deadline leaves, and start only with 2 minutes left:
                 their first step compiles for minutes)

Throughput figures are medians over the logged windows after the first (which holds start-up, cuDNN autotuning
and compilation; its time per step is the "first window" column). Diagnostics (per-block gradient norms) are
off in these runs; checkpoints only where a case needs one.

Writes under ``--out``: ``gpu_check.md`` (the table), ``gpu_check.json`` (every case's raw metrics and
status), ``gpu_check.log`` (commands and the end of every case's output). Both are rewritten after every case,
so a run cut short still leaves what it measured. ``--dry-run``: tiny models on the CPU, a few steps, the same
cases and table (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Case:
    name: str
    what: str
    argv: list[str]
    limit_s: float
    kind: str = "fit"  # fit (metrics from the run's CSV) | json (last stdout line)
    run_dir: Path | None = None
    batch: int | None = None
    checks: list = field(default_factory=list)  # (label, callable(log_text) -> bool)
    waits_for: str | None = None  # a background preparation to finish first
    after: str | None = None  # a case that must finish first (with --jobs > 1)
    min_s: float = 30.0  # not started with less time left


# ------------------------------------------------------------------------------------------- preparation


def prepare(kind: str, work: Path, dry: bool, threads: int) -> None:
    """Write the base model and the shards one architecture's cases need (skips what exists).

    The shards are written by ``parts`` processes (one folder each; ``data.shards`` joins them with ``::``)
    while this one builds the model.
    """
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from common.files import atomic_directory
    from train.model.tiny import build_random_base, build_tiny_base

    res = _resolution(kind, dry)
    count = (32 if dry else 768) if kind == "sd15" else (16 if dry else 96)
    parts = [work / f"shards-{kind}" / f"part{i}" for i in range(2 if dry else 4)]
    todo = [p for p in parts if not p.is_dir()]
    with ProcessPoolExecutor(max(1, len(todo))) as pool:
        jobs = [pool.submit(_write_shards, p, count // len(parts), 1234 + i, res) for i, p in enumerate(todo)]
        torch.set_num_threads(threads)
        base_dir = work / f"base-{kind}"
        if not (base_dir / "model_index.json").is_file():
            start = time.time()
            base = build_tiny_base(kind) if dry else build_random_base(kind).to(dtype=torch.bfloat16)
            with atomic_directory(base_dir) as tmp:
                base.save_pretrained(tmp)
            print(f"wrote {base_dir} in {time.time() - start:.0f}s", flush=True)
        for job in jobs:
            job.result()
    print(f"{count} synthetic records ({res}-{res * 5 // 4} px) in {shard_spec(work, kind, dry)}", flush=True)


def _write_shards(folder: Path, count: int, seed: int, res: int) -> None:
    from common.files import atomic_directory
    from data.synth import write_synthetic_shards

    with atomic_directory(folder) as tmp:
        write_synthetic_shards(tmp, count, 64, seed, res, res * 5 // 4)


def shard_spec(work: Path, kind: str, dry: bool) -> str:
    return "::".join(str(work / f"shards-{kind}" / f"part{i}") for i in range(2 if dry else 4))


def _resolution(kind: str, dry: bool) -> int:
    return 64 if dry else (512 if kind == "sd15" else 1024)


# ------------------------------------------------------------------------------------------------ plan


def plan(py: str, work: Path, dry: bool) -> list[Case]:
    runs = work / "runs"
    # A dry run keeps each case's code path and shrinks its work: 3 steps logged every step, batches / 4.
    steps = (lambda n: 3) if dry else (lambda n: n)
    every = (lambda n: 1) if dry else (lambda n: n)
    size = (lambda b: max(1, b // 4)) if dry else (lambda b: b)

    def fit(name, arch, batch, n_steps, log_every, run_dir, extra=(), what="", limit=60.0, waits_for=None, checks=(),
            after=None, min_s=30.0):
        config = "configs/sd15_segmentation.yaml" if arch == "sd15" else "configs/sdxl_segmentation.yaml"
        argv = [py, "-m", "train", "fit", "-c", config, "-c", "configs/deepspeed/zero2.yaml",
                f"model.base={work / f'base-{arch}'}", f"data.shards={shard_spec(work, arch, dry)}",
                f"data.resolution={_resolution(arch, dry)}", f"data.batch_size={size(batch)}", f"output_dir={run_dir}",
                f"trainer.max_steps={n_steps}", f"trainer.log_every_n_steps={log_every}", "trainer.devices=1",
                "trainer.progress_bar=false", "logging.logger=csv", "samples.enabled=false",
                "metrics.diagnostics=false", "checkpoint.every_n_steps=0", "checkpoint.save_on_end=false",
                "checkpoint.export_on_end=false", "data.shuffle_buffer=64", f"data.num_workers={1 if dry else 8}"]
        if dry:  # the GPU run's precision too (bf16-mixed, frozen parts in bf16): DeepSpeed's bf16 path runs on CPU
            argv += ["trainer.accelerator=cpu", "deepspeed.allow_cpu=true"]
        return Case(name, what, argv + list(extra), limit, run_dir=run_dir, batch=size(batch), waits_for=waits_for,
                    checks=list(checks), after=after, min_s=min_s)

    compiled = ["model.compile.branch=true", "model.compile.unet=true", "model.compile.vae=true"]
    if dry:  # the compile keys, the resume into a compiled run and its export, cheaply: Dynamo on the VAE encoder
        # alone, without code generation (tests/test_compile.py traces all three parts; a CPU build takes minutes)
        compiled = ["model.compile.vae=true", "model.compile.backend=eager"]
    sd15 = work / "base-sd15"
    b8 = runs / "b8"
    return [
        # 90 s: start-up and the base's load, 30 steps, then an 8.6 GB ZeRO-2 checkpoint written, synced and hashed
        # (about 1.3 GB/s on one core, benchmarks/RESULTS.md); cut short, it leaves compiled-b8 nothing to resume
        fit("eager-b8", "sd15", 8, steps(30), every(5), b8, ["checkpoint.save_on_end=true"],
            "SD1.5 512 px ZeRO-2 bf16, eager; saves a checkpoint", 90,
            checks=[("checkpoint saved", lambda log, run=b8: any(run.glob("checkpoints/step-*/meta.json")))]),
        fit("eager-b32", "sd15", 32, steps(20), every(4), runs / "b32", [], "SD1.5 512 px ZeRO-2 bf16, eager", 55),
        Case("reference-b2", "reference-style loop: fp16 autocast, 0 workers, reference preprocessing",
             [py, "benchmarks/reference_loop.py", "--base", str(sd15), "--shards", shard_spec(work, "sd15", dry),
              "--resolution", str(_resolution("sd15", dry)), "--batch", "2", "--steps", "2" if dry else "30",
              "--warmup", "1" if dry else "5"], 40, kind="json", batch=2),
        fit("sdxl-b2", "sdxl", 2, steps(15), every(3), runs / "sdxl", [], "SDXL 1024 px ZeRO-2 bf16, 4 micro-batches/step",
            75, waits_for="sdxl"),
        Case("max-batch", "largest batch with gradient checkpointing (our step, fused AdamW, bf16)",
             [py, "benchmarks/max_batch.py", "--base", str(sd15), "--resolution", str(_resolution("sd15", dry)),
              "--start", "1" if dry else "32", "--max", "2" if dry else "2048", "--time-limit", "30" if dry else "40"],
             50, kind="json"),
        # Inductor compiles the UNet and the branch, forward and backward, and the VAE encoder at the first step:
        # minutes (Dynamo and AOTAutograd alone take about 20 s to trace the full-size SD1.5 UNet and branch on
        # this project's 2-core CI machine, before Inductor generates and builds any kernel), on top of start-up,
        # the resume of an 8.6 GB checkpoint and the export. So a compiled case may use whatever the deadline
        # leaves, and is not started with less than 2 minutes left: it could not finish compiling, and the
        # device time it held would be lost.
        fit("compiled-b8", "sd15", 8, (5 if dry else 60), every(5), b8, compiled + ["checkpoint.export_on_end=true"],
            "compiled; resumes eager-b8's checkpoint, exports it", 300, after="eager-b8", min_s=120,
            checks=[("resumed eager-b8's checkpoint", lambda log: "resuming from" in log),
                    ("exported, no _orig_mod.", lambda log, run=b8: _export_ok(run / "brushnet"))]),
        fit("compiled-b32", "sd15", 32, steps(20), every(4), runs / "cb32", compiled, "compiled", 300, min_s=120),
    ]


def _passes(check, log_text: str) -> bool:
    """A case's check; one that raises (e.g. reading a file a killed case left half written) is a failed check,
    not the end of the whole GPU check and its table."""
    try:
        return bool(check(log_text))
    except Exception:  # noqa: BLE001 - reported as "NO" in the table; the case's log is in gpu_check.log
        return False


def _export_ok(folder: Path) -> bool:
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file() or not (folder / "config.json").is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
    return bool(keys) and not any("_orig_mod" in k for k in keys)


# ----------------------------------------------------------------------------------------------- running


def run_process(argv: list[str], log_path: Path, limit_s: float, env: dict) -> tuple[str, float]:
    """Run one case's command with a time limit; (status, seconds). The whole process group goes on timeout."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write(" ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit_s))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # not SIGTERM: the trainer would save a checkpoint first
            proc.wait()
            return f"timeout ({limit_s:.0f} s)", time.monotonic() - start
    return ("ok" if rc == 0 else f"failed (exit {rc})"), time.monotonic() - start


def case_metrics(case: Case, log_text: str) -> dict:
    if case.kind == "json":
        for line in reversed(log_text.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}
    from summarize_runs import summarize

    if case.run_dir is None or not (case.run_dir / "logs").is_dir():
        return {}
    return summarize(case.run_dir, last_start_only=True)


def fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def table(rows: list[dict], header: str) -> str:
    ref = next((r for r in rows if r["case"] == "reference-b2" and r.get("samples_per_s")), None)
    lines = [header, "", "| case | what | status | batch | samples/s/GPU | x reference | MFU | peak GiB | data wait | "
             "s/step | first window s/step | wall s | checks |", "|" + " --- |" * 13]
    for r in rows:
        per_gpu = r.get("samples_per_s_per_gpu", r.get("samples_per_s"))
        ratio = per_gpu / ref["samples_per_s"] if (ref and per_gpu and r["case"] not in ("reference-b2", "max-batch")
                                                     and r["case"].startswith(("eager", "compiled"))) else None
        batch = r.get("largest_batch", r.get("batch"))
        status = r["status"] + (f" ({r['oom_in']} OOM at {r['first_oom_batch']})" if r.get("first_oom_batch") else "")
        status += f" (stopped at {r['error_batch']}: {r['error']})" if r.get("error_batch") else ""
        checks = "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r.get("checks", {}).items())
        lines.append("| " + " | ".join([
            r["case"], r["what"], status, fmt(batch), fmt(per_gpu, ".1f"), fmt(ratio, ".2f"),
            fmt(None if r.get("mfu") is None else 100 * r["mfu"], ".1f") + ("%" if r.get("mfu") is not None else ""),
            fmt(r.get("peak_allocated_gib"), ".1f"), fmt(r.get("data_wait_fraction"), ".3f"), fmt(r.get("step_s"), ".3f"),
            fmt(r.get("first_window_step_s"), ".2f"), fmt(r.get("wall_s"), ".0f"), checks or "-"]) + " |")
    return "\n".join(lines) + "\n"


# The two ceilings the MFU column is read against (the device notes measured 769-798 TFLOP/s for this product
# on an H200 whose datasheet says 989): a bf16 8192^3 matrix product and a device-to-device copy (bytes read plus
# written, as the device notes count them), each the median of 20 timed runs after 15 warm-ups (the clocks ramp
# up from idle), on random data; 4 significant figures (a CPU without bf16 units gives a few GFLOP/s). On the
# CPU (dry run) a 256^3 product keeps the code running.
_CEILINGS = (
    "try:\n"
    "    import statistics, time\n"
    "    cuda = torch.cuda.is_available()\n"
    "    dev, n = ('cuda', 8192) if cuda else ('cpu', 256)\n"
    "    g = torch.Generator(dev).manual_seed(0)\n"
    "    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(2))\n"
    "    x = torch.randn(1 << 28 if cuda else 1 << 20, device=dev, generator=g); y = torch.empty_like(x)\n"
    "    def timed(fn):\n"
    "        ts = []\n"
    "        for i in range(35):\n"
    "            if cuda: torch.cuda.synchronize()\n"
    "            t = time.perf_counter(); fn()\n"
    "            if cuda: torch.cuda.synchronize()\n"
    "            ts.append(time.perf_counter() - t)\n"
    "        return statistics.median(ts[15:])\n"
    "    d['matmul_bf16_tflops'] = float(f'{2 * n ** 3 / timed(lambda: a @ b) / 1e12:.4g}')\n"
    "    d['copy_read_plus_write_tb_s'] = float(f'{2 * x.numel() * x.element_size() / timed(lambda: y.copy_(x)) / 1e12:.4g}')\n"
    "    del a, b, x, y\n"
    "except Exception as e:\n"
    "    d['ceilings'] = repr(e)\n"
)


def environment(py: str, env: dict) -> dict:
    code = ("import json, platform, torch; d = {'python': platform.python_version(), 'torch': torch.__version__, "
            "'cuda': torch.version.cuda, 'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}\n"
            "for m in ('lightning', 'diffusers', 'transformers', 'deepspeed'):\n"
            "    try:\n        d[m] = __import__(m).__version__\n    except Exception as e:\n        d[m] = repr(e)\n"
            "try:\n    from data.records import jpeg_decoder\n    d['jpeg_decoder'] = jpeg_decoder()\n"
            "except Exception as e:\n    d['jpeg_decoder'] = repr(e)\n"
            # the loader workers hand batches over in /dev/shm: a small one fails them ('No space left on device')
            "try:\n    import shutil\n"
            "    d['dev_shm_free_gib'] = round(shutil.disk_usage('/dev/shm').free / 2**30, 1)\n"
            "except Exception as e:\n    d['dev_shm_free_gib'] = repr(e)\n"
            + _CEILINGS +
            "print(json.dumps(d))")
    try:
        out = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        return {"error": repr(exc)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU, a few steps, the same table")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu-check")
    ap.add_argument("--work", default=None, help="models, shards and runs (default: <out>/work in a dry run, "
                                                  "/tmp/brushtrain-gpu-check otherwise)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for everything (default 470; dry run: none)")
    ap.add_argument("--started-at", type=float, default=None, help="epoch seconds the budget counts from (default: now)")
    ap.add_argument("--only", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="dry run only: cases run side by side (the test uses 2)")
    ap.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: write one architecture's files
    ap.add_argument("--threads", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.jobs > 1 and not args.dry_run:
        ap.error("--jobs is for dry runs: timings on one GPU need the cases one after another")
    out = Path(args.out)
    work = Path(args.work) if args.work else (out / "work" if args.dry_run else Path("/tmp/brushtrain-gpu-check"))
    if args.prepare:
        sys.path.insert(0, str(ROOT))
        prepare(args.prepare, work, args.dry_run, args.threads)
        return 0

    started = time.monotonic()
    budget = args.budget if args.budget is not None else (None if args.dry_run else 470.0)
    already = max(0.0, time.time() - args.started_at) if args.started_at else 0.0  # e.g. installing the wheels
    deadline = started + budget - already if budget else float("inf")
    out.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)}
    if args.dry_run:
        # One thread per case process: on a shared or busy CPU, OpenMP threads that spin-wait for each other
        # make tiny models 10-40x slower (seen on the 2-core test machine).
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    info = environment(py, env)
    header = (f"# GPU check ({'DRY RUN: tiny models on the CPU, figures mean nothing' if args.dry_run else 'one GPU'})"
              f"\n\n`{' '.join(['bash benchmarks/gpu_check.sh'] + (['--dry-run'] if args.dry_run else []))}`; "
              f"{', '.join(f'{k} {v}' for k, v in info.items())}")
    combined = open(out / "gpu_check.log", "w")
    rows: list[dict] = []

    import threading

    lock = threading.Lock()

    def record(row: dict) -> None:
        rows.append(row)
        (out / "gpu_check.json").write_text(json.dumps({"environment": info, "dry_run": args.dry_run, "cases": rows},
                                                       indent=1, default=str))
        (out / "gpu_check.md").write_text(table(rows, header))

    def launch(name: str, argv: list[str], limit: float) -> tuple[str, float, str]:
        log_path = work / "logs" / f"{name}.log"
        status, seconds = run_process(argv, log_path, limit, env)
        text = log_path.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-(60 if status == "ok" else 200):])
        with lock:
            combined.write(f"\n===== {name}: {status} in {seconds:.0f} s =====\n{tail}\n")
            combined.flush()
        print(f"[{time.monotonic() - started:5.0f} s] {name}: {status} in {seconds:.0f} s", flush=True)
        return status, seconds, text

    prep = [py, str(Path(__file__).resolve()), "--work", str(work), "--out", str(out)] + (["--dry-run"] if args.dry_run else [])
    # SDXL's files are written in the background while the SD1.5 cases run (CPU work, 6 threads)
    log = open(work / "logs" / "prepare-sdxl.log", "w")
    background = {"sdxl": (subprocess.Popen(prep + ["--prepare", "sdxl", "--threads", "6"], cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True), log)}
    status, seconds, _ = launch("prepare-sd15", prep + ["--prepare", "sd15", "--threads", "16"], 120 if args.dry_run else 60)
    record({"case": "prepare-sd15", "what": "random-weight SD1.5 (bf16) + synthetic shards", "status": status,
            "wall_s": round(seconds, 1)})

    only = set(args.only.split(",")) if args.only else None
    cases = [c for c in plan(py, work, args.dry_run) if not only or c.name in only]

    def run_case(case: Case) -> dict:
        row = {"case": case.name, "what": case.what, "batch": case.batch}
        left = deadline - time.monotonic()
        if left < case.min_s:
            return {**row, "status": f"not run: {max(0, left):.0f} s left of the budget", "wall_s": 0}
        limit = min(case.limit_s if not args.dry_run else 600.0, left)
        if case.waits_for in background:
            proc, log = background.pop(case.waits_for)
            waited = time.monotonic()
            try:
                proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
            row["waited_for_prepare_s"] = round(time.monotonic() - waited, 1)
            limit -= time.monotonic() - waited
            if proc.returncode != 0:
                combined.write(f"\n===== prepare-{case.waits_for}: exit {proc.returncode} =====\n"
                               + (work / "logs" / f"prepare-{case.waits_for}.log").read_text()[-4000:])
                return {**row, "status": f"not run: preparing {case.waits_for} failed (exit {proc.returncode})",
                        "wall_s": 0}
        if case.kind == "fit" and case.after is None and case.run_dir is not None and case.run_dir.exists():
            # A rerun on a machine that kept WORK (bases and shards are reused) measures afresh: eager-b8 would
            # find its finished checkpoint, train nothing, and report the figures of the run logged last there.
            shutil.rmtree(case.run_dir)
        status, seconds, text = launch(case.name, case.argv, limit)
        row.update(status=status, wall_s=round(seconds, 1))
        try:
            row.update({k: v for k, v in case_metrics(case, text).items() if k not in ("case", "batch")})
        except Exception as exc:  # noqa: BLE001 - a case's metrics may be missing when it failed
            row["metrics_error"] = repr(exc)
        row["checks"] = {label: _passes(check, text) for label, check in case.checks}
        return row

    if args.jobs <= 1:
        for case in cases:
            record(run_case(case))
    else:  # dry run only: independent cases side by side; a case waits for the one it resumes from
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.jobs) as pool:
            futures = {}
            for case in cases:  # submitted in order, so what a case waits for has started before it
                after = futures.get(case.after)
                futures[case.name] = pool.submit(lambda c=case, a=after: (a.result() if a else None, run_case(c))[1])
            for case in cases:
                record(futures[case.name].result())
    for proc, log in background.values():  # not waited for (its case was not run)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    combined.close()
    print((out / "gpu_check.md").read_text())
    print(f"total {time.monotonic() - started:.0f} s; table {out / 'gpu_check.md'}, raw {out / 'gpu_check.json'}, "
          f"logs {out / 'gpu_check.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
