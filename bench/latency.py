"""Latency scenario: the worker at steady live rates, p50/p99 from its own histogram.

A fresh worker (own group, topics and data dir, default settings) runs on an empty
4-partition input topic. Once ``/readyz`` answers 200 (partitions assigned, lag measured)
and after an unmeasured 10 s warm-up at the lowest rate (caught up before going on), each
step runs ``metering simulate --to-kafka ... --rate R --duration D`` (a simulated
cloud paced at R records/s whose event times and Kafka timestamps are "now"; each step
uses another seed, so it is a new cloud).

Latency of an interval closed by an event (a ``final`` row; pieces cut at period
boundaries wait for the period by design and are left out) = the Kafka timestamp of the
interval's record on the usage topic (CreateTime: when the worker's producer appended it)
minus the Kafka timestamp of the input record that closed it (CreateTime set by the
simulator when it produced the record; one clock, this machine). The input record is found
through the row's lineage (``source_topic``/``source_partition``/``source_offset`` name
the input record; see :func:`lineage_latencies`). The topics are read after the last
step; an interval counts for the step during which its closing input record was produced.
p50/p99 are exact (nearest rank) over those intervals.

As a cross-check, ``/metrics`` is scraped before and after each step and the worker's own
histogram ``metering_processing_latency_seconds`` (same definition, measured inside the
worker; buckets 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900 s) gives p50/p99 from
the bucket deltas with linear interpolation inside a bucket (as Prometheus'
``histogram_quantile``), only as fine as the buckets.

A step *keeps up* when, as the producer stops, the worker's committed input offsets are at
most 3 s of input (3 x rate records; offsets are committed every second, and each of the
two hops batches for up to 0.5 s) behind the end offsets, and reach them within 10 s; the
"after" scrape is taken once caught up (or 10 s after the step). For a step that does not
keep up, the records/s the worker committed during the step and the backlog are what
count: its latency only measures the growing queue (reported, marked as such). The notes
also give the *drift*: the median latency of the intervals closed in the last third of the
step minus that of the first third (a worker that keeps up has no drift; one that falls
behind gains about a third of the step length).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from agents.kafkaclient import client_options
from bench.common import PYTHON, Child, Kafka, Results, Row, behind, children, http_get, log
from bench.streaming import POLL_S, BenchError, worker, worker_env

HIST = "metering_processing_latency_seconds"
_BUCKET = re.compile(rf'^{HIST}_bucket\{{le="([^"]+)"\}} ([0-9.e+]+)$', re.M)
KEEP_UP_S = 10.0
"""Seconds after a step within which the backlog must be gone for the step to keep up."""
BACKLOG_S = 3.0
"""Most input (in seconds of the offered rate) that may be uncommitted as a step ends."""


def buckets(metrics: bytes) -> dict[float, float]:
    """Cumulative bucket counts of the latency histogram: upper bound (s) -> count."""
    return {math.inf if le == "+Inf" else float(le): float(v)
            for le, v in _BUCKET.findall(metrics.decode("utf-8", "replace"))}


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The ``q`` quantile (seconds) of the observations between two scrapes.

    Linear interpolation inside the bucket that holds it (lower bound of the first bucket:
    0); ``math.inf`` when it lies in the +Inf bucket; None without observations.
    """
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, cum in zip(bounds, counts, strict=True):
        if cum >= rank:
            if math.isinf(bound):
                return math.inf
            inside = cum - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cum
    return math.inf


