"""The BrushData training stream: exact under DDP, resumable, robust to bad records.

Per epoch, :mod:`data.shards` cuts the shuffled sample sequence into one range
per (rank, DataLoader worker) *slot*. Each worker reads its range with
WebDataset's openers (local paths, URLs, ``pipe:``), passes the raw records
through a seeded shuffle buffer, checks and augments them (bad ones are counted
by reason, logged with shard and key, and skipped), and batches them.

Guarantees (see the README, "Data position and resume"):

* no sample appears twice in an epoch, and every rank yields exactly
  ``len(loader)`` batches: a rank whose range holds fewer good samples than the
  largest rank's finishes with *pad batches* (``batch["weight"] == 0``; the
  trainer gives them no loss), so DDP never waits on a rank that ran dry;
* every batch holds ``batch_size`` samples: a worker's last batch of an epoch
  is filled up with blank samples of weight 0 (key :data:`PAD_KEY`), so the
  compiled step sees one shape (``model.compile`` with ``dynamic=False``);
* the position (per rank and worker) is :meth:`BrushDataLoader.position`:
  with the same world size and workers a resumed run continues the identical
  stream; with a different layout it continues with the samples no old worker
  had read, so none is repeated (those in old shuffle buffers are skipped);
* the fraction of bad records is watched: above ``max_bad_fraction`` the run
  stops with :class:`BadDataError` (the data is wrong, not noisy).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import logging
import math
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from common.errors import UserError
from data.masks import MASK_SOURCES, MaskPolicy
from data.records import BadRecord, BadSample, RawRecord, jpeg_decoder, parse_record, read_shard
from data.shards import (
    Segment,
    epoch_segments,
    expand_shards,
    shard_sizes,
    shard_specs,
    split_segments,
)
from data.streams import is_url
from data.transforms import Example, make_example

__all__ = ["MaskConfig", "DataConfig", "BrushDataset", "BrushDataLoader", "BadDataError", "PAD_KEY", "pad_batch",
           "real_samples"]

log = logging.getLogger(__name__)
STATE_VERSION = 1
PAD_KEY = "<pad>"  # the key of a sample that trains nothing (weight 0)
_JOINT_CHECK_EVERY = 16  # batches between the ranks' joint checks of their bad-record counts


# ------------------------------------------------------------------- config


@dataclass
class MaskConfig:
    """Mask sources by weight, and the reference's random edits (see :class:`data.masks.MaskPolicy`).

    The defaults are the reference recipe's, measured in the training crop (docs/reference.md section 5):
    stroke geometry, width and the opening kernel are in pixels of the *original* image (``space: original``).
    """

    segmentation: float = 1.0
    brush: float = 0.0
    box: float = 0.0
    border: float = 0.0
    opening_p: float = 0.3  # probability of an opening (erode then dilate)
    opening_kernel: int = 8  # its square kernel, in pixels of `space`
    invert_p: float = 0.5  # probability that keep and hole swap
    space: str = "original"  # original: sizes in original-image pixels, scaled to the crop | crop: training pixels
    brush_min_strokes: int = 0  # strokes per brush mask: min..max inclusive (the reference: 0..3)
    brush_max_strokes: int = 3
    brush_max_segments: int = 7  # segments per stroke: 0..max (0 = a round dot)
    brush_width: float = 128.0  # stroke width, in pixels of `space`
    brush_transposed_starts: bool = True  # the reference's (W, H) start box on non-square images

    def policy(self) -> MaskPolicy:
        return MaskPolicy(
            weights={name: float(getattr(self, name)) for name in MASK_SOURCES},
            opening_p=self.opening_p,
            opening_kernel=self.opening_kernel,
            invert_p=self.invert_p,
            space=self.space,
            brush=dict(min_strokes=self.brush_min_strokes, max_strokes=self.brush_max_strokes,
                       max_segments=self.brush_max_segments, stroke_width=float(self.brush_width),
                       transposed_starts=self.brush_transposed_starts),
        )


@dataclass
class DataConfig:
    shards: Any = field(default_factory=list)  # one spec or a list: paths, dirs, globs, brace patterns, URLs, pipe:
    sizes_file: Optional[str] = None  # default: sizes.json beside the shards, else counted
    resolution: int = 512
    batch_size: int = 2
    num_workers: int = 4
    seed: int = 0
    shuffle_shards: bool = True
    shuffle_buffer: int = 1000  # raw records per worker (memory: about this many JPEGs)
    random_crop: bool = True
    caption_dropout: float = 0.0  # the reference's proportion_empty_prompts
    mask: MaskConfig = field(default_factory=MaskConfig)
    max_bad_fraction: float = 0.05
    bad_check_after: int = 1000  # samples seen before the ceiling is enforced
    prefetch_factor: int = 4
    pin_memory: bool = False
    # How loader workers start: forkserver (default) forks them from a clean single-threaded server, so a
    # worker never inherits a lock another thread of the trainer held at fork time (gloo, DeepSpeed, OpenCV's
    # pool: a plain fork can hang the worker forever); fork is faster to start, spawn the most isolated.
    worker_start: str = "forkserver"
    shard_retries: int = 3  # URL / pipe: shards: re-open a failed or broken stream this often before giving up
    shard_retry_delay: float = 1.0  # seconds before the first retry, doubled for each further one


class BadDataError(UserError, RuntimeError):
    """Too many bad records (or none readable): the data set is wrong, not noisy."""

    exit_code = 1


# ------------------------------------------------------------------ workers


@dataclass
class _Job:
    """What the workers of one rank need for one pass (pickled into each worker)."""

    epoch: int
    rank: int
    workers: int
    segments: dict  # slot -> list[Segment]
    skip: dict  # slot -> raw records already emitted (and consumed) in this epoch
    rotation: int  # DataLoader worker i serves local slot (i + rotation) % workers


class _Counter:
    def __init__(self):
        self.n = 0


def _shuffled(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """A seeded shuffle buffer; deterministic for a given input order and generator."""
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            j = int(rng.integers(len(buf)))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    while buf:
        j = int(rng.integers(len(buf)))
        buf[j], buf[-1] = buf[-1], buf[j]
        yield buf.pop()


class BrushDataset(IterableDataset):
    """Worker side: read a slot's segments, shuffle, check, augment, batch."""

    def __init__(self, cfg: DataConfig, shards: list[str], sizes: list[int]):
        super().__init__()
        self.cfg = cfg
        self.shards = shards
        self.sizes = sizes
        self.shard_index = {s: i for i, s in enumerate(shards)}
        self.policy = cfg.mask.policy() if hasattr(cfg.mask, "policy") else MaskConfig(**cfg.mask).policy()
        self.job: _Job | None = None

    def _records(self, segments: list[Segment], read: _Counter) -> Iterator[RawRecord | BadRecord]:
        for seg in segments:
            for record in read_shard(self.shards[seg.shard], seg.start, seg.end, self.cfg.shard_retries,
                                     self.cfg.shard_retry_delay, planned=self.sizes[seg.shard]):
                read.n += 1
                yield record

    def _bad(self, counts: collections.Counter, reason: str, shard: str, key: str, detail: str) -> None:
        counts[reason] += 1
        log.warning("skipping bad record %s key=%s: %s (%s)", shard, key or "-", reason, detail[:200])

    def iter_slot(self, epoch: int, slot: int, segments: list[Segment], skip: int) -> Iterator[dict]:
        cfg = self.cfg
        read = _Counter()
        rng = np.random.default_rng([cfg.seed, epoch, slot, 0xB0F])
        stream = _shuffled(self._records(segments, read), max(1, cfg.shuffle_buffer), rng)
        emitted, batch, bad = 0, [], collections.Counter()
        images = None  # the batch's image memory: each example is written into its slot (no copy at collate)
        for item in stream:
            emitted += 1
            if emitted <= skip:  # consumed before a resume: skipped before any decoding
                continue
            if isinstance(item, BadRecord):
                self._bad(bad, item.reason, item.shard, item.key, item.detail)
                continue
            identity = [cfg.seed, epoch, self.shard_index[item.shard], item.offset]
            sample_rng = np.random.default_rng(identity)
            if images is None:
                images = _batch_memory((cfg.batch_size, cfg.resolution, cfg.resolution, 3))
                slots = images.numpy()
            try:
                record = parse_record(item)
                example = make_example(record, cfg.resolution, self.policy, sample_rng,
                                       caption_dropout=cfg.caption_dropout, random_crop=cfg.random_crop,
                                       out=slots[len(batch)])
                example.seed = int(np.random.SeedSequence(identity + [0x5EED]).generate_state(1, np.uint64)[0] >> 1)
            except BadSample as exc:
                self._bad(bad, exc.reason, item.shard, item.key, exc.detail)
                continue
            batch.append(example)
            if len(batch) == cfg.batch_size:
                yield _collate(batch, dict(slot=slot, emitted=emitted, read=read.n, bad=dict(bad), marker=False), images)
                batch, bad, images = [], collections.Counter(), None
        if batch:  # a short last batch, filled up with blank samples of weight 0: every batch has one shape
            real = len(batch)
            images[real:].zero_()
            batch += [_blank_example(cfg.resolution)] * (cfg.batch_size - real)
            yield _collate(batch, dict(slot=slot, emitted=emitted, read=read.n, bad=dict(bad), marker=False), images,
                           real=real)
            bad = collections.Counter()
        # A last message with the counts of trailing bad records (never given to the trainer).
        yield {"__meta__": dict(slot=slot, emitted=emitted, read=read.n, bad=dict(bad), marker=True)}

    def __iter__(self) -> Iterator[dict]:
        job = self.job
        if job is None:
            raise RuntimeError("BrushDataset is iterated through BrushDataLoader, which sets its job")
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = job.rank * job.workers + (worker + job.rotation) % job.workers
        yield from self.iter_slot(job.epoch, slot, job.segments.get(slot, []), job.skip.get(slot, 0))


