"""Remote shards (URLs, pipe: commands) that fail are retried with backoff, then reported, never a traceback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import data.streams as streams
from data.brushdata import BadDataError, BrushDataLoader, DataConfig, MaskConfig
from data.records import BadRecord, RawRecord, read_shard
from data.streams import ShardReadError, ShardStream
from data.synth import write_synthetic_shards
from train.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(folder, 12, 6, seed=3, min_size=32, max_size=48)
    return folder


def _flaky_command(tmp_path: Path, fail_first: int, cut_at: int | None = None) -> str:
    """A pipe: command that fails its first ``fail_first`` runs (after ``cut_at`` bytes, if given), then works."""
    script = tmp_path / "flaky.sh"
    count = tmp_path / "runs"
    part = f'head -c {cut_at} "$1"' if cut_at else "true"
    script.write_text(f"""#!/bin/sh
n=$(cat {count} 2>/dev/null || echo 0); echo $((n + 1)) > {count}
if [ "$n" -lt {fail_first} ]; then {part}; exit 7; fi
cat "$1"
""")
    script.chmod(0o755)
    return str(script)


class _Flaky:
    """An opener whose streams fail: the first ``fail_open`` opens raise, the next stream breaks after ``break_at``."""

    def __init__(self, data: bytes, fail_open: int = 0, break_at: int | None = None):
        self.data, self.fail_open, self.break_at, self.opens = data, fail_open, break_at, 0

    def __call__(self, shard):
        self.opens += 1
        if self.opens <= self.fail_open:
            raise ConnectionError(f"connection refused ({self.opens})")
        if self.break_at is not None and self.opens == self.fail_open + 1:
            return _Breaking(self.data, self.break_at)
        return io.BytesIO(self.data)


class _Breaking(io.BytesIO):
    def __init__(self, data: bytes, at: int):
        super().__init__(data)
        self.at = at

    def read(self, n=-1):
        if self.tell() >= self.at:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(n, self.at - self.tell()) if n and n > 0 else self.at - self.tell())


def test_the_stream_retries_with_backoff_and_continues_where_it_broke(monkeypatch):
    data = os.urandom(300_000)
    sleeps = []
    monkeypatch.setattr(streams.time, "sleep", sleeps.append)
    opener = _Flaky(data, fail_open=2, break_at=123_457)
    stream = ShardStream("https://example.org/a.tar", retries=3, retry_delay=0.5, opener=opener)
    assert io.BufferedReader(stream).read() == data, "the bytes after the break continue exactly"
    assert opener.opens == 4 and sleeps == [0.5, 1.0, 2.0], "two failed opens, one broken stream, doubling waits"

    sleeps.clear()
    with pytest.raises(ShardReadError, match=r"connection refused \(3\) after 3 attempts"):
        ShardStream("pipe:get a.tar", retries=2, retry_delay=0.1, opener=_Flaky(data, fail_open=5))
    assert sleeps == [0.1, 0.2]
    # Local files are not retried: a missing one is missing.
    with pytest.raises(ShardReadError):
        ShardStream("/no/such/shard.tar", retries=5)


def test_a_failing_pipe_command_is_retried_in_the_reader(tmp_path, shards):
    shard = sorted(shards.glob("*.tar"))[0]
    cmd = _flaky_command(tmp_path, fail_first=2, cut_at=5000)  # two runs die after 5 kB, exit 7
    items = list(read_shard(f"pipe:{cmd} {shard}", retries=3, retry_delay=0.01))
    assert [type(i) for i in items] == [RawRecord] * 6
    assert [(i.key, i.members) for i in items] == [(i.key, i.members) for i in read_shard(str(shard))]
    assert int((tmp_path / "runs").read_text()) == 3

    (tmp_path / "runs").unlink()
    bad = list(read_shard(f"pipe:{cmd} {shard}", retries=1, retry_delay=0.01))
    assert len(bad) == 1 and isinstance(bad[0], BadRecord) and bad[0].reason == "unreadable_shard"
    assert bad[0].detail == "the command exited with status 7 after 2 attempts"


def test_validate_and_bench_report_unreachable_shards(tmp_path, shards, capsys):
    good = sorted(shards.glob("*.tar"))[0]
    assert main(["data", "validate", "pipe:exit 3", f"pipe:cat {good}", "--json", "--retries", "2",
                 "--retry-delay", "0.01"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["samples"] == 6 and report["bad"] == {"unreadable_shard": 1}
    assert report["bad_records"][0]["detail"] == "the command exited with status 3 after 3 attempts"
    assert main(["data", "validate", "pipe:exit 3", "--strict", "--retries", "0"]) == 1

    assert main(["data", "bench", "pipe:false", "pipe:exit 4", "--retries", "1", "--retry-delay", "0",
                 "--resolution", "64"]) == 1
    err = capsys.readouterr().err
    assert "brushtrain data: none of the 2 shard(s) could be read (each tried 2 time(s)); first: pipe:false: " \
           "the command exited with status 1 after 2 attempts" in err
    assert "Traceback" not in err


def test_training_stream_retries_and_stops_when_nothing_can_be_read(tmp_path, shards):
    shard = sorted(shards.glob("*.tar"))[0]
    cmd = _flaky_command(tmp_path, fail_first=1)
    cfg = DataConfig(shards=[f"pipe:{cmd} {shard}"], resolution=32, batch_size=3, num_workers=0, shuffle_buffer=1,
                     mask=MaskConfig(), shard_retries=2, shard_retry_delay=0.01)
    loader = BrushDataLoader(cfg)  # counting the samples reads the stream: its first run fails
    assert loader.sizes == [6]
    batches = list(loader)
    assert sum(len(b["key"]) for b in batches) == 6 and loader.counters["good"] == 6

    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"pipe:exit 5": 6}))  # counts known: the readers find out
    cfg = DataConfig(shards=["pipe:exit 5"], sizes_file=str(sizes), resolution=32, batch_size=3, num_workers=0,
                     mask=MaskConfig(), shard_retries=1, shard_retry_delay=0.01)
    with pytest.raises(BadDataError, match=r"rank 0 could not read any of its shards \(1 unreadable or cut off, "
                                           r"each tried 2 time\(s\)\)"):
        list(BrushDataLoader(cfg))


def test_a_run_whose_shards_are_all_unreachable_stops_with_one_message(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", "fit", f"output_dir={out}", "synth.enabled=false", "logging.logger=csv",
           "data.shards=[pipe:exit 1,pipe:exit 2]", "data.shard_retries=1", "data.shard_retry_delay=0.01",
           "samples.enabled=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "brushtrain fit: none of the 2 shard(s) could be read (each tried 2 time(s)); first: pipe:exit 1: " \
           "the command exited with status 1 after 2 attempts" in result.stderr
    assert not (out / "checkpoints").exists()
