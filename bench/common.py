"""Shared pieces of ``make bench``: the cached trace, result rows, child processes, Kafka.

Units everywhere: records/s, seconds (wall clock, ``time.monotonic``/``perf_counter``),
bytes; instants are UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from agents.cli.progress import SimulateDisplay
from agents.kafkaclient import client_options
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream, write_records

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metering" / "bench"
PYTHON = sys.executable


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One line of the results table.

    ``records`` and ``seconds`` give ``rate`` (records/s) unless a row sets ``rate`` itself;
    ``ratio`` compares the rate with the scenario's ceiling measured in the same run.
    """

    scenario: str
    variant: str
    records: int | None = None
    seconds: float | None = None
    rate: float | None = None
    ratio: str = ""
    notes: str = ""

    def records_per_second(self) -> float | None:
        if self.rate is not None:
            return self.rate
        if self.records and self.seconds:
            return self.records / self.seconds
        return None


@dataclass
class Target:
    """A target (issues 8, 17 and 18): ``met`` is None when not measured or not a target.

    ``reference`` is the ceiling or reference measured in the same run, ``ratio`` the
    figure against it.
    """

    name: str
    goal: str
    measured: str
    met: bool | None
    reference: str = ""
    ratio: str = ""
    status: str = ""
    """Shown instead of met/missed/not measured when set (e.g. "reported")."""


@dataclass
class Results:
    """Everything one ``python -m bench`` run measured (rendered into BENCHMARKS.md)."""

    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Method details that depend on the run (slice sizes, achieved rates, ...)."""
    hotspots: dict[str, list[str]] = field(default_factory=dict)
    """Profile name -> markdown lines (top functions)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Raw numbers the targets are computed from."""

    def table(self) -> str:
        lines = [
            "| scenario | variant | records | seconds | records/s | vs ceiling | notes |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            rate = r.records_per_second()
            lines.append(
                f"| {r.scenario} | {r.variant} | "
                f"{'' if r.records is None else f'{r.records:,}'} | "
                f"{'' if r.seconds is None else f'{r.seconds:.1f}'} | "
                f"{'' if rate is None else f'{rate:,.0f}'} | {r.ratio} | {r.notes} |")
        return "\n".join(lines)

    def target_table(self) -> str:
        lines = ["| target | measured | ceiling / reference (same run) | ratio | goal | status |",
                 "|---|---|---|---:|---|---|"]
        for t in self.targets:
            status = t.status or {True: "**met**", False: "**missed**",
                                  None: "not measured"}[t.met]
            lines.append(f"| {t.name} | {t.measured} | {t.reference} | {t.ratio} | {t.goal} "
                         f"| {status} |")
        return "\n".join(lines)


def pct(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole`` ("12.3 %")."""
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


# ------------------------------------------------------------------------------ the trace


def trace(accounts: int, days: int, seed: int = 1) -> tuple[Path, SimConfig]:
    """The cached simulated trace (JSONL values; generated on first use, ~25 s for 1 M)."""
    cfg = SimConfig(seed=seed, accounts=accounts, until_ms=SimConfig().start_ms + days * DAY)
    path = CACHE / f"trace-s{seed}-a{accounts}-d{days}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        log(f"generating {path} (once) ...")
        display = SimulateDisplay(sys.stderr.isatty(), cfg.start_ms, cfg.until_ms)
        summary, _ = write_records(cfg, path, on_progress=display)
        log(f"  {summary.records:,} records at {summary.records_per_second:,.0f}/s")
    return path, cfg


def keyed_records(path: Path, cfg: SimConfig, n: int) -> tuple[list[tuple[bytes | None, bytes,
                                                                         int]], bool]:
    """The first ``n`` lines of the trace as ``(key, value, timestamp UTC ms)``.

    Values are the trace's bytes. Keys and timestamps are those ``metering simulate
    --to-kafka`` would use (the simulator is re-run for the first ``n`` records: same seed,
    same bytes; ~20 µs per record). Returns ``(records, keyed)``; ``keyed`` is False when the
    simulator no longer reproduces the cached trace (it changed since the cache was made):
    then keys are None and timestamps the producer's clock.
    """
    out: list[tuple[bytes | None, bytes, int]] = []
    keyed = True
    with path.open("rb") as fh:
        lines = [line.rstrip(b"\n") for line in itertools.islice(fh, n)]
    for em, value in zip(stream(Cloud(cfg)), lines, strict=False):
        if em.value != value:
            keyed = False
            break
        out.append((None if em.key is None else em.key.encode(), value, em.ts_ms))
    if not keyed or len(out) < len(lines):
        log("the simulator does not reproduce the cached trace: producing with key None")
        now = int(time.time() * 1000)
        return [(None, v, now) for v in lines], False
    return out, True


# ------------------------------------------------------------------------------ machine


def machine() -> str:
    """One line: cores, CPU, RAM, OS, Python and the versions of the libraries that matter."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("orjson", "pyarrow", "faust-streaming", "aiokafka", "confluent-kafka",
                          "rocksdict"))
    return (f"{os.cpu_count()} cores ({cpu}){mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; {versions}")


# ------------------------------------------------------------------------------ processes


@dataclass
class Child:
    """A subprocess in its own session (process group), stopped with its whole group."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    """``time.monotonic()`` just before the process was spawned (seconds)."""

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            self.started = time.monotonic()
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, cwd=ROOT,
                                            start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def keep_log(self) -> Path:
        """Copy the log out of the run's work directory (deleted at the end) into
        ``~/.cache/metering/bench-failures/``; the copy's path."""
        import shutil

        dest = Path.home() / ".cache" / "metering" / "bench-failures"
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f"{time.strftime('%Y%m%dT%H%M%S')}-{self.log_path.name}"
        try:
            shutil.copyfile(self.log_path, target)
        except OSError as exc:
            return Path(f"(not kept: {exc})")
        return target

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the process group; SIGKILL it after ``grace_s`` seconds."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # stray grandchildren
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to append started children to; all are stopped on exit, even on error."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def http_get(url: str, timeout_s: float = 3.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# ------------------------------------------------------------------------------ Kafka


