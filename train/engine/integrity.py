"""What a checkpoint holds, recorded when it is written, and checked before it is used.

Every step checkpoint gets a ``manifest.json`` as the last file written before
the folder is renamed into place: each file's path, size and SHA-256. SHA-256
because it is what ``sha256sum`` checks too, and because it is fast enough:
1.3 GB/s on one core (``benchmarks/checkpoint_manifest.py``; an SD1.5
checkpoint, 7.4 GB with the AdamW state, takes about 6 s, files hash in
parallel threads; a checkpoint is written every thousand steps or so, and the
files are still in the page cache). Verifying reads every file once.

Checkpoints written before manifests existed are checked as far as their
formats allow: ``meta.json`` and ``brushnet_config.json`` parse, every
``.ckpt``/``.pt`` file is a complete zip whose members match their CRC-32
(PyTorch writes one per member), ``ema.safetensors`` has a valid header and
the size that header implies. The verdict says which kind of check was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MANIFEST", "CheckpointError", "Verdict", "write_manifest", "verify_checkpoint"]

from common.errors import UserError

MANIFEST = "manifest.json"
_CHUNK = 8 << 20


class CheckpointError(UserError, ValueError):
    """A path that is not a usable checkpoint (missing, damaged, of another kind); the message says why."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: str | Path) -> Path:
    """Record every file under ``folder`` (size, SHA-256) in ``folder/manifest.json``, fsynced."""
    folder = Path(folder)
    files = _files(folder)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(_sha256, files))
    entries = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": d} for p, d in zip(files, digests)}
    path = folder / MANIFEST
    with open(path, "w") as f:
        json.dump({"format": 1, "algorithm": "sha256", "files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return path


@dataclass(frozen=True)
class Verdict:
    ok: bool
    problem: str = ""  # what is wrong, when not ok
    checked: str = ""  # what was checked
    full: bool = True  # checked against a manifest (False: an older checkpoint, its structure only)

    def __bool__(self) -> bool:
        return self.ok


def verify_checkpoint(folder: str | Path) -> Verdict:
    """Check a checkpoint folder against its manifest (or, without one, its files' own structure)."""
    folder = Path(folder)
    if not folder.is_dir():
        return Verdict(False, f"{folder} is not a folder")
    manifest = folder / MANIFEST
    if manifest.is_file():
        return _against_manifest(folder, manifest)
    return _structure_only(folder)


def _against_manifest(folder: Path, manifest: Path) -> Verdict:
    try:
        entries = json.loads(manifest.read_text())["files"]
        assert isinstance(entries, dict) and entries
    except Exception as exc:  # noqa: BLE001 - any damage to the manifest itself
        return Verdict(False, f"{MANIFEST} is unreadable ({type(exc).__name__}: {str(exc)[:120]})")
    checked = f"sizes and SHA-256 of {len(entries)} file(s) against {MANIFEST}"
    todo = []
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return Verdict(False, f"{name} is missing", checked)
        size = path.stat().st_size
        if size != entry["size"]:
            return Verdict(False, f"{name} has {size} bytes, the manifest says {entry['size']} (cut short or overwritten)",
                           checked)
        todo.append((name, path, entry["sha256"]))
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(lambda t: _sha256(t[1]), todo))
    for (name, _, expected), actual in zip(todo, digests):
        if actual != expected:
            return Verdict(False, f"{name}: SHA-256 differs from the manifest (the data is damaged)", checked)
    return Verdict(True, checked=checked)


def _structure_only(folder: Path) -> Verdict:
    checked = f"no {MANIFEST} (written before checksums): checked JSON files, zip CRCs and safetensors headers only"
    if not (folder / "meta.json").is_file():
        return Verdict(False, "no meta.json and no manifest (not a complete checkpoint)", checked, False)
    for name in ("meta.json", "brushnet_config.json"):
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                return Verdict(False, f"{name} is not valid JSON ({exc})", checked, False)
    archives = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".pt"))
    if not archives:
        return Verdict(False, "holds no model.ckpt and no DeepSpeed *.pt files", checked, False)
    for path in archives:
        problem = archive_problem(path)
        if problem:
            return Verdict(False, f"{path.relative_to(folder)}: {problem}", checked, False)
    for path in folder.rglob("*.safetensors"):
        problem = _safetensors_problem(path)
        if problem:
            return Verdict(False, f"{path.relative_to(folder)}: {problem}", checked, False)
    return Verdict(True, checked=checked, full=False)


def archive_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member, compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"not a complete archive ({exc})"
    return f"member {bad} fails its CRC check (the data is damaged)" if bad else None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except Exception as exc:  # noqa: BLE001 - any damage to the header
        return f"unreadable safetensors header ({type(exc).__name__})"
    if size != 8 + n + end:
        return f"has {size} bytes, its header implies {8 + n + end} (cut short)"
    return None