def _batch_memory(shape: tuple[int, ...]) -> torch.Tensor:
    """Uninitialised uint8 memory for a batch tensor. In a loader worker it is shared memory from the start, as
    torch's default_collate allocates it: handing the batch to the trainer's process then moves no bytes,
    where a private tensor would be copied into shared memory by the queue (about 15 ms for a batch of 32 at
    512 px; benchmarks/RESULTS.md)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def _stack(arrays: list[np.ndarray]) -> torch.Tensor:
    out = _batch_memory((len(arrays), *arrays[0].shape))
    view = out.numpy()
    for i, a in enumerate(arrays):
        view[i] = a
    return out


def _blank_example(resolution: int) -> Example:
    """A sample that trains nothing (its weight is 0): black, nothing to paint, no caption."""
    return Example(image=np.zeros((0, 0, 3), np.uint8), keep_mask=np.ones((1, resolution, resolution), np.uint8),
                   caption="", original_size=(resolution, resolution), crop_top_left=(0, 0), key=PAD_KEY,
                   mask_source="pad")


def _collate(examples: list, meta: dict | None, images: torch.Tensor, real: int | None = None) -> dict:
    """``images``: the (B, R, R, 3) uint8 tensor the examples' images were written into; the first ``real``
    examples (default: all) train, the rest are blank fillers of weight 0."""
    real = len(examples) if real is None else real
    batch = {
        # (B, 3, R, R) view of HWC memory: no per-sample transpose copy; the device copy is channels-last.
        "image": images.permute(0, 3, 1, 2),
        "keep_mask": _stack([e.keep_mask for e in examples]),
        "caption": [e.caption for e in examples],
        "original_size": torch.tensor([e.original_size for e in examples], dtype=torch.int64),
        "crop_top_left": torch.tensor([e.crop_top_left for e in examples], dtype=torch.int64),
        "key": [e.key for e in examples],
        "mask_source": [e.mask_source for e in examples],
        "sample_seed": torch.tensor([e.seed for e in examples], dtype=torch.int64),
        "weight": (torch.arange(len(examples)) < real).float(),
    }
    if meta is not None:
        batch["__meta__"] = meta
    return batch


def pad_batch(template: dict | None, resolution: int, batch_size: int) -> dict:
    """A batch that trains nothing (weight 0): a copy of ``template``, or ``batch_size`` blank samples."""
    if template is None:
        images = torch.zeros(batch_size, resolution, resolution, 3, dtype=torch.uint8)
        return _collate([_blank_example(resolution)] * batch_size, None, images, real=0)
    pad = dict(template)
    pad["weight"] = torch.zeros_like(template["weight"])
    pad["key"] = [PAD_KEY] * len(template["key"])
    return pad


def real_samples(batch: dict) -> dict:
    """The batch without its blank samples (weight 0; they are always at its end): for the held-out evaluation
    and the sample grids, which run eager and need no fixed shape."""
    real = int((batch["weight"] > 0).sum())
    if real == len(batch["key"]):
        return batch
    return {k: (v[:real] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}


# The job's stop and requeue signals. SLURM delivers them (scancel, scancel --signal, the --signal=USR1@T warning)
# to every process of a job step: the loader workers, their fork server and multiprocessing's resource tracker too.
# Their default action ends those processes; the trainer then finds a worker gone while it hands over a batch
# (ConnectionRefusedError in rebuild_storage_fd) and dies instead of saving and requeueing, and a restarted resource
# tracker prints a KeyError traceback per semaphore. Only the trainer acts on them; the helpers end with it
# (PyTorch's worker watchdog, the fork server's and tracker's pipes to the trainer) or at SLURM's SIGKILL.
_JOB_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def _job_signals_blocked():
    """Block the job signals in this thread while helper processes start from it: they inherit the mask (across
    fork and exec), so they never act on them; here the signals stay pending and arrive at the end, none lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _JOB_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(sharing_strategy: str, _worker_id: int):
    import cv2

    # Every worker is born blocking them; ignoring them too keeps that when the mask was lost on the way (a
    # resource tracker restarted while workers start unblocks SIGTERM in the starting thread).
    for signum in _JOB_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    # a forkserver / spawn worker does not inherit the trainer's choice (file_system avoids "too many open files")
    if torch.multiprocessing.get_sharing_strategy() != sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(sharing_strategy)