def nearest_rank(q: float, ordered: list[float]) -> float | None:
    """The ``q`` quantile of sorted values (nearest rank); None when empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def _read_all(bootstrap: str, topic: str, ends: dict[int, int],
                    handle: Callable[[Any], None]) -> None:
    """Call ``handle(message)`` for every record of ``topic`` before ``ends``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not tps:
            return
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp: ends[tp.partition] for tp in tps}
        deadline = time.monotonic() + 300
        while left:
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic} took more than 300 s")
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
            for tp, msgs in batch.items():
                for msg in msgs:
                    if msg.offset < left.get(tp, 0):
                        handle(msg)
                if msgs and msgs[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
    finally:
        await consumer.stop()


async def lineage_latencies(bootstrap: str, usage_topic: str, input_topic: str,
                            events_topic: str) -> tuple[list[tuple[int, float]], int]:
    """(input record timestamp UTC ms, latency s) of every event-closed interval so far,
    and the number of final rows whose closing record was not found.

    A row's lineage names the input record that closed it (``source_topic`` = the input
    topic), or, should the worker ever name its internal record instead, the events-topic
    record, which carries the input record's timestamp (``Routed.record_ms``).
    """
    from metering.wire import Routed, WireError, decode_wire

    async with Kafka(bootstrap) as kafka:
        ends = {t: await kafka.end_offsets(t) for t in (usage_topic, input_topic)}
        # A one-hop worker may have no internal events topic at all.
        ends[events_topic] = (await kafka.end_offsets(events_topic)
                              if await kafka.exists(events_topic) else {})
    wanted: dict[str, dict[tuple[int, int], list[int]]] = {input_topic: {}, events_topic: {}}

    def on_usage(msg: Any) -> None:
        row = orjson.loads(msg.value)
        by_key = wanted.get(row.get("source_topic"))
        if row.get("final") and by_key is not None:
            key = (int(row["source_partition"]), int(row["source_offset"]))
            by_key.setdefault(key, []).append(int(msg.timestamp))

    await _read_all(bootstrap, usage_topic, ends[usage_topic], on_usage)
    out: list[tuple[int, float]] = []
    found = 0

    def on_input(msg: Any) -> None:
        nonlocal found
        appended = wanted[input_topic].get((msg.partition, msg.offset))
        if appended is not None:
            found += len(appended)
            out.extend((msg.timestamp, (ts - msg.timestamp) / 1000) for ts in appended)

    def on_event(msg: Any) -> None:
        nonlocal found
        appended = wanted[events_topic].get((msg.partition, msg.offset))
        if appended is None:
            return
        try:
            item = decode_wire(msg.value)
        except WireError:
            return
        if isinstance(item, Routed) and item.record_ms is not None:
            found += len(appended)
            out.extend((item.record_ms, (ts - item.record_ms) / 1000) for ts in appended)

    if wanted[input_topic]:
        await _read_all(bootstrap, input_topic, ends[input_topic], on_input)
    if wanted[events_topic]:
        await _read_all(bootstrap, events_topic, ends[events_topic], on_event)
    total = sum(len(v) for by_key in wanted.values() for v in by_key.values())
    return out, total - found


@dataclass
class Step:
    """What one rate step measured."""

    rate: float
    wall_start_ms: int
    wall_end_ms: int
    """UTC ms bounds of the step's production (simulator start to exit)."""
    produced: int
    produce_s: float
    committed: int
    """Input records the worker committed during the step."""
    backlog: int
    """Input records not committed when the producer stopped."""
    kept_up: bool
    intervals: int
    """Event-closed intervals observed by the worker's histogram over the step."""
    p50: float | None
    p99: float | None
    """From the worker's histogram (bucket interpolation), seconds."""
    exact: list[float] | None = None
    """Lineage latencies (seconds, sorted) of the intervals closed by this step's records."""
    drift: float | None = None
    """Median latency of the step's last third minus its first third (seconds)."""


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if math.isinf(seconds):
        return "> 900 s"
    return f"{seconds:.2f} s"


def run(bootstrap: str, work: Path, results: Results, rates: list[float], step_s: float,
        *, accounts: int = 3000, days: int = 30, partitions: int = 4) -> None:
    """Run one worker through ``rates`` (records/s), ``step_s`` seconds each; add rows."""
    from agents.localkafka import free_port

    stamp = time.strftime("%H%M%S")
    topic, app_id, port = f"bench-live-{stamp}", f"bench-live-{stamp}", free_port()

    async def create() -> None:
        async with Kafka(bootstrap) as kafka:
            await kafka.create_topic(topic, partitions)

    asyncio.run(create())
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    with children() as procs:
        child = worker(worker_env(bootstrap, app_id, topic, work / "live-data", port,
                                  partitions), work / "live-worker.log")
        procs.append(child.start())
        deadline = time.monotonic() + 180
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            if not child.alive() or time.monotonic() > deadline:
                raise BenchError(f"live worker not ready within 180 s:\n{child.tail()}")
            time.sleep(POLL_S)  # poll with a deadline
        log(f"latency: worker ready (pid {child.pid}, {time.monotonic() - child.started:.1f} s)")
        _warm_up(bootstrap, work, procs, child, app_id, topic, min(rates), accounts, days)
        steps: list[Step] = []
        for i, rate in enumerate(rates):
            steps.append(_step(bootstrap, work, procs, child, app_id, topic, metrics_url,
                               rate, step_s, seed=11 + i, accounts=accounts, days=days,
                               last=i == len(rates) - 1))
        log("latency: reading the usage and events topics for lineage latencies ...")
        pairs, missing = asyncio.run(lineage_latencies(bootstrap, f"{app_id}-usage", topic,
                                                       f"{app_id}-events"))
    for st in steps:
        mine = sorted((rec, lat) for rec, lat in pairs
                      if st.wall_start_ms <= rec <= st.wall_end_ms)
        st.exact = sorted(lat for _, lat in mine)
        third = (st.wall_end_ms - st.wall_start_ms) / 3
        first = sorted(lat for rec, lat in mine if rec < st.wall_start_ms + third)
        last = sorted(lat for rec, lat in mine if rec >= st.wall_end_ms - third)
        m1, m3 = nearest_rank(0.5, first), nearest_rank(0.5, last)
        st.drift = None if m1 is None or m3 is None else m3 - m1
    if missing:
        results.notes.append(f"Latency: {missing:,} event-closed intervals whose closing "
                             f"record was not found on the events topic were left out.")
    for s in steps:
        offered = s.produced / s.produce_s
        exact = s.exact or []
        drift = "n/a" if s.drift is None else f"{s.drift:+.1f} s"
        seen = (f"p50 {fmt_s(nearest_rank(0.5, exact))}, p99 "
                f"{fmt_s(nearest_rank(0.99, exact))} over {len(exact):,} event-closed "
                f"intervals, drift {drift}; worker histogram: p50 {fmt_s(s.p50)}, p99 "
                f"{fmt_s(s.p99)}, {s.intervals:,} observations")
        if s.kept_up:
            notes = f"kept up; {seen}"
        else:
            notes = (f"**falls behind**: {s.backlog:,} records behind when the producer "
                     f"stopped; the latency below measures the queue and grows with the "
                     f"step length: {seen}")
        results.rows.append(Row(
            "latency", f"live at {s.rate:,.0f} records/s (offered {offered:,.0f}/s)",
            s.committed, s.produce_s, ratio=f"{100 * s.committed / max(1, s.produced):.0f} % "
            "of offered", notes=notes))
        results.metrics[f"latency_{s.rate:.0f}_kept_up"] = float(s.kept_up)
        p50, p99 = nearest_rank(0.5, exact), nearest_rank(0.99, exact)
        if p50 is not None and p99 is not None:
            results.metrics[f"latency_{s.rate:.0f}_p50"] = p50
            results.metrics[f"latency_{s.rate:.0f}_p99"] = p99
        results.metrics[f"latency_{s.rate:.0f}_processed_rate"] = s.committed / s.produce_s
        results.metrics[f"latency_{s.rate:.0f}_offered"] = offered
    results.notes.append(
        f"Latency steps: {', '.join(f'{r:,.0f}' for r in rates)} records/s for {step_s:.0f} s "
        f"each, one worker, producer `metering simulate --accounts {accounts} --days {days} "
        f"--rate R --duration {step_s:.0f}` on the same 2 cores. The 'records' column counts "
        f"the input records the worker committed during the step.")


def _warm_up(bootstrap: str, work: Path, procs: list[Child], worker_child: Child, group: str,
             topic: str, rate: float, accounts: int, days: int, seconds: float = 10.0) -> None:
    """Not measured: ``seconds`` of input at ``rate`` (its own seed), then wait until the
    worker has committed all of it (deadline 120 s), so the first step starts warm."""
    log(f"latency: warm-up, {seconds:.0f} s at {rate:,.0f} records/s (not measured) ...")
    sim = Child([PYTHON, "-m", "agents", "simulate", "--to-kafka", bootstrap, "--topic", topic,
                 "--rate", str(rate), "--duration", str(seconds), "--accounts", str(accounts),
                 "--days", str(days), "--seed", "10", "--no-progress", "--json"],
                dict(worker_child.env), work / "simulate-warm-up.json")
    procs.append(sim.start())
    assert sim.process is not None
    try:
        sim.process.wait(timeout=seconds + 120)
    except Exception as exc:
        raise BenchError(f"warm-up simulate did not finish in time:\n{sim.tail()}") from exc

    async def caught_up() -> bool:
        async with Kafka(bootstrap) as kafka:
            ends = await kafka.end_offsets(topic)
            return behind(ends, await kafka.committed(group, topic)) == 0

    deadline = time.monotonic() + 120
    while not asyncio.run(caught_up()):
        if not worker_child.alive() or time.monotonic() > deadline:
            raise BenchError(f"live worker did not catch up after the warm-up:\n"
                             f"{worker_child.tail()}")
        time.sleep(POLL_S)  # poll with a deadline


def _step(bootstrap: str, work: Path, procs: list[Child], worker_child: Child, group: str,
          topic: str, metrics_url: str, rate: float, step_s: float, *, seed: int,
          accounts: int, days: int, last: bool) -> Step:
    async def offsets() -> tuple[int, int]:
        async with Kafka(bootstrap) as kafka:
            ends = await kafka.end_offsets(topic)
            committed = await kafka.committed(group, topic)
        return sum(ends.values()), sum(committed.values())

    status, body = http_get(metrics_url)
    if status != 200:
        raise BenchError(f"cannot scrape {metrics_url} (status {status})")
    before = buckets(body)
    _, c0 = asyncio.run(offsets())
    log(f"latency: producing at {rate:,.0f} records/s for {step_s:.0f} s ...")
    wall_start = int(time.time() * 1000)
    out = work / f"simulate-{rate:.0f}.json"
    sim = Child([PYTHON, "-m", "agents", "simulate", "--to-kafka", bootstrap, "--topic", topic,
                 "--rate", str(rate), "--duration", str(step_s), "--accounts", str(accounts),
                 "--days", str(days), "--seed", str(seed), "--no-progress", "--json"],
                dict(worker_child.env), out)
    procs.append(sim.start())
    assert sim.process is not None
    try:
        sim.process.wait(timeout=step_s + 120)
    except Exception as exc:
        raise BenchError(f"simulate did not finish in time:\n{sim.tail()}") from exc
    t_end = time.monotonic()
    wall_end = int(time.time() * 1000)
    if sim.process.returncode != 0:
        raise BenchError(f"simulate failed ({sim.process.returncode}):\n{sim.tail()}")
    lines = [ln for ln in out.read_bytes().splitlines() if ln.startswith(b"{")]
    if not lines:
        raise BenchError(f"simulate printed no summary:\n{sim.tail()}")
    summary = orjson.loads(lines[-1])
    produced, produce_s = int(summary["records"]), float(summary["seconds"])
    ends, c1 = asyncio.run(offsets())
    backlog = max(0, ends - c1)
    kept_up = False
    deadline = t_end + (KEEP_UP_S if last else max(KEEP_UP_S, 300.0))
    while time.monotonic() < deadline:
        if not worker_child.alive():
            raise BenchError(f"live worker exited:\n{worker_child.tail()}")
        ends, committed = asyncio.run(offsets())
        if committed >= ends:
            kept_up = (time.monotonic() <= t_end + KEEP_UP_S
                       and backlog <= BACKLOG_S * rate)
            break
        if last and time.monotonic() > t_end + KEEP_UP_S:
            break
        time.sleep(POLL_S)  # poll with a deadline
    status, body = http_get(metrics_url)
    if status != 200:
        raise BenchError(f"cannot scrape {metrics_url} (status {status})")
    after = buckets(body)
    count = int(after.get(math.inf, 0.0) - before.get(math.inf, 0.0))
    step = Step(rate, wall_start, wall_end, produced, produce_s, c1 - c0, backlog, kept_up, count,
                quantile(0.5, before, after), quantile(0.99, before, after))
    log(f"latency: {rate:,.0f}/s offered {produced / produce_s:,.0f}/s, worker committed "
        f"{step.committed / produce_s:,.0f}/s, backlog {backlog:,}, kept up {kept_up}, "
        f"histogram p50 {fmt_s(step.p50)} p99 {fmt_s(step.p99)} ({count:,} observations)")
    return step
