"""Scale scenario: the core engine over RocksDB with N open resources (no Kafka, no Faust).

Each size runs in a fresh subprocess (``python -m bench.scale --child N ...``, one JSON line
on stdout) so that peak memory does not carry over. The child builds the state layer of one
worker partition the way the worker stores it, without importing ``agents/`` (so it keeps
measuring the same thing when the worker's internals change): the core
:class:`metering.engine.Engine` with the worker's default policy (hourly UTC periods, 60 s
lateness) over a read-through cache of decoded states (dropped past 200 000 entries, the
worker's ``CACHE_MAX``) on two RocksDB databases (entities, accounts) opened with Faust's
``RocksDBOptions`` and the worker's options (64 MiB block cache, 32 MiB x 2 write
buffers); every batch of 2 000 events goes through ``Engine.apply`` (the batch entry point)
and each state it changed is encoded (:mod:`metering.codec`) and written once, in one
RocksDB ``WriteBatch`` per database. Left out: Faust's table layer and changelog, Kafka,
and decoding (events are built as :class:`metering.events.UsageEvent` values directly).

Phases (instants are UTC ms inside one hour, so no period boundary is crossed until 4):

1. ``ACCOUNT.CREATE`` for N/20 accounts (20 resources per account).
2. **Open**: ``VM.CREATE`` for N distinct resource ids (an open ALLOCATED_VM interval each),
   in batches of 2 000 events, each batch stored before the next (as the worker does).
3. **Timed batch**: ``events`` usage events on resources drawn uniformly at random (seeded);
   each toggles the resource's RUNNING_VM interval (``VM.START`` if stopped, else
   ``VM.STOP``, which closes an interval). Timed: ``Engine.apply`` per batch of 2 000,
   JSON-encoding every emitted interval (``encode_interval(row)``, as the worker does
   before sending) and storing the changed states; building each event (~1 µs) is inside
   the loop. Reported as events/s.
4. **Period cut**: the watermark passes the hour's end; ``Engine.advance(10 000)`` cuts
   the open intervals at the boundary in steps of 10 000 resources, each step's rows
   encoded and its states stored before the next (what a streaming tick does once an
   hour). Reported in seconds and intervals/s.

Memory: peak resident set size of the child (``VmHWM`` from ``/proc/self/status``, bytes;
includes the interpreter, faust/rocksdict imports and RocksDB's memtables and block cache)
before phase 4 (steady processing) and at the end (with the hourly cut), and RSS after
phase 2. RocksDB size: bytes of all files in both database directories after
``flush()`` and a full ``compact_range``. The child checks that every resource is still
known at the end (a state lost between cache and RocksDB would fail the run).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Results, Row, log

T0 = 1_740_787_200_000  # 2025-03-01T00:00:00Z, an hour boundary (UTC ms)
HOUR = 3_600_000
BATCH = 2_000
"""Events per flush, the worker's default ``batch_size``."""
RESOURCES_PER_ACCOUNT = 20
ROCKSDB_OPTIONS: dict[str, Any] = {  # the worker's (agents/pipeline.py ROCKSDB_OPTIONS)
    "block_cache_size": 64 << 20,
    "write_buffer_size": 32 << 20,
    "max_write_buffer_number": 2,
    "max_open_files": 512,
}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


CACHE_MAX = 200_000
"""Decoded states kept between batches (the worker's ``agents.state.CACHE_MAX``)."""
CUT_CHUNK = 10_000
"""Open resources cut per step of a period cut (the worker's ``agents.state.CUT_CHUNK``)."""