class Kafka:
    """Async admin helpers for one broker: topics, end offsets, committed offsets."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._admin: Any = None
        self._offsets: Any = None

    async def __aenter__(self) -> Kafka:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self._admin = AIOKafkaAdminClient(**client_options(self.bootstrap),
                                          request_timeout_ms=15_000)
        await self._admin.start()
        self._offsets = AIOKafkaConsumer(**client_options(self.bootstrap), group_id=None,
                                         enable_auto_commit=False, metadata_max_age_ms=1000,
                                         request_timeout_ms=15_000)
        await self._offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._offsets.stop()
        with contextlib.suppress(Exception):
            await self._admin.close()

    async def create_topic(self, topic: str, partitions: int) -> None:
        from aiokafka.admin import NewTopic

        await self._admin.create_topics([NewTopic(topic, partitions, 1)])

    async def exists(self, topic: str) -> bool:
        """Whether ``topic`` exists on the broker (a worker may not use every topic)."""
        return topic in set(await self._admin.list_topics())

    async def partitions(self, topic: str, deadline_s: float = 60.0) -> list[Any]:
        """The partitions of ``topic`` (waits for the topic to appear, with a deadline)."""
        from aiokafka import TopicPartition

        end = time.monotonic() + deadline_s
        while True:
            parts = self._offsets._client.cluster.partitions_for_topic(topic)
            if parts:
                return [TopicPartition(topic, p) for p in sorted(parts)]
            if time.monotonic() > end:
                raise TimeoutError(f"topic {topic} has no partitions after {deadline_s:.0f} s")
            with contextlib.suppress(Exception):
                await self._offsets._client._wait_on_metadata(topic)
            await asyncio.sleep(0.2)  # poll with a deadline

    async def end_offsets(self, topic: str) -> dict[int, int]:
        tps = await self.partitions(topic)
        ends = await self._offsets.end_offsets(tps)
        return {tp.partition: int(off) for tp, off in ends.items()}

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group`` on ``topic`` (partitions without one are absent)."""
        from aiokafka.errors import KafkaError

        tps = await self.partitions(topic)
        try:
            got = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        except KafkaError as exc:  # e.g. no coordinator yet on a fresh broker: retried
            if not getattr(exc, "retriable", False):
                raise
            return {}
        return {tp.partition: int(meta.offset) for tp, meta in got.items()
                if meta is not None and meta.offset >= 0}


    async def stable_members(self, group: str) -> int:
        """Members of ``group`` if its state is ``Stable`` (every member has its assignment),
        else 0 (joining, rebalancing, unknown yet)."""
        from aiokafka.errors import KafkaError

        try:
            responses = await self._admin.describe_consumer_groups([group])
        except KafkaError as exc:  # e.g. no coordinator yet on a fresh broker: retried
            if not getattr(exc, "retriable", False):
                raise
            return 0
        for response in responses:
            for error_code, group_id, state, _ptype, _protocol, members, *_ in response.groups:
                if group_id == group and error_code == 0 and state == "Stable":
                    return len(members)
        return 0


@contextlib.contextmanager
def bench_broker(log: Any) -> Iterator[tuple[str, Path | None]]:
    """The bench's broker: (bootstrap, its data directory or None).

    ``$METERING_TEST_BROKER`` if set (no data directory: sizes on disk are not measured),
    else a fresh local broker with Kafka's default initial rebalance delay (3 s; the tests'
    broker has 0): workers started together join one generation, as on a production
    broker."""
    from agents.localkafka import LocalKafka

    existing = os.environ.get("METERING_TEST_BROKER")
    if existing:
        yield existing, None
        return
    broker = LocalKafka(properties={"group.initial.rebalance.delay.ms": "3000"}).start(log)
    try:
        yield broker.bootstrap, (broker.workdir / "data" if broker.workdir else None)
    finally:
        broker.stop()


def topic_disk_bytes(data_dir: Path, topic: str) -> int:
    """Bytes of ``topic``'s log segments in a local broker's data directory (all
    partitions; compressed batches count as stored)."""
    return sum(f.stat().st_size for d in data_dir.glob(f"{topic}-*")
               if d.name.rsplit("-", 1)[0] == topic for f in d.glob("*.log"))


def behind(ends: dict[int, int], committed: dict[int, int]) -> int:
    """Records between the committed offsets and the end offsets (summed over partitions)."""
    return sum(max(0, end - committed.get(p, 0)) for p, end in ends.items())


async def produce(bootstrap: str, topic: str,
                  records: list[tuple[bytes | None, bytes, int]]) -> dict[int, int]:
    """Produce ``(key, value, timestamp UTC ms)`` records in order; return end offsets."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**client_options(bootstrap), linger_ms=20,
                                max_batch_size=1 << 20, acks=1, request_timeout_ms=60_000)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        pending: list[Any] = []
        for key, value, ts in records:
            pending.append(await producer.send(topic, value, key=key, timestamp_ms=ts))
            if len(pending) >= 20_000:
                for meta in await asyncio.gather(*pending):
                    ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
                pending.clear()
        for meta in await asyncio.gather(*pending):
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends
