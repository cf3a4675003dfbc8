"""Streaming scenario: the worker against a raw consumer and a naive Faust agent.

1. **Preload** (not timed): the first ``records`` lines of the cached trace are produced as
   raw bytes to a fresh ``partitions``-partition topic, keyed and timestamped as ``metering
   simulate --to-kafka`` does (see :func:`bench.common.keyed_records`).
2. **Raw consumer** (the ceiling): aiokafka, ``group_id=None``, all partitions assigned,
   from the beginning, ``getmany`` until every partition reaches its end offset; no
   processing. Timed from ``start()`` to the last record, best of two runs.
3. **Worker**: ``python -m agents worker`` in a subprocess (its own app id, data dir and
   topics, default settings otherwise), timed from process start until *caught up*: the
   group's committed offsets on the input topic reach its end offsets, and then its
   committed offsets on the internal events topic reach the end offsets that topic had at
   that moment (every forwarded event metered and its intervals acknowledged on the usage
   topic; later ticks do not count). Polled every 0.5 s with the admin client
   (``list_consumer_group_offsets``), so the time is up to ~0.5 s + one commit interval
   (1 s) late; start-up (interpreter, Faust, group join, ~5-10 s) is included, and also
   reported separately.
4. **Naive agent** (:mod:`bench.naive_app`): ``python -m faust -A bench.naive_app worker``,
   timed the same way on its own group (Faust's default commit interval is 2.8 s).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.kafkaclient import client_options
from bench.common import (
    PYTHON,
    Child,
    Kafka,
    Results,
    Row,
    behind,
    children,
    keyed_records,
    log,
    pct,
    produce,
)
from bench.profile import record

POLL_S = 0.5
"""Seconds between offset polls."""


class BenchError(RuntimeError):
    """A benchmark step failed (a process died or a deadline passed); carries a log tail."""


def worker_env(bootstrap: str, app_id: str, input_topic: str, data_dir: Path, web_port: int,
               partitions: int = 4, **extra: str) -> dict[str, str]:
    """Environment of ``python -m agents worker`` with its own group, topics and data dir.

    Everything else keeps the worker's defaults (hourly periods, batches of 2 000 records
    within 0.5 s, 1 s ticks and commits).
    """
    from agents.localkafka import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env.update(
        METERING_BROKER=bootstrap, METERING_APP_ID=app_id, METERING_INPUT_TOPIC=input_topic,
        METERING_USAGE_TOPIC=f"{app_id}-usage", METERING_EVENTS_TOPIC=f"{app_id}-events",
        METERING_REJECTS_TOPIC=f"{app_id}-rejected", METERING_PARTITIONS=str(partitions),
        METERING_DATA_DIR=str(data_dir), METERING_WEB_PORT=str(web_port),
        METERING_ARCHIVE_WEB_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def worker(env: dict[str, str], log_path: Path) -> Child:
    """A ``metering worker`` child (not started), at its default log level ``info``.

    Not ``warn``: at ``warn`` and above Faust's terminal spinner sets the root logger to
    DEBUG, so every ``log.debug`` call in aiokafka/Faust builds a LogRecord (measured:
    2-4 % of the worker's CPU).
    """
    return Child([PYTHON, "-m", "agents", "worker", "--loglevel", "info"], env, log_path)


@dataclass
class CatchUp:
    """When a consumer group caught up, in seconds since its process started."""

    seconds: float
    startup_s: float | None
    """Seconds until the first committed input offset was seen (start-up and group join)."""
    committed_at_startup: int
    """Input records already committed at ``startup_s``."""


async def wait_caught_up(kafka: Kafka, child: Child, group: str, input_topic: str,
                         input_ends: dict[int, int], events_topic: str | None,
                         deadline_s: float) -> CatchUp:
    """Poll committed offsets every 0.5 s until caught up (see the module docstring)."""
    deadline = child.started + deadline_s
    startup: float | None = None
    at_startup = 0
    events_target: dict[int, int] | None = None
    while True:
        now = time.monotonic()
        if not child.alive():
            raise BenchError(f"{child.argv[2:4]} exited early:\n{child.tail()}")
        if now > deadline:
            raise BenchError(f"{group} not caught up within {deadline_s:.0f} s "
                             f"(deadline); log tail:\n{child.tail()}")
        committed = await kafka.committed(group, input_topic)
        if startup is None and sum(committed.values()) > 0:
            startup, at_startup = now - child.started, sum(committed.values())
        if behind(input_ends, committed) == 0:
            if events_topic is None:
                return CatchUp(time.monotonic() - child.started, startup, at_startup)
            if events_target is None:  # every input record was forwarded before this
                events_target = await kafka.end_offsets(events_topic)
            if behind(events_target, await kafka.committed(group, events_topic)) == 0:
                return CatchUp(time.monotonic() - child.started, startup, at_startup)
        await asyncio.sleep(POLL_S)  # poll with a deadline


async def raw_consume(bootstrap: str, topic: str, ends: dict[int, int]) -> tuple[int, float]:
    """Read ``topic`` from the beginning to ``ends`` with ``getmany``: (records, seconds)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    t0 = time.perf_counter()
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(ends)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        left = {tp: ends[tp.partition] for tp in tps if ends[tp.partition] > 0}
        n = 0
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=10_000)
            for tp, msgs in batch.items():
                n += len(msgs)
                if msgs and msgs[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
            if time.perf_counter() - t0 > 600:
                raise BenchError("raw consumer did not finish within 600 s")
        return n, time.perf_counter() - t0
    finally:
        await consumer.stop()


def naive(bootstrap: str, topic: str, app_id: str, work: Path, web_port: int) -> Child:
    """The naive Faust agent child (not started; log level info, see :func:`worker`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERING_", "F_"))}
    env.update(BENCH_NAIVE_BROKER=bootstrap, BENCH_NAIVE_TOPIC=topic, BENCH_NAIVE_APP_ID=app_id,
               BENCH_NAIVE_DATADIR=str(work / "naive-data"), BENCH_NAIVE_WEB_PORT=str(web_port))
    return Child([PYTHON, "-m", "faust", "-A", "bench.naive_app", "worker", "-l", "info",
                  "--web-port", str(web_port)], env, work / "naive.log")


def run(bootstrap: str, path: Path, cfg: Any, records: int, work: Path, results: Results,
        *, partitions: int = 4, deadline_s: float = 900.0, profile_s: float = 0.0,
        target_rate: float = 50_000.0) -> None:
    """Run the streaming scenario; append its rows (and a worker profile) to ``results``.

    ``profile_s`` > 0: when the worker misses ``target_rate`` records/s, a second worker
    (fresh group) is sampled with py-spy for that many seconds while it processes.
    """
    from agents.localkafka import free_port

    stamp = time.strftime("%H%M%S")
    topic = f"bench-cs-{stamp}"
    log(f"streaming: preparing {records:,} records (keys from the simulator) ...")
    data, keyed = keyed_records(path, cfg, records)

    async def preload(records: list[tuple[bytes | None, bytes, int]]) -> dict[int, int]:
        async with Kafka(bootstrap) as kafka:
            await kafka.create_topic(topic, partitions)
        return await produce(bootstrap, topic, records)

    t0 = time.perf_counter()
    ends = asyncio.run(preload(data))
    n_input = sum(ends.values())
    del data
    log(f"streaming: preloaded {n_input:,} records to {topic} in "
        f"{time.perf_counter() - t0:.1f} s (not timed)")
    how = "keyed as `metering simulate --to-kafka` keys them" if keyed else "key None"
    results.notes.append(f"Streaming input: the first {n_input:,} records of the trace in a "
                         f"{partitions}-partition topic, {how}.")

    runs = [asyncio.run(raw_consume(bootstrap, topic, ends)) for _ in range(2)]
    n_raw, t_raw = min(runs, key=lambda r: r[1])
    if n_raw != n_input:
        raise BenchError(f"raw consumer read {n_raw:,} records, expected {n_input:,}")
    raw_rate = n_raw / t_raw
    results.rows.append(Row("streaming", "raw aiokafka consumer (getmany, no processing)",
                            n_raw, t_raw, ratio="100.0 %", notes="ceiling; best of 2"))
    results.metrics["raw_consumer_rate"] = raw_rate
    log(f"streaming: raw consumer {raw_rate:,.0f} records/s")

    with children() as procs:
        app_id = f"bench-worker-{stamp}"
        env = worker_env(bootstrap, app_id, topic, work / "worker-data", free_port(),
                         partitions)
        child = worker(env, work / "worker.log")
        procs.append(child.start())
        log(f"streaming: worker started (pid {child.pid}); waiting until caught up ...")

        async def measure_worker() -> tuple[CatchUp, int]:
            async with Kafka(bootstrap) as kafka:
                caught = await wait_caught_up(kafka, child, app_id, topic, ends,
                                              f"{app_id}-events", deadline_s)
                usage = await kafka.end_offsets(f"{app_id}-usage")
            return caught, sum(usage.values())

        caught, intervals = asyncio.run(measure_worker())
        child.stop()
        db_bytes = sum(f.stat().st_size for f in (work / "worker-data").rglob("*")
                       if f.is_file())
        rate = n_input / caught.seconds
        steady = ""
        if caught.startup_s is not None and caught.seconds > caught.startup_s:
            steady_rate = ((n_input - caught.committed_at_startup)
                           / (caught.seconds - caught.startup_s))
            results.metrics["worker_rate_after_startup"] = steady_rate
            steady = (f"; {steady_rate:,.0f}/s after start-up ({caught.startup_s:.1f} s to "
                      f"the first commit)")
        results.rows.append(Row(
            "streaming", "`metering worker` (start to caught up)", n_input, caught.seconds,
            ratio=pct(rate, raw_rate),
            notes=f"{intervals:,} intervals on usage{steady}; RocksDB {db_bytes / 1e6:.0f} MB"))
        results.metrics["worker_rate"] = rate
        results.metrics["worker_intervals"] = intervals
        log(f"streaming: worker {rate:,.0f} records/s ({intervals:,} intervals)")
        shutil.rmtree(work / "worker-data", ignore_errors=True)

        naive_id = f"bench-naive-{stamp}"
        nchild = naive(bootstrap, topic, naive_id, work, free_port())
        procs.append(nchild.start())
        log(f"streaming: naive faust agent started (pid {nchild.pid}) ...")

        async def measure_naive() -> CatchUp:
            async with Kafka(bootstrap) as kafka:
                return await wait_caught_up(kafka, nchild, naive_id, topic, ends, None,
                                            deadline_s)

        ncaught = asyncio.run(measure_naive())
        nchild.stop()
        nrate = n_input / ncaught.seconds
        results.rows.append(Row(
            "streaming", "naive faust agent (`async for`, orjson.loads, count)", n_input,
            ncaught.seconds, ratio=pct(nrate, raw_rate),
            notes=f"baseline; worker = {rate / nrate:.2f}x naive"))
        results.metrics["naive_rate"] = nrate
        log(f"streaming: naive agent {nrate:,.0f} records/s")

        if profile_s > 0 and rate < target_rate:
            pid_env = worker_env(bootstrap, f"{app_id}-prof", topic, work / "prof-data",
                                 free_port(), partitions)
            pchild = worker(pid_env, work / "worker-prof.log")
            procs.append(pchild.start())

            async def until_busy() -> None:
                async with Kafka(bootstrap) as kafka:
                    deadline = pchild.started + 120
                    while not sum((await kafka.committed(f"{app_id}-prof", topic)).values()):
                        if not pchild.alive() or time.monotonic() > deadline:
                            raise BenchError(f"profiled worker not processing:\n"
                                             f"{pchild.tail()}")
                        await asyncio.sleep(POLL_S)  # poll with a deadline

            asyncio.run(until_busy())
            prof = record(pchild.pid, profile_s, work / "worker.pyspy.txt")
            pchild.stop()
            results.hotspots["streaming worker (py-spy, while catching up on the same "
                             "topic)"] = prof.markdown("metering worker")