class _ReadThrough(MutableMapping[str, Any]):
    """Dict cache over one RocksDB database; decoded on read, encoded by the owner."""

    def __init__(self, db: Any, decode: Any) -> None:
        self.db = db
        self.decode = decode
        self.cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self.cache[key]
        except KeyError:
            raw = self.db.get(key.encode())
            if raw is None:
                raise KeyError(key) from None
            value = self.cache[key] = self.decode(raw)
            return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.cache[key] = value

    def __delitem__(self, key: str) -> None:  # the engine never deletes
        raise NotImplementedError("metering keeps tombstones; states are never deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache)

    def __len__(self) -> int:
        return len(self.cache)


class _Partition:
    """One partition's engine and stores, written the way the worker writes them."""

    def __init__(self, ent_db: Any, acc_db: Any) -> None:
        from metering.codec import decode_account, decode_entity
        from metering.engine import Engine, Policy
        from metering.periods import PeriodGrid, as_period
        from metering.settings import Settings

        s = Settings()
        self.ent_db, self.acc_db = ent_db, acc_db
        self.entities = _ReadThrough(ent_db, decode_entity)
        self.accounts = _ReadThrough(acc_db, decode_account)
        self.engine = Engine(Policy(
            grid=PeriodGrid(as_period(s.period), s.timezone), lateness_ms=s.lateness_ms,
            idle_advance_ms=s.idle_advance_ms, wait_for_inputs=True,
            orphan_close_ttl_ms=s.orphan_close_ttl_ms,
            max_watermark_jump_ms=s.max_watermark_jump_ms), self.entities, self.accounts)
        self.dirty: set[str] = set()
        self.dirty_accounts: set[str] = set()

    def take(self, applied: Any) -> list[Any]:
        """Remember the keys an engine call changed; its rows."""
        self.dirty |= applied.entities
        self.dirty_accounts |= applied.accounts
        rows: list[Any] = applied.rows
        return rows

    def flush(self) -> None:
        """Write every changed state once (one WriteBatch per database)."""
        import rocksdict

        from metering.codec import encode_account, encode_entity

        for db, keys, view, encode in ((self.ent_db, self.dirty, self.entities, encode_entity),
                                       (self.acc_db, self.dirty_accounts, self.accounts,
                                        encode_account)):
            if keys:
                batch = rocksdict.WriteBatch(raw_mode=True)
                for key in keys:
                    batch.put(key.encode(), encode(view.cache[key]))
                db.write(batch)
                keys.clear()
            if len(view.cache) > CACHE_MAX:
                view.cache.clear()


def child(n: int, events: int, workdir: Path, seed: int = 1) -> dict[str, Any]:
    """Run the phases for ``n`` open resources; return the measurements (see module doc)."""
    from faust.stores.rocksdb import RocksDBOptions

    from metering.engine import Record
    from metering.events import AccountCreated, Source, UsageEvent, lane_of
    from metering.intervals import encode_interval

    opts = RocksDBOptions(**ROCKSDB_OPTIONS)
    ent_db = opts.open(workdir / "entities-0.db")
    acc_db = opts.open(workdir / "accounts-0.db")
    pm = _Partition(ent_db, acc_db)
    meter = pm.engine
    lane, wall = lane_of("bench-cs", 0), int(time.time() * 1000)
    # The input topic has one partition (as a tick would say): closed intervals are
    # released, and periods cut, as soon as this lane's watermark passes them.
    meter.report({}, {"bench-cs": 1}, wall)
    dumps = encode_interval
    offset = 0
    batch: list[Any] = []

    def apply() -> int:
        """Apply and store the pending batch; the number of rows it emitted."""
        rows = pm.take(meter.apply(batch))
        for row in rows:
            dumps(row)
        pm.flush()
        batch.clear()
        return len(rows)

    accounts = [f"acct-{i:07d}" for i in range(max(1, n // RESOURCES_PER_ACCOUNT))]
    for i, acct in enumerate(accounts):
        batch.append(Record(AccountCreated(acct, "domain-1", T0 + i % 1000),
                            Source("bench-cs", 0, offset), wall))
        offset += 1
        if len(batch) == BATCH:
            apply()
    apply()
    step = max(1, (HOUR // 2) // max(1, n))
    t0 = time.perf_counter()
    for i in range(n):
        ev = UsageEvent("VM.CREATE", accounts[i % len(accounts)], f"vm-{i:08d}", "zone-1",
                        T0 + 60_000 + i * step // 1000 * 1000)
        batch.append(Record(ev, Source("bench-cs", 0, offset), wall))
        offset += 1
        if len(batch) == BATCH:
            apply()
    apply()
    open_s = time.perf_counter() - t0
    gc.collect()
    rss_open = _status_bytes("VmRSS")

    rng = random.Random(seed)
    running = bytearray(n)
    start_ms = T0 + HOUR // 2 + 60_000
    span = HOUR // 4
    intervals = 0
    t0 = time.perf_counter()
    for j in range(events):
        r = rng.randrange(n)
        kind = "VM.STOP" if running[r] else "VM.START"
        running[r] ^= 1
        ev = UsageEvent(kind, accounts[r % len(accounts)], f"vm-{r:08d}", "zone-1",
                        start_ms + j * span // events)
        batch.append(Record(ev, Source("bench-cs", 0, offset), wall))
        offset += 1
        if len(batch) == BATCH:
            intervals += apply()
    intervals += apply()
    batch_s = time.perf_counter() - t0
    rss_peak_steady = _status_bytes("VmHWM")

    # The watermark passes the hour's end (+ lateness): a tick cuts every open interval,
    # CUT_CHUNK resources per step, each step encoded and stored before the next (as the
    # worker does).
    meter.report({lane: (T0 + HOUR + 3 * 60_000, wall)}, {"bench-cs": 1}, wall)
    t0 = time.perf_counter()
    cut = 0
    while True:
        for row in pm.take(meter.advance(CUT_CHUNK)):
            dumps(row)
            cut += 1
        pm.flush()
        if not meter.cutting:
            break
    cut_s = time.perf_counter() - t0

    for db in (ent_db, acc_db):
        db.flush()
        db.compact_range(None, None)
    db_bytes = sum(f.stat().st_size for f in workdir.rglob("*") if f.is_file())
    stored = sum(1 for i in range(0, n, max(1, n // 1000))
                 if ent_db.get(f"vm-{i:08d}".encode()) is not None)
    expected = len(range(0, n, max(1, n // 1000)))
    if stored != expected:
        raise RuntimeError(f"{expected - stored} of {expected} sampled resources have no "
                           f"stored state: the state layer lost writes")
    return {
        "resources": n, "accounts": len(accounts), "open_s": open_s,
        "open_rate": n / open_s if open_s else 0.0, "events": events, "batch_s": batch_s,
        "batch_rate": events / batch_s if batch_s else 0.0, "batch_intervals": intervals,
        "cut_s": cut_s, "cut_intervals": cut, "rss_after_open": rss_open,
        "rss_peak": _status_bytes("VmHWM"), "rss_peak_before_cut": rss_peak_steady,
        "db_bytes": db_bytes,
        "open_resources": sum(meter.open_counts.values()),
    }


def measure(n: int, events: int, timeout_s: float = 900.0) -> dict[str, Any]:
    """Run :func:`child` for ``n`` resources in a fresh interpreter; its JSON result."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-"))
    try:
        proc = subprocess.run([PYTHON, "-m", "bench.scale", "--child", str(n), "--events",
                               str(events), "--dir", str(workdir)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scale child {n} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(results: Results, sizes: list[int], events: int) -> None:
    """Measure every size (ascending); add one row per size to ``results``."""
    base: float | None = None
    for n in sorted(sizes):
        log(f"scale: {n:,} open resources ...")
        r = measure(n, events)
        base = base or r["batch_rate"]
        mib = 1024 * 1024
        results.rows.append(Row(
            "scale", f"{n:,} open resources: {events:,} random VM.START/STOP", events,
            r["batch_s"], ratio=f"{100 * r['batch_rate'] / base:.0f} % of {min(sizes):,}",
            notes=(f"peak RSS {r['rss_peak_before_cut'] / mib:,.0f} MiB before the hourly cut, "
                   f"{r['rss_peak'] / mib:,.0f} MiB with it (after opening "
                   f"{r['rss_after_open'] / mib:,.0f} MiB); {r['batch_intervals']:,} intervals "
                   f"closed; RocksDB {r['db_bytes'] / 1e6:,.1f}"
                   f" MB; opening {r['open_rate']:,.0f} events/s; hourly cut of all: "
                   f"{r['cut_s']:.1f} s for {r['cut_intervals']:,} intervals")))
        results.metrics[f"scale_{n}_rss_peak"] = r["rss_peak"]
        results.metrics[f"scale_{n}_rss_peak_before_cut"] = r["rss_peak_before_cut"]
        results.metrics[f"scale_{n}_rate"] = r["batch_rate"]
        results.metrics[f"scale_{n}_db_bytes"] = r["db_bytes"]
        log(f"scale: {n:,}: {r['batch_rate']:,.0f} events/s, peak RSS "
            f"{r['rss_peak'] / mib:,.0f} MiB, RocksDB {r['db_bytes'] / 1e6:,.1f} MB")
    results.notes.append(
        f"Scale: one worker partition's engine (`metering.engine.Engine`, batches of 2 000 "
        f"through `Engine.apply`, each changed state written once per batch to two RocksDB "
        f"databases with the worker's options) in a fresh process per size; "
        f"{events:,} timed events per size; no Kafka, no Faust tables, no decoding.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", type=int, required=True, help="open resources N")
    p.add_argument("--events", type=int, default=100_000, help="timed events")
    p.add_argument("--dir", type=Path, required=True, help="RocksDB directory (emptied)")
    args = p.parse_args(argv)
    print(json.dumps(child(args.child, args.events, args.dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
