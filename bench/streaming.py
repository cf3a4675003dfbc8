"""Streaming scenario: the worker against the raw Kafka ceiling, hourly and daily periods.

The worker is driven only through its command line and ``METERING_*`` settings (``python
-m agents worker``), never through ``agents/`` internals, so the scenario measures today's
worker and any rewrite of it that keeps the command and the settings.

1. **Preload** (not timed): the first ``records`` lines of the cached trace are produced as
   raw bytes to a fresh ``partitions``-partition topic, keyed and timestamped as ``metering
   simulate --to-kafka`` does (see :func:`bench.common.keyed_records`).
2. **Worker**, once with ``METERING_PERIOD=hour`` (output-heavy: every open resource is cut
   every simulated hour) and once with ``day`` (input-heavy): ``python -m agents worker``
   in a subprocess with its own app id (group), data dir and topics, default settings
   otherwise, timed until *caught up*: the group's committed offsets on the input topic
   reach its end offsets, and then, if the worker commits on its internal events topic
   (today's two-hop worker does; a one-hop rewrite may not have that topic), its committed
   offsets there reach the end offsets that topic had at that moment (every forwarded
   event metered and its intervals acknowledged on the usage topic), and then the usage
   topic's end offsets stopped growing for ``OUTPUT_QUIET_S`` (5 s): the run ends at the
   last poll that saw them grow, if that is later (ticks after the last input record still
   cut periods). Polled every 0.25 s with the admin client (``list_consumer_group_offsets``);
   the worker commits every second. Two figures per run: *start to caught up* (process
   start included: interpreter, Faust, group join) and the **throughput**, *first commit
   to caught up*: input records committed after the first poll that saw a commit, divided
   by the time from that poll to caught up (start-up drops out). The worker is run again
   until its runs add up to at least ``MIN_TOTAL_S`` seconds (at most ``MAX_RUNS`` runs; a
   fresh group and data dir each time): the figure is the median run, the spread (min-max)
   is printed beside it.
3. **Ceiling** per period (:mod:`bench.ceiling`), after that period's worker run: a raw
   confluent-kafka consumer reads the input topic, then a raw confluent-kafka producer writes
   as many records, of the same key and value sizes, as the worker wrote to its usage
   topic (counted by reading it back, not timed), ``acks=all``, all acknowledged; best of
   two. The same with aiokafka (the worker's client; ``getmany`` and ``send_batch``) once, as
   a second reference.
4. **Naive agent** (:mod:`bench.naive_app`): ``python -m faust -A bench.naive_app worker``,
   one Faust agent that parses and counts each record, timed the same way on its own group
   (Faust's default commit interval is 2.8 s): what one stock Faust hop costs.

Scale-out (:func:`scale_out`, run by the ``scale`` scenario): two worker processes in one
group (each its own data dir and web port) on the same preloaded topic with daily periods,
against one worker measured the same way in the same run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ceiling
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
    produce,
    topic_disk_bytes,
)
from bench.profile import record

POLL_S = 0.25
"""Seconds between offset polls."""
OUTPUT_QUIET_S = 5.0
"""After caught up, the usage topic must stop growing for this long (several ticks): the
last output of a run (period cuts made by later ticks, chunked cuts) counts in its time."""
MIN_TOTAL_S = 45.0
"""A worker variant is run again until its runs add up to this many seconds ..."""
MAX_RUNS = 3
"""... or it ran this many times."""
PERIODS = (("hour", "hourly", "output-heavy"), ("day", "daily", "input-heavy"))
"""``METERING_PERIOD`` values measured, with their names in the table."""


class BenchError(RuntimeError):
    """A benchmark step failed (a process died or a deadline passed); carries a log tail."""


def worker_env(bootstrap: str, app_id: str, input_topic: str, data_dir: Path, web_port: int,
               partitions: int = 4, **extra: str) -> dict[str, str]:
    """Environment of ``python -m agents worker`` with its own group, topics and data dir.

    Everything else keeps the worker's defaults (hourly periods, batches of 2 000 records
    within 0.5 s, 0.2 s ticks, 1 s commits); ``extra`` adds ``METERING_*`` settings.
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


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


@dataclass
class CatchUp:
    """When a consumer group caught up, in seconds since its (first) process started."""

    seconds: float
    startup_s: float | None
    """Seconds until the first committed input offset was seen (start-up and group join)."""
    committed_at_startup: int
    """Input records already committed at ``startup_s``."""
    records: int = 0
    """Input records (the topic's end offsets)."""
    intervals: int = 0
    """Records on the usage topic once caught up."""
    output: ceiling.Output | None = None
    """The usage topic's records and bytes (read back after the run when asked for)."""
    committed_s: float | None = None
    """Seconds since start when the committed offsets alone said caught up (before the
    output settled; :attr:`seconds` is the later of the two)."""
    usage_disk_bytes: int | None = None
    """Bytes of the usage topic's log segments on the broker's disk (None: not measured)."""
    busy: float | None = None
    """Share of the machine's CPU time (all cores; workers, broker, everything) that was busy
    from the window's start to caught up: near 1.0, the run was bound by the cores."""

    @property
    def window(self) -> tuple[int, float]:
        """(input records, seconds) from the first commit to caught up; from the start
        when the first commit came after 80 % of the input."""
        if (self.startup_s is not None and self.seconds > self.startup_s
                and self.committed_at_startup < 0.8 * self.records):
            return (self.records - self.committed_at_startup, self.seconds - self.startup_s)
        return self.records, self.seconds

    @property
    def rate(self) -> float:
        """Input records/s over :attr:`window` (the throughput figure)."""
        records, seconds = self.window
        return records / seconds

    @property
    def start_rate(self) -> float:
        """Input records/s from process start to caught up."""
        return self.records / self.seconds


async def wait_caught_up(kafka: Kafka, procs: list[Child], group: str, input_topic: str,
                         input_ends: dict[int, int], events_topic: str | None,
                         deadline_s: float, members: int = 1) -> CatchUp:
    """Poll committed offsets until caught up (see the module docstring).

    ``events_topic`` None: the input topic alone decides (the naive agent). Otherwise the
    events topic counts only if it exists and ``group`` commits on it.

    ``members`` > 1 (scale-out): the throughput window starts at the first poll that finds
    the group ``Stable`` with that many members and a commit made, not at the first commit:
    workers started together rarely join one generation (the bench broker, like the tests',
    has ``group.initial.rebalance.delay.ms=0``), so the first one often works alone for a
    few seconds, then everything stops for a rebalance and a table restore. Counting that
    join as throughput measured the start-up race, not two workers (0.82-1.95x in runs
    minutes apart). The join is still in :attr:`CatchUp.start_rate` and reported.
    """
    started = min(c.started for c in procs)
    deadline = started + deadline_s
    startup: float | None = None
    at_startup = 0
    events_target: dict[int, int] | None = None
    input_done: float | None = None
    jiffies = cpu_jiffies()

    def caught(seconds: float) -> CatchUp:
        busy, total = (a - b for a, b in zip(cpu_jiffies(), jiffies, strict=True))
        return CatchUp(seconds, startup, at_startup, busy=busy / total if total else None)

    while True:
        now = time.monotonic()
        for child in procs:
            if not child.alive():
                raise BenchError(f"{child.argv[2:4]} exited early (whole log kept: "
                                 f"{child.keep_log()}):\n{child.tail()}")
        if now > deadline:
            raise BenchError(f"{group} not caught up within {deadline_s:.0f} s "
                             f"(deadline); log tail:\n{procs[0].tail()}")
        committed = await kafka.committed(group, input_topic)
        if startup is None and sum(committed.values()) > 0 and (
                members == 1 or await kafka.stable_members(group) >= members):
            startup, at_startup = now - started, sum(committed.values())
            jiffies = cpu_jiffies()
        if behind(input_ends, committed) == 0:
            input_done = input_done or now
            if events_topic is None:
                return caught(now - started)
            if events_target is None:  # every input record was forwarded before this
                if not await kafka.exists(events_topic):
                    return caught(now - started)
                events_target = await kafka.end_offsets(events_topic)
            done = await kafka.committed(group, events_topic)
            if not done and now - input_done > 5.0:  # the worker does not use that topic
                return caught(input_done - started)
            if done and behind(events_target, done) == 0:
                return caught(now - started)
        await asyncio.sleep(POLL_S)  # poll with a deadline


async def wait_output_settled(kafka: Kafka, procs: list[Child], usage_topic: str,
                              caught: CatchUp, deadline_s: float) -> dict[int, int]:
    """The usage topic's end offsets once they stopped growing for :data:`OUTPUT_QUIET_S`;
    ``caught.seconds`` moves to the last poll that saw them grow, if that is later.

    Committed offsets alone can report a worker caught up before its last output: with
    daily periods the last days are cut by ticks that come after the last input record
    (one run counted 38 211 of 53 249 intervals at that moment, and its rate was inflated).
    """
    started = min(c.started for c in procs)
    deadline = started + deadline_s
    caught.committed_s = caught.seconds
    ends = await kafka.end_offsets(usage_topic)
    last_growth = time.monotonic()
    while time.monotonic() - last_growth < OUTPUT_QUIET_S:
        if time.monotonic() > deadline:
            raise BenchError(f"{usage_topic} still growing at the deadline "
                             f"({sum(ends.values()):,} records)")
        await asyncio.sleep(POLL_S)  # poll with a deadline
        now = await kafka.end_offsets(usage_topic)
        if now != ends:
            ends, last_growth = now, time.monotonic()
            caught.seconds = max(caught.seconds, last_growth - started)
    return ends


def naive(bootstrap: str, topic: str, app_id: str, work: Path, web_port: int) -> Child:
    """The naive Faust agent child (not started; log level info, see :func:`worker`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERING_", "F_"))}
    env.update(BENCH_NAIVE_BROKER=bootstrap, BENCH_NAIVE_TOPIC=topic, BENCH_NAIVE_APP_ID=app_id,
               BENCH_NAIVE_DATADIR=str(work / "naive-data"), BENCH_NAIVE_WEB_PORT=str(web_port))
    return Child([PYTHON, "-m", "faust", "-A", "bench.naive_app", "worker", "-l", "info",
                  "--web-port", str(web_port)], env, work / "naive.log")


@dataclass
class Prepared:
    """The preloaded input topic and what was measured on it so far in this run."""

    bootstrap: str
    topic: str
    ends: dict[int, int]
    partitions: int
    work: Path
    deadline_s: float = 900.0
    runs: dict[str, list[CatchUp]] = field(default_factory=dict)
    """``METERING_PERIOD`` -> one-worker runs."""
    serial: int = 0
    broker_data: Path | None = None
    """The local broker's data directory (sizes of topics on disk), if known."""

    @property
    def records(self) -> int:
        return sum(self.ends.values())

    def app_id(self, label: str) -> str:
        self.serial += 1
        return f"{self.topic}-{label}-{self.serial}"


def preload(bootstrap: str, path: Path, cfg: Any, records: int, work: Path,
            results: Results, partitions: int = 4, purpose: str = "Streaming input"
            ) -> Prepared:
    """Produce the first ``records`` records of the trace to a fresh topic (not timed)."""
    topic = f"bench-cs-{time.strftime('%H%M%S')}"
    log(f"streaming: preparing {records:,} records (keys from the simulator) ...")
    data, keyed = keyed_records(path, cfg, records)

    async def load(data: list[tuple[bytes | None, bytes, int]]) -> dict[int, int]:
        async with Kafka(bootstrap) as kafka:
            await kafka.create_topic(topic, partitions)
        return await produce(bootstrap, topic, data)

    t0 = time.perf_counter()
    ends = asyncio.run(load(data))
    del data
    prep = Prepared(bootstrap, topic, ends, partitions, work)
    log(f"streaming: preloaded {prep.records:,} records to {topic} in "
        f"{time.perf_counter() - t0:.1f} s (not timed)")
    how = "keyed as `metering simulate --to-kafka` keys them" if keyed else "key None"
    results.notes.append(f"{purpose}: the first {prep.records:,} records of the trace "
                         f"in a {partitions}-partition topic, {how}.")
    return prep


def run_workers(prep: Prepared, period: str, n: int = 1, output: bool = False,
                **settings: str) -> CatchUp:
    """``n`` worker processes in one fresh group on the preloaded topic, to caught up.

    ``output``: count the records and bytes of the usage topic afterwards (not timed). The
    run's topics are deleted at the end (they hold up to ~1 GB each), after the usage
    topic's size on disk is taken (when the broker's data directory is known).
    ``settings``: more ``METERING_*`` settings of the workers.
    """
    from agents.localkafka import free_port

    app_id = prep.app_id(f"{period}{n}")
    with children() as procs:
        for i in range(n):
            env = worker_env(prep.bootstrap, app_id, prep.topic, prep.work / f"{app_id}-{i}",
                             free_port(), prep.partitions, METERING_PERIOD=period, **settings)
            procs.append(worker(env, prep.work / f"{app_id}-{i}.log").start())
        log(f"streaming: {n} worker(s) --period {period} started "
            f"(pids {', '.join(str(c.pid) for c in procs)}) ...")

        async def measure() -> CatchUp:
            async with Kafka(prep.bootstrap) as kafka:
                caught = await wait_caught_up(kafka, procs, app_id, prep.topic, prep.ends,
                                              f"{app_id}-events", prep.deadline_s, members=n)
                caught.records = prep.records
                usage = await wait_output_settled(kafka, procs, f"{app_id}-usage", caught,
                                                  prep.deadline_s)
            caught.intervals = sum(usage.values())
            if output:
                caught.output = ceiling.output_of(prep.bootstrap, f"{app_id}-usage", usage)
            return caught

        caught = asyncio.run(measure())
    if prep.broker_data is not None:
        caught.usage_disk_bytes = topic_disk_bytes(prep.broker_data, f"{app_id}-usage")
    ceiling.delete_topics(prep.bootstrap, ceiling.topics_with_prefix(prep.bootstrap,
                                                                       f"{app_id}-"))
    log(f"streaming: {n} worker(s) --period {period}: {caught.rate:,.0f} records/s after the "
        f"{'first commit' if n == 1 else f'group stable with {n} members'} (at "
        f"{caught.startup_s or 0:.1f} s, {caught.committed_at_startup:,} committed), "
        f"{caught.start_rate:,.0f}/s from start ({caught.seconds:.1f} s; "
        f"commits caught up at {caught.committed_s or 0:.1f} s), {caught.intervals:,} "
        "intervals")
    for i in range(n):
        shutil.rmtree(prep.work / f"{app_id}-{i}", ignore_errors=True)
    return caught


def repeated(prep: Prepared, period: str, n: int = 1) -> list[CatchUp]:
    """Runs of :func:`run_workers` until ``MIN_TOTAL_S`` seconds or ``MAX_RUNS`` runs, and
    an odd number of them when ``MAX_RUNS`` allows (:func:`median_run`)."""
    runs = [run_workers(prep, period, n, output=n == 1)]
    while len(runs) < MAX_RUNS and (sum(r.seconds for r in runs) < MIN_TOTAL_S
                                    or len(runs) % 2 == 0):
        runs.append(run_workers(prep, period, n))
    return runs


def median_run(runs: list[CatchUp]) -> CatchUp:
    """The run of median rate (of two, the slower: a ratio of two medians would then favour
    whichever side had an even count, hence :func:`repeated` runs an odd number)."""
    return sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]


def spread(runs: list[CatchUp]) -> str:
    """"1 run" or "3 runs: 3,400-3,700/s (±4 %)" (half the range over the median)."""
    if len(runs) == 1:
        return "1 run"
    rates = sorted(r.rate for r in runs)
    med = statistics.median(rates)
    return (f"{len(runs)} runs: {rates[0]:,.0f}-{rates[-1]:,.0f}/s "
            f"(±{50 * (rates[-1] - rates[0]) / med:.0f} %)")


def ceilings(prep: Prepared, out: ceiling.Output, label: str) -> tuple[ceiling.Ceiling,
                                                                        ceiling.Ceiling | None]:
    """Best of two confluent-kafka ceilings and one aiokafka reference for ``out``."""
    made: list[str] = []
    try:
        best: ceiling.Ceiling | None = None
        for i in range(2):
            made.append(f"{prep.topic}-ceiling-{label}-{i}")
            c = ceiling.confluent(prep.bootstrap, prep.topic, prep.ends, out, made[-1])
            log(f"streaming: ceiling ({label}, confluent-kafka): read {c.read_s:.1f} s, "
                f"write {c.written:,} in {c.write_s:.1f} s: {c.rate:,.0f} records/s")
            if best is None or c.seconds < best.seconds:
                best = c
            ceiling.delete_topics(prep.bootstrap, made[-1:])
        assert best is not None
        ref: ceiling.Ceiling | None = None
        try:
            made.append(f"{prep.topic}-ceiling-{label}-aio")
            ref = ceiling.aiokafka(prep.bootstrap, prep.topic, prep.ends, out, made[-1])
            log(f"streaming: reference ({label}, aiokafka): {ref.rate:,.0f} records/s")
        except ceiling.CeilingError as exc:
            log(f"streaming: aiokafka reference failed: {exc}")
        return best, ref
    finally:
        ceiling.delete_topics(prep.bootstrap, made)


