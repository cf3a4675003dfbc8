"""Prometheus exposition, consumer lag and the health pages of a Faust process.

Shared by the streaming worker (:mod:`agents.pipeline`) and the archive
(:mod:`agents.archive`). Each process builds one :class:`Observability`, gives it a function
that yields its own metric families, and gets ``/metrics``, ``/healthz`` and ``/readyz`` on
its web port (bound to ``web_bind``, 127.0.0.1 by default). Metric names and meanings are
listed in :mod:`agents.catalogue`; the decisions (lag arithmetic, readiness) are in
:mod:`metering.observe`.

Faust's own Prometheus sensor is not installed: it hooks every stream event (several
callbacks per record), which costs throughput the worker does not have to spare; the
metrics here are computed per batch or on the refresh timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from agents.catalogue import BY_NAME, LATENCY_BUCKETS
from agents.faustapi import on_partitions_assigned, timer
from agents.kafkaclient import aiokafka_options
from metering import __version__
from metering.events import Category, RejectReason
from metering.observe import Readiness, consumer_lag, readiness
from metering.settings import Settings

if TYPE_CHECKING:
    import faust
    from faust.types import TP

log = logging.getLogger("metering.observe")


@dataclass
class WorkerCounts:
    """The streaming worker's counters, keyed by typed labels (exported as metrics).

    ``records`` counts input records per (category, outcome: ``metered``, ``ignored`` or
    ``rejected``); ``rejects`` per reason; ``ignored`` per kind; ``intervals`` and
    ``usage_ms`` (milliseconds) per usage type name of the emitted intervals.
    """

    records: Counter[tuple[Category, str]] = field(default_factory=Counter)
    rejects: Counter[RejectReason] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    intervals: Counter[str] = field(default_factory=Counter)
    usage_ms: Counter[str] = field(default_factory=Counter)
    wire_errors: int = 0
    """Internal records this code did not write (skipped)."""
    partition_restores: int = 0
    """Partition engines rebuilt from RocksDB (after an assignment)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def family(name: str, kind: type[Metric], **kwargs: Any) -> Any:
    """A metric family named and documented as in the catalogue (counters without _total)."""
    spec = BY_NAME[name]
    base = name.removesuffix("_total") if spec.kind == "counter" else name
    return kind(base, spec.help, **kwargs)