WORKER_STARTS = ("forkserver", "fork", "spawn")
# Imported once by the fork server, before it forks any worker: the workers then start in a fraction of a
# second instead of each importing torch, OpenCV and the data package again.
_FORKSERVER_PRELOAD = ["torch", "cv2", "numpy", "data.brushdata"]


@functools.cache  # once per method: a fork server that cannot start is tried, and reported, once per process
def _worker_context(method: str):
    import multiprocessing

    from multiprocessing import resource_tracker

    if method not in WORKER_STARTS:
        raise ValueError(f"data.worker_start {method!r}: choose from {', '.join(WORKER_STARTS)}")
    # The loader's queues register their semaphores with the tracker: start it blocking the job signals, in a
    # section of its own (starting it unblocks SIGTERM again in this thread; it ignores that one itself).
    with _job_signals_blocked():
        resource_tracker.ensure_running()
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(_FORKSERVER_PRELOAD)  # no effect once the server runs
        try:  # the server listens on a socket under $TMPDIR: a path too long for AF_UNIX (some clusters) fails
            from multiprocessing import forkserver

            with _job_signals_blocked():  # the server and every worker forked from it
                forkserver.ensure_running()
        except OSError as exc:
            log.warning("data.worker_start=forkserver: the fork server could not start (%s); the loader workers "
                        "start with spawn instead", exc)
            method = "spawn"
    return multiprocessing.get_context(method)