def _ceiling_notes(c: ceiling.Ceiling, out: ceiling.Output) -> str:
    return (f"read {c.records / c.read_s:,.0f}/s + write {c.written / c.write_s:,.0f}/s of "
            f"{out.mean_value:,.0f} B (acks=all)")


CODECS = ("lz4", "zstd")
"""Values of the ``compression`` setting measured beside ``none`` (issue 18, item 2)."""


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:,.1f} MB"


def compressed(prep: Prepared, plain: list[CatchUp], best: ceiling.Ceiling,
               results: Results, period: str = "hour") -> None:
    """One worker run per :data:`CODECS` value on the same input: its rate, and the usage
    topic's size on the broker's disk against the uncompressed runs' (output-heavy hourly
    periods, where the usage topic is ~3 times the input)."""
    stored = next((r.usage_disk_bytes for r in plain if r.usage_disk_bytes), None)
    for codec in CODECS:
        run = run_workers(prep, period, METERING_COMPRESSION=codec)
        ratio = (f"; {stored / run.usage_disk_bytes:.1f}x smaller" if stored
                 and run.usage_disk_bytes else "")
        results.rows.append(Row(
            "streaming", f"`metering worker --period {period} --compression {codec}`, "
            "first commit to caught up", *run.window,
            ratio=f"{100 * run.rate / best.rate:.1f} %",
            notes=(f"one run; usage topic on the broker's disk {_mb(run.usage_disk_bytes)} "
                   f"(uncompressed {_mb(stored)}{ratio}); {run.intervals:,} intervals")))
        results.metrics[f"worker_{period}_{codec}_rate"] = run.rate