def dir_bytes(root: Path) -> int:
    """Total size of the regular files under ``root`` (0 if it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # RocksDB compaction removed it meanwhile
                continue
    return total


class LagMonitor:
    """Consumer lag of this process's group on its assigned partitions of ``topics``.

    Refreshed by :meth:`refresh` (the caller's timer, and right after each rebalance):
    committed offsets come from the group coordinator (admin client), end and beginning
    offsets from a group-less consumer, so the numbers are what any Kafka tool would show.
    """

    def __init__(self, app: faust.App, settings: Settings, group: str, topics: set[str]) -> None:
        self.app = app
        self.settings = settings
        self.group = group
        self.topics = topics
        self.assigned: set[tuple[str, int]] = set()
        self.rebalanced = False
        self.lags: dict[tuple[str, int], int] | None = None
        self._admin: Any = None
        self._offsets: Any = None
        self._lock = asyncio.Lock()
        self._clients_lock = asyncio.Lock()
        self._pending: asyncio.Future[None] | None = None

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        """Record a new assignment (Faust ``TP`` tuples); lag is unknown until refreshed."""
        self.assigned = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self.topics}
        self.rebalanced = True
        self.lags = None
        self._pending = asyncio.ensure_future(self.refresh())  # kept: tasks are weakly held

    async def _clients(self) -> tuple[Any, Any]:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        async with self._clients_lock:  # lag refresh and ticks share the clients
            if self._admin is None:
                admin = AIOKafkaAdminClient(**aiokafka_options(self.settings),
                                            request_timeout_ms=10_000)
                await admin.start()
                self._admin = admin
            if self._offsets is None:
                consumer = AIOKafkaConsumer(**aiokafka_options(self.settings),
                                            enable_auto_commit=False, group_id=None,
                                            request_timeout_ms=10_000)
                await consumer.start()
                self._offsets = consumer
            return self._admin, self._offsets

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int] | None:
        """Log-end offsets of ``tps`` (aiokafka ``TopicPartition``), or None on any error."""
        try:
            _, offsets = await self._clients()
            ends = await asyncio.wait_for(offsets.end_offsets(tps), 5)
        except Exception as exc:  # the broker may be away: the caller cannot tell
            log.debug("end offsets of %s not read: %r", tps, exc)
            return None
        return {tp: int(end) for tp, end in ends.items()}

    async def refresh(self) -> None:
        """Measure the lag of every assigned partition; on error keep the last values."""
        from aiokafka import TopicPartition

        async with self._lock:
            wanted = sorted(self.assigned)
            try:
                admin, offsets = await self._clients()
                tps = [TopicPartition(t, p) for t, p in wanted]
                committed = await asyncio.wait_for(
                    admin.list_consumer_group_offsets(self.group, partitions=tps), 15)
                ends = await asyncio.wait_for(offsets.end_offsets(tps), 15)
                beginnings = await asyncio.wait_for(offsets.beginning_offsets(tps), 15)
            except Exception as exc:  # a broker hiccup must not stop the worker; retried
                log.warning("consumer lag not refreshed (%s: %s); retrying in %.0f s",
                            type(exc).__name__, exc, self.settings.metrics_interval)
                return
            if sorted(self.assigned) != wanted:
                return  # a rebalance happened meanwhile; its own refresh follows
            lags: dict[tuple[str, int], int] = {}
            for tp in tps:
                meta = committed.get(tp)
                lags[(tp.topic, tp.partition)] = consumer_lag(
                    ends[tp], None if meta is None else meta.offset, beginnings[tp])
            self.lags = lags

    def families(self) -> Iterable[Any]:
        """``metering_consumer_lag_records`` and ``metering_assigned_partitions``."""
        lag = family("metering_consumer_lag_records", GaugeMetricFamily,
                     labels=["group", "topic", "partition"])
        for (topic, partition), value in sorted((self.lags or {}).items()):
            lag.add_metric([self.group, topic, str(partition)], value)
        yield lag
        assigned = family("metering_assigned_partitions", GaugeMetricFamily, labels=["topic"])
        for topic in sorted(self.topics):
            assigned.add_metric([topic], sum(1 for t, _ in self.assigned if t == topic))
        yield assigned

    def readiness(self) -> Readiness:
        """See :func:`metering.observe.readiness`."""
        return readiness(self.rebalanced and bool(self.assigned), self.lags,
                         self.settings.ready_max_lag)


class _Collector:
    def __init__(self, collect: Callable[[], Iterable[Any]]) -> None:
        self.collect = collect


class Observability:
    """The registry, the latency histogram and the HTTP pages of one process.

    Args:
        app: the Faust app whose web server and rebalance signals are used.
        role: ``worker`` or ``archive`` (a label of ``metering_build_info``).
        group: the app's consumer group; ``topics``: the topics whose lag it reports.
        collect: yields the process's own metric families at each scrape.
        health: extra liveness details (``status`` overrides "ok"); the process is alive
            whenever its event loop answers.
        problems: reasons the process cannot make progress now (a missing output topic,
            the broker unreachable, stuck sends); any makes ``/readyz`` answer 503.
    """

    def __init__(self, app: faust.App, settings: Settings, role: str, group: str,
                 topics: set[str], collect: Callable[[], Iterable[Any]],
                 health: Callable[[], dict[str, Any]] | None = None,
                 problems: Callable[[], list[str]] | None = None) -> None:
        self.role = role
        self.settings = settings
        self.registry = CollectorRegistry(auto_describe=False)
        self.monitor = LagMonitor(app, settings, group, topics)
        self._collect = collect
        self._health = health or dict
        self._problems = problems or list
        self.registry.register(_Collector(self._families))
        self.latency = Histogram(
            "metering_processing_latency_seconds",
            BY_NAME["metering_processing_latency_seconds"].help,
            buckets=LATENCY_BUCKETS, registry=self.registry)
        monitor = self.monitor

        async def metrics(view: Any, request: Any) -> Any:
            """Prometheus metrics (text format 0.0.4)."""
            return view.bytes(self.render(), headers={"Content-Type": CONTENT_TYPE})

        async def healthz(view: Any, request: Any) -> Any:
            """Liveness: the event loop answers (200 even while writes fail)."""
            problems = self._problems()
            return view.json({"status": "ok", **self._health(),
                              **({"problems": problems} if problems else {})})

        async def readyz(view: Any, request: Any) -> Any:
            """Readiness: partitions assigned and each within ``ready_max_lag`` records, and
            nothing known to stop progress (output topics exist, broker answers)."""
            state = monitor.readiness()
            problems = self._problems()
            ready = state.ready and not problems
            lags = {f"{t}[{p}]": v for (t, p), v in sorted((monitor.lags or {}).items())}
            return view.json({"ready": ready, "reasons": [*problems, *state.reasons],
                              "lag": lags}, status=200 if ready else 503)

        async def on_assigned(assigned: set[TP]) -> None:
            monitor.on_assigned(assigned)

        async def refresh_lag() -> None:
            await monitor.refresh()

        app.page("/metrics")(metrics)
        app.page("/healthz")(healthz)
        app.page("/readyz")(readyz)
        on_partitions_assigned(app)(on_assigned)  # held strongly, as connect(weak=False)
        timer(app, settings.metrics_interval, name=f"{role}.refresh_lag")(refresh_lag)

    def _families(self) -> Iterable[Any]:
        info = family("metering_build_info", GaugeMetricFamily,
                      labels=["version", "config_hash", "role"])
        info.add_metric([__version__, self.settings.fingerprint(), self.role], 1)
        yield info
        yield from self.monitor.families()
        yield from self._collect()

    def render(self) -> bytes:
        """The Prometheus text exposition of everything this process measures."""
        data: bytes = generate_latest(self.registry)
        return data
