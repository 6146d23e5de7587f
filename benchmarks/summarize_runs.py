"""One table from runs' CSV metrics: samples/s (all GPUs, per GPU), MFU, data wait, peak memory.

  python benchmarks/summarize_runs.py runs/gpu-check/zero2 runs/gpu-check/zero3

Medians over the logged windows after the first (which holds start-up), peak memory the maximum.
"""

from __future__ import annotations

import csv
import glob
import json
import statistics
import sys
from pathlib import Path


def _version(path: str) -> int:
    return int(Path(path).parent.name.split("_")[-1])


def summarize(run: Path, last_start_only: bool = False) -> dict:
    """Medians over a run's logged windows; ``last_start_only``: the windows of its latest (re)start only."""
    rows = []
    paths = sorted(glob.glob(str(run / "logs" / "version_*" / "metrics.csv")), key=_version)
    for path in paths[-1:] if last_start_only else paths:
        with open(path) as f:
            rows += [r for r in csv.DictReader(f) if r.get("throughput/samples_per_s")]
    first_window_step_s = float(rows[0]["time/step_s"]) if rows and rows[0].get("time/step_s") else None
    rows = rows[1:] if len(rows) > 1 else rows

    def col(name):
        return [float(r[name]) for r in rows if r.get(name)]

    def median(name):
        values = col(name)
        return round(statistics.median(values), 4) if values else None

    memory = col("memory/max_allocated_gib")
    meta = sorted((run / "checkpoints").glob("step-*/meta.json"))
    return {
        "run": str(run),
        "steps": json.loads(meta[-1].read_text())["step"] if meta else None,
        "world_size": json.loads(meta[-1].read_text())["world_size"] if meta else None,
        "samples_per_s": median("throughput/samples_per_s"),
        "samples_per_s_per_gpu": median("throughput/samples_per_s_per_gpu"),
        "mfu": median("perf/mfu"),
        "data_wait_fraction": median("time/data_wait_fraction"),
        "peak_allocated_gib": round(max(memory), 2) if memory else None,
        "step_s": median("time/step_s"),
        "first_window_step_s": first_window_step_s,  # holds start-up work (cuDNN autotuning, compilation)
        "windows": len(rows),
        "exported": (run / "exported" / "config.json").is_file(),
    }


def main() -> None:
    results = [summarize(Path(p)) for p in sys.argv[1:]]
    keys = ["run", "steps", "world_size", "samples_per_s", "samples_per_s_per_gpu", "mfu", "data_wait_fraction",
            "peak_allocated_gib", "exported"]
    print(" | ".join(keys))
    for r in results:
        print(" | ".join(str(r[k]) for k in keys))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