def run(bootstrap: str, path: Path, cfg: Any, records: int, work: Path, results: Results,
        *, partitions: int = 4, deadline_s: float = 900.0, profile_s: float = 0.0,
        target_rate: float = 50_000.0, broker_data: Path | None = None) -> Prepared:
    """Run the streaming scenario; append its rows (and a worker profile) to ``results``.

    Returns the preloaded topic with the one-worker runs (the scale-out reuses both).
    ``profile_s`` > 0: when the hourly worker misses ``target_rate`` records/s, a second
    worker (fresh group) is sampled with py-spy for that many seconds while it processes.
    """
    from agents.localkafka import free_port

    prep = preload(bootstrap, path, cfg, records, work, results, partitions)
    prep.deadline_s = deadline_s
    prep.broker_data = broker_data
    read_only: float | None = None
    for period, name, kind in PERIODS:
        runs = repeated(prep, period)
        prep.runs[period] = runs
        med = median_run(runs)
        out = runs[0].output
        assert out is not None
        best, ref = ceilings(prep, out, period)
        read_only = min(read_only or best.read_s, best.read_s)
        results.rows.append(Row(
            "streaming", f"**ceiling, {name} output**: confluent-kafka read + write "
            f"{out.records:,} records", best.records, best.seconds, ratio="100.0 %",
            notes=f"{_ceiling_notes(best, out)}; best of 2"))
        if ref is not None:
            results.rows.append(Row(
                "streaming", f"reference, {name} output: aiokafka read + write the same",
                ref.records, ref.seconds, ratio=f"{100 * ref.rate / best.rate:.1f} %",
                notes=_ceiling_notes(ref, out)))
        results.rows.append(Row(
            "streaming", f"`metering worker --period {period}` ({kind}), first commit to "
            f"caught up", *med.window,
            ratio=f"{100 * med.rate / best.rate:.1f} %",
            notes=(f"{spread(runs)}; start to caught up {med.seconds:.1f} s = "
                   f"{med.start_rate:,.0f}/s (first commit at {med.startup_s or 0:.1f} s); "
                   f"{med.intervals:,} intervals on usage "
                   f"({med.intervals / med.records:.1f} per record)")))
        results.metrics[f"worker_{period}_rate"] = med.rate
        results.metrics[f"worker_{period}_start_rate"] = med.start_rate
        results.metrics[f"ceiling_{period}_rate"] = best.rate
        if ref is not None:
            results.metrics[f"aiokafka_{period}_rate"] = ref.rate
        results.metrics[f"worker_{period}_intervals"] = med.intervals
        if period == "hour":
            compressed(prep, runs, best, results)

    with children() as procs:
        naive_id = prep.app_id("naive")
        nchild = naive(bootstrap, prep.topic, naive_id, work, free_port())
        procs.append(nchild.start())
        log(f"streaming: naive faust agent started (pid {nchild.pid}) ...")

        async def measure_naive() -> CatchUp:
            async with Kafka(bootstrap) as kafka:
                return await wait_caught_up(kafka, [nchild], naive_id, prep.topic, prep.ends,
                                            None, deadline_s)

        ncaught = asyncio.run(measure_naive())
        ncaught.records = prep.records
        nchild.stop()
        read_rate = prep.records / read_only if read_only else 0.0
        hourly = results.metrics.get("worker_hour_rate", 0.0)
        results.rows.append(Row(
            "streaming", "naive faust agent (`async for`, orjson.loads, count), first commit "
            "to caught up", *ncaught.window,
            ratio=f"{100 * ncaught.rate / read_rate:.1f} % of the read" if read_rate else "",
            notes=(f"one stock Faust hop, no output; vs the confluent read alone "
                   f"({read_rate:,.0f}/s); hourly worker = {hourly / ncaught.rate:.2f}x naive")))
        results.metrics["naive_rate"] = ncaught.rate
        log(f"streaming: naive agent {ncaught.rate:,.0f} records/s")

        rate = results.metrics.get("worker_hour_rate", 0.0)
        if profile_s > 0 and rate < target_rate:
            prof_id = prep.app_id("prof")
            pchild = worker(worker_env(bootstrap, prof_id, prep.topic, work / "prof-data",
                                       free_port(), partitions), work / "worker-prof.log")
            procs.append(pchild.start())

            async def until_busy() -> None:
                async with Kafka(bootstrap) as kafka:
                    deadline = pchild.started + 120
                    while not sum((await kafka.committed(prof_id, prep.topic)).values()):
                        if not pchild.alive() or time.monotonic() > deadline:
                            raise BenchError(f"profiled worker not processing:\n"
                                             f"{pchild.tail()}")
                        await asyncio.sleep(POLL_S)  # poll with a deadline

            asyncio.run(until_busy())
            prof = record(pchild.pid, profile_s, work / "worker.pyspy.txt")
            pchild.stop()
            results.hotspots["streaming worker, hourly periods (py-spy, while catching up on "
                             "the same topic)"] = prof.markdown("metering worker")
    results.notes.append(
        f"Streaming: each worker run uses a fresh group, data dir and topics; the figure is "
        f"the median of runs repeated until they add up to {MIN_TOTAL_S:.0f} s (at most "
        f"{MAX_RUNS}); the ceiling of a period reads the same input and writes as many "
        f"records of the same sizes as that period's worker wrote, in the same run.")
    return prep


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share:.0%}"


def scale_out(prep: Prepared, results: Results, period: str = "day") -> None:
    """Two worker processes in one group against one (reused from :func:`run` if there)."""
    one = prep.runs.get(period) or repeated(prep, period)
    prep.runs[period] = one
    two = repeated(prep, period, n=2)
    m1, m2 = median_run(one), median_run(two)
    ratio = m2.rate / m1.rate
    results.rows.append(Row(
        "scale-out", f"1 worker process, --period {period}, first commit to caught up",
        *m1.window, ratio="1.00x", notes=f"reference; {spread(one)}"))
    results.rows.append(Row(
        "scale-out", f"2 worker processes in one group, --period {period}, group stable "
        "with 2 members to caught up", *m2.window,
        ratio=f"{ratio:.2f}x",
        notes=(f"{spread(two)}; start to caught up {m2.seconds:.1f} s = "
               f"{m2.start_rate:,.0f}/s (one worker {m1.start_rate:,.0f}/s); "
               f"CPU busy {_pct(m2.busy)} of {os.cpu_count()} cores in the window (one worker "
               f"{_pct(m1.busy)}); "
               f"{m2.intervals:,} intervals (one worker {m1.intervals:,})")))
    results.metrics["scale_out_one_rate"] = m1.rate
    results.metrics["scale_out_two_rate"] = m2.rate
    results.metrics["scale_out_ratio"] = ratio
