"""Replay scenario: ``run_replay`` over the cached trace next to a bare read+parse loop.

* **Bare loop** (the ceiling of any Python consumer of this JSON): read the file line by
  line and ``orjson.loads`` each line; nothing else. Best of two runs (the second has a
  warm page cache).
* **Replay**: :func:`storage.replay.run_replay` (what ``metering replay`` runs) with
  ``--until`` at the trace's end and daily periods, writing the Parquet dataset to a
  temporary directory. Timed wall clock, in-process, best of two runs.
* **Breakdown** (not a target): replay's front end alone (read blocks, hash, split,
  ``decode_batch``), so that the engine's and the writer's share can be read off.
* **Profile** (when a target is missed): ``metering replay`` in a subprocess, sampled by
  py-spy for a few seconds after its start-up.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import orjson

from bench.common import PYTHON, Results, Row, log, pct
from bench.profile import record_command
from metering.eventtime import iso
from metering.simulate.cloud import SimConfig
from storage.replay import ReplayOptions, ReplaySummary, block_records, read_blocks, run_replay


def bare_loop(path: Path) -> tuple[int, float]:
    """Read every line and parse it with orjson: (records, seconds)."""
    t0 = time.perf_counter()
    n = 0
    loads, error = orjson.loads, orjson.JSONDecodeError
    with path.open("rb") as fh:
        for line in fh:
            try:  # noqa: SIM105 (try/except is cheaper than suppress() in a hot loop)
                loads(line)
            except error:
                pass
            n += 1
    return n, time.perf_counter() - t0


def read_and_decode(path: Path) -> tuple[int, float]:
    """Replay's front end alone: read blocks (hashed), split, decode every record with
    ``decode_batch`` (no engine, no writing): (records, seconds)."""
    import hashlib

    from metering.decode import decode_batch

    t0 = time.perf_counter()
    n = 0
    counters = ReplaySummary()
    for block in read_blocks([str(path)], hashlib.blake2b(digest_size=16)):
        raws, _ = block_records(block, counters)
        n += len(decode_batch(raws, now_ms=None))
    return n, time.perf_counter() - t0


def replay(path: Path, cfg: SimConfig, period: str) -> tuple[int, int, float]:
    """``run_replay`` over ``path``: (records, intervals, seconds)."""
    out = Path(tempfile.mkdtemp(prefix="metering-bench-"))
    try:
        t0 = time.perf_counter()
        summary = run_replay(ReplayOptions(inputs=[str(path)], output=out,
                                           until_ms=cfg.until_ms, period=period))
        seconds = time.perf_counter() - t0
        intervals = sum(summary.as_dict()["intervals_by_usage_type"].values())
        return summary.records, intervals, seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run(path: Path, cfg: SimConfig, results: Results, work: Path, *,
        target_rate: float = 200_000.0, target_share: float = 0.25,
        profile_s: float = 0.0) -> None:
    """Measure; add the rows, and a py-spy profile when a target is missed."""
    n_bare, t_bare = min((bare_loop(path) for _ in range(2)), key=lambda r: r[1])
    bare_rate = n_bare / t_bare
    results.rows.append(Row("replay", "bare read + orjson.loads", n_bare, t_bare,
                            ratio="100.0 %", notes="ceiling; best of 2"))
    log(f"replay: bare loop {bare_rate:,.0f} records/s")
    n, intervals, secs = min((replay(path, cfg, "day") for _ in range(2)),
                             key=lambda r: r[2])
    rate = n / secs
    results.rows.append(Row("replay", "`metering replay --period day`", n, secs,
                            ratio=pct(rate, bare_rate),
                            notes=f"{intervals:,} intervals; best of 2"))
    results.metrics.update(bare_rate=bare_rate, replay_rate=rate)
    log(f"replay: {rate:,.0f} records/s ({intervals:,} intervals)")
    n_dec, t_dec = min((read_and_decode(path) for _ in range(2)), key=lambda r: r[1])
    results.rows.append(Row("replay", "breakdown: read + decode only (no engine, no Parquet)",
                            n_dec, t_dec, ratio=pct(n_dec / t_dec, bare_rate),
                            notes="replay's front end; not a target; best of 2"))
    log(f"replay: read + decode alone {n_dec / t_dec:,.0f} records/s")
    if profile_s > 0 and (rate < target_rate or rate < target_share * bare_rate):
        out = work / "replay-profile"
        prof = record_command(
            [PYTHON, "-m", "agents", "replay", str(path), "--output", str(out), "--until",
             iso(cfg.until_ms), "--period", "day", "--no-progress"],
            work / "replay.pyspy.txt", timeout_s=max(120.0, 10 * secs))
        shutil.rmtree(out, ignore_errors=True)
        results.hotspots["replay (py-spy over a whole `metering replay --period day` run)"] = \
            prof.markdown("metering replay")
