"""What checkpoint integrity costs: writing the manifest (SHA-256 of every file) and verifying it.

A folder shaped like a checkpoint is written with random bytes (one big
``model.ckpt`` as DDP writes it, or several files as DeepSpeed's shards), then
``write_manifest`` and ``verify_checkpoint`` are timed. The first read may come
from the page cache (the files were just written, as in a real save); pass
``--drop-caches`` (root) to time verification from disk, as on resume.

  .venv/bin/python benchmarks/checkpoint_manifest.py --gib 2 --files 1
  .venv/bin/python benchmarks/checkpoint_manifest.py --gib 2 --files 8

Prints one JSON line: sizes, seconds and GB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.engine.integrity import verify_checkpoint, write_manifest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size")
    parser.add_argument("--files", type=int, default=1, help="how many files (DeepSpeed: one per rank and more)")
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--drop-caches", action="store_true", help="drop the page cache before verifying (root)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    try:
        total = int(args.gib * (1 << 30))
        block = os.urandom(16 << 20)
        for i in range(args.files):
            with open(root / ("model.ckpt" if args.files == 1 else f"rank{i:02d}_optim_states.pt"), "wb") as f:
                left = total // args.files
                while left > 0:
                    f.write(block[: min(left, len(block))])
                    left -= len(block)
        (root / "meta.json").write_text('{"step": 1}')
        start = time.perf_counter()
        write_manifest(root)
        manifest_s = time.perf_counter() - start
        if args.drop_caches:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        start = time.perf_counter()
        verdict = verify_checkpoint(root)
        verify_s = time.perf_counter() - start
        assert verdict.ok, verdict
        print(json.dumps({"bytes": total, "files": args.files, "cores": os.cpu_count(),
                          "manifest_s": round(manifest_s, 2), "manifest_gb_per_s": round(total / manifest_s / 1e9, 2),
                          "verify_s": round(verify_s, 2), "verify_gb_per_s": round(total / verify_s / 1e9, 2),
                          "verify_from_disk": args.drop_caches}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