def _shutdown(batches) -> None:
    """Stop a DataLoader iterator's workers now (a no-op without workers, or when they already stopped)."""
    stop = getattr(batches, "_shutdown_workers", None)
    if stop is not None:
        stop()


# ------------------------------------------------------------------- loader


def _default_gather(obj: Any) -> list:
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


class BrushDataLoader:
    """Main-process side: one rank's batches, its position, pads and bad-record counters."""

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1,
                 gather: Callable[[Any], list] | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.workers = max(1, int(cfg.num_workers))
        self.shards = expand_shards(cfg.shards)
        self.sizes = shard_sizes(self.shards, cfg.sizes_file, cfg.shard_retries, cfg.shard_retry_delay)
        if sum(self.sizes) == 0:
            empty = BadDataError(f"the shards {shard_specs(cfg.shards)} hold no samples")
            empty.rank_zero_only = True  # every rank counted the same shards
            raise empty
        self.dataset = BrushDataset(cfg, self.shards, self.sizes)
        self._gather = gather or _default_gather
        self.counters: collections.Counter = collections.Counter()
        self.epoch = 0
        self._base: list[Segment] | None = None  # the epoch's remaining samples after a layout change
        self._finished = False  # every batch of the current epoch has been handed out
        # Batches of the current epoch handed out under another layout before a resume (Lightning counts them in
        # its batch index; they are not in this run's plan): len() and the positions count them too.
        self._offset = 0
        self._reset_progress()
        self._pending: dict | None = None  # this rank's progress to resume with

    # ---------------------------------------------------------------- plan

    @property
    def fingerprint(self) -> str:
        text = "\n".join(f"{s.rsplit('/', 1)[-1]}:{n}" for s, n in zip(self.shards, self.sizes))
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def _plan(self) -> list[list[Segment]]:
        base = self._base if self._base is not None else epoch_segments(self.sizes, self.cfg.seed, self.epoch, self.cfg.shuffle_shards)
        return split_segments(base, self.world_size * self.workers)

    def _rank_slots(self) -> range:
        return range(self.rank * self.workers, (self.rank + 1) * self.workers)

    def batches_per_rank(self, plan: list[list[Segment]] | None = None) -> int:
        plan = plan if plan is not None else self._plan()
        b = self.cfg.batch_size
        per_rank = [
            sum(-(-sum(s.size for s in plan[slot]) // b) for slot in range(r * self.workers, (r + 1) * self.workers))
            for r in range(self.world_size)
        ]
        return max(per_rank)

    def __len__(self) -> int:
        return self._offset + self.batches_per_rank()

    # ------------------------------------------------------------ iterate

    def _reset_progress(self) -> None:
        self.progress = {"slots": {}, "last_slot": None, "yielded": 0, "pads": 0, "total": None}
        self._snapshots: collections.OrderedDict = collections.OrderedDict()

    def _snapshot(self) -> None:
        snap = {"slots": {k: dict(v) for k, v in self.progress["slots"].items()},
                "last_slot": self.progress["last_slot"], "yielded": self.progress["yielded"],
                "pads": self.progress["pads"], "total": self.progress["total"], "counters": dict(self.counters)}
        self._snapshots[self.progress["yielded"]] = snap
        while len(self._snapshots) > 16:
            self._snapshots.popitem(last=False)

    def _check_bad_fraction(self, counters: collections.Counter | None = None, where: str = "") -> None:
        counters = self.counters if counters is None else counters
        bad = sum(v for k, v in counters.items() if k.startswith("bad/"))
        seen = bad + counters["good"]
        if seen >= self.cfg.bad_check_after and bad / seen > self.cfg.max_bad_fraction:
            by_reason = {k[4:]: v for k, v in counters.items() if k.startswith("bad/") and v}
            raise BadDataError(
                f"{bad} of {seen} records {where or f'on rank {self.rank}'} were bad ({bad / seen:.1%}), above "
                f"data.max_bad_fraction={self.cfg.max_bad_fraction}: {by_reason}. The data is wrong, not noisy: "
                f"check it with `brushtrain data validate` (or raise the ceiling)."
            )

    def _check_any_readable(self, counters: collections.Counter | None = None, rank: int | None = None) -> None:
        """Not one good record on this rank, ever, and unreadable shards: the data cannot be reached."""
        counters = self.counters if counters is None else counters
        unreadable = counters["bad/unreadable_shard"] + counters["bad/truncated_tar"]
        if counters["good"] == 0 and unreadable:
            tries = (f", each tried {self.cfg.shard_retries + 1} time(s)" if any(is_url(s) for s in self.shards)
                     else "")  # local files are read once
            raise BadDataError(
                f"rank {self.rank if rank is None else rank} could not read any of its shards ({unreadable} "
                f"unreadable or cut off{tries}); see the warnings above for each shard, and check them with "
                f"`brushtrain data validate`")

    def _joint_checks(self, batch: int, total: int, exhausted: bool) -> None:
        """Under several ranks, both checks look at every rank's counts, at the same batches on every rank (each
        ``_JOINT_CHECK_EVERY``-th and the epoch's last): the ranks stop together, with one message. Checked alone,
        one rank stopped while the others waited for it in the next collective; and a bad shard that happened to
        open one rank's range stopped a run whose data were under the ceiling."""
        if batch % _JOINT_CHECK_EVERY and batch < total:
            return
        ranks = self._gather({"rank": self.rank, "counters": dict(self.counters), "exhausted": exhausted,
                              "total": total})
        summed: collections.Counter = collections.Counter()
        for info in ranks:
            summed.update(info["counters"])
        try:
            if len({info["total"] for info in ranks}) > 1:  # the next gathers would pair up wrongly, then hang
                raise BadDataError(
                    "the ranks planned epochs of different lengths ("
                    + ", ".join(f"rank {info['rank']}: {info['total']} batches" for info in ranks)
                    + "): they counted the shards' records differently (a remote shard that could not be read while "
                    "counting?). Ship a sizes.json beside the shards (`brushtrain data index`) or data.sizes_file.")
            self._check_bad_fraction(summed, f"on all {len(ranks)} ranks" if len(ranks) > 1 else "")
            for info in ranks:
                if info["exhausted"]:
                    self._check_any_readable(collections.Counter(info["counters"]), info["rank"])
        except BadDataError as exc:
            exc.rank_zero_only = len(ranks) > 1  # every rank raises it, at this batch
            raise

    def _advance_epoch(self) -> None:
        self.epoch += 1
        self._base = None
        self._offset = 0
        self._finished = False
        self._reset_progress()

    def __iter__(self) -> Iterator[dict]:
        # A trainer that knows len() stops after the last batch without exhausting us: the
        # next iter() starts the next epoch. An iteration abandoned mid-epoch continues.
        if self._finished:
            self._advance_epoch()
        resume = self._pending
        if resume is None and self.progress["yielded"]:
            resume = self._snapshots[self.progress["yielded"]]
        self._pending = None
        plan = self._plan()
        total = self.batches_per_rank(plan)
        self._reset_progress()
        if resume:
            self.progress.update({k: resume[k] for k in ("slots", "last_slot", "yielded", "pads")})
            self.progress["slots"] = {int(k): dict(v) for k, v in resume["slots"].items()}
        self.progress["total"] = total
        slots = self._rank_slots()
        rotation = 0 if self.progress["last_slot"] is None else (self.progress["last_slot"] - slots[0] + 1) % self.workers
        self.dataset.job = _Job(
            epoch=self.epoch, rank=self.rank, workers=self.workers,
            segments={slot: [] if self.progress["slots"].get(slot, {}).get("done") else plan[slot] for slot in slots},
            skip={slot: 0 if self.progress["slots"].get(slot, {}).get("done") else
                  self.progress["slots"].get(slot, {}).get("emitted", 0) for slot in slots},
            rotation=rotation,
        )
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.cfg.num_workers,
            worker_init_fn=(functools.partial(_worker_init, torch.multiprocessing.get_sharing_strategy())
                            if self.cfg.num_workers else None),
            multiprocessing_context=_worker_context(self.cfg.worker_start) if self.cfg.num_workers else None,
            prefetch_factor=self.cfg.prefetch_factor if self.cfg.num_workers else None,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
        )
        self._snapshot()
        template = None
        with _job_signals_blocked():  # the workers it starts (by fork or spawn) are born blocking the job signals
            batches = iter(loader)
        try:
            for item in batches:
                meta = item.pop("__meta__")
                slot = meta["slot"]
                state = self.progress["slots"].setdefault(slot, {"emitted": 0, "read": 0})
                state["emitted"] = max(state["emitted"], meta["emitted"])
                state["read"] = max(state["read"], meta["read"])
                self.progress["last_slot"] = slot
                for reason, n in meta["bad"].items():
                    self.counters[f"bad/{reason}"] += n
                if meta["marker"]:
                    state["done"] = True
                    continue
                self.counters["good"] += int((item["weight"] > 0).sum())
                if self.world_size == 1:
                    self._check_bad_fraction()
                else:
                    self._joint_checks(self.progress["yielded"] + 1, total, exhausted=False)
                self.progress["yielded"] += 1
                self._finished = self.progress["yielded"] >= total
                self._snapshot()
                template = item
                yield item
        finally:
            # Workers ignore SIGTERM (the job signals, above): an iteration that ends in an exception (a worker's,
            # BadDataError) must stop them itself, or the interpreter's exit, which terminates daemon workers by
            # SIGTERM and then joins them, waits forever while the traceback still holds this iterator.
            _shutdown(batches)
        if self.world_size == 1:
            self._check_any_readable()
        while self.progress["yielded"] < total:
            if self.world_size > 1:
                self._joint_checks(self.progress["yielded"] + 1, total, exhausted=True)
            self.progress["yielded"] += 1
            self.progress["pads"] += 1
            self.counters["pad_batches"] += 1
            self._finished = self.progress["yielded"] >= total
            self._snapshot()
            yield pad_batch(template, self.cfg.resolution, self.cfg.batch_size)
        self._finished = True

    # -------------------------------------------------------------- state

    def position(self, batches_done: int | None = None) -> dict:
        """The stream position of every rank (collective under torch.distributed: call on all ranks).

        Deliberately not named ``state_dict``: Lightning would save it on its own,
        one fetched-ahead batch too late; :class:`data.datamodule.BrushDataModule`
        saves it with the trainer's count of finished batches instead.

        ``batches_done``: how many batches of this epoch the trainer has finished.
        Trainers that fetch ahead (Lightning does) pass it, so a batch fetched but
        not yet trained on is not counted as consumed.
        """
        if batches_done is not None:
            batches_done -= self._offset  # Lightning's index counts the batches handed out before a layout change
        if batches_done is None or batches_done not in self._snapshots:
            if batches_done is not None and batches_done != self.progress["yielded"]:
                log.warning("no data position recorded after batch %d; saving the latest (%d)",
                            batches_done, self.progress["yielded"])
            snap = self._snapshots.get(self.progress["yielded"]) or {
                **self.progress, "counters": dict(self.counters)}
        else:
            snap = self._snapshots[batches_done]
        epoch, base = self.epoch, self._base
        if snap.get("total") is not None and snap["yielded"] >= snap["total"]:
            # The epoch is complete (the same on every rank: all yield `total` batches): next one.
            snap = {"slots": {}, "last_slot": None, "yielded": 0, "pads": 0, "total": None, "counters": snap["counters"]}
            epoch, base = epoch + 1, None
        mine = {"rank": self.rank, **snap}
        ranks = self._gather(mine)
        return {
            "version": STATE_VERSION,
            "epoch": epoch,
            "seed": self.cfg.seed,
            "fingerprint": self.fingerprint,
            "layout": {"world_size": self.world_size, "workers": self.workers, "batch_size": self.cfg.batch_size},
            "offset": 0 if base is None else self._offset,  # batches of this epoch handed out under earlier layouts
            "base": None if base is None else [[s.shard, s.start, s.end] for s in base],
            "ranks": {int(r["rank"]): r for r in ranks},
            "jpeg_decoder": jpeg_decoder(),  # a resume with the other one continues validly, not bit for bit
        }

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`position` (applies at the next ``iter``)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} is not {STATE_VERSION}")
        self.epoch = int(state["epoch"])
        saved = state.get("jpeg_decoder")
        if saved is not None and saved != jpeg_decoder():
            log.warning("the checkpoint's stream decoded JPEGs with %s, this process with %s: the stream continues "
                        "where it stopped, with the same pixels only where OpenCV is built on libjpeg-turbo (pip's "
                        "wheels are)", saved, jpeg_decoder())
        if state["fingerprint"] != self.fingerprint or state["seed"] != self.cfg.seed:
            log.warning("the shard set or seed changed since the checkpoint: starting epoch %d from its beginning", self.epoch)
            self._base, self._pending, self._offset = None, None, 0
            return
        ranks = {int(k): v for k, v in state["ranks"].items()}
        self._finished = False
        self._reset_progress()
        self._base = None if state["base"] is None else [Segment(*s) for s in state["base"]]
        layout = state["layout"]
        self._offset = int(state.get("offset", 0))
        # A checkpoint from before the batch size was recorded had this run's (a change then went unnoticed).
        layout.setdefault("batch_size", self.cfg.batch_size)
        if (layout["world_size"], layout["workers"], layout["batch_size"]) == (self.world_size, self.workers,
                                                                               self.cfg.batch_size):
            mine = ranks[self.rank]
            self._pending = mine
            self.counters = collections.Counter(mine.get("counters", {}))
            return
        # Layout changed: continue the epoch with what no old worker had read.
        old_plan = split_segments(
            self._base if self._base is not None else epoch_segments(self.sizes, self.cfg.seed, self.epoch, self.cfg.shuffle_shards),
            layout["world_size"] * layout["workers"],
        )
        read = {int(slot): s["read"] for r in ranks.values() for slot, s in r["slots"].items()}
        remaining: list[Segment] = []
        for slot, segments in enumerate(old_plan):
            skip = read.get(slot, 0)
            for seg in segments:
                take = min(skip, seg.size)
                skip -= take
                if seg.start + take < seg.end:
                    remaining.append(Segment(seg.shard, seg.start + take, seg.end))
        self._base = remaining
        self._pending = None
        self._offset += max(int(r.get("yielded", 0)) for r in ranks.values())
        log.warning(
            "data layout changed from %s rank(s) x %s worker(s), batches of %s, to %s x %s, batches of %s: continuing "
            "epoch %d with the %d samples no old worker had read",
            layout["world_size"], layout["workers"], layout["batch_size"], self.world_size, self.workers,
            self.cfg.batch_size, self.epoch, sum(s.size for s in remaining),
        )
        if self.rank in ranks:
            self.counters = collections.Counter(ranks[self.rank].get("counters", {}))
