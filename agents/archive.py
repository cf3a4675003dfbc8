"""The archive worker: the ``usage`` topic -> the Parquet dataset (its own consumer group).

``metering archive`` (or ``faust -A agents.archive worker``) runs a Faust app whose id is
``<app_id>-archive``, so it reads the usage topic independently of billing consumers. Its
consumer hands whole fetches to a channel (:class:`agents.faustapi.BatchConsumer`, as the
worker's), not one Faust event per record; one task (:meth:`Archive.consume`) takes batches
of them (:class:`agents.fetches.FetchBatches`: at most ``archive_batch_records`` records, at
most ``archive_flush_seconds`` old) and hands each topic-partition's share to
:class:`storage.archive.ArchiveWriter`, which writes the files and the checkpoint. The
batch's partitions are marked processed (the offsets the consumer commits) only once every
file is on disk:

* a disk error (``OSError``) is retried with backoff, for as long as it takes: offsets
  stop advancing, nothing is marked, ``metering_archive_write_failures_total``
  grows and the log says what failed and what to fix;
* anything else is a bug: the process exits at once (code 70) without marking.

One archive process per directory: at start-up (before it contacts Kafka) the process takes
an exclusive lock on ``<archive_dir>/.metering-archive.lock`` and holds it until it exits. A
second archive on the same directory exits at once with code 1 (like a second ``metering
compact``), naming the directory and the holder; a lock file that cannot be created exits 4
(unwritable output).

On the first assignment of a partition, part files past its checkpoint (a batch interrupted
by a crash) are removed before consuming; Kafka re-delivers their records.

Layout: :func:`create_app` builds the app from settings and registers on it the task, the
signal handlers and the metrics of one :class:`Archive` (the writer, the lock, the
counters). Importing this module builds nothing; ``faust -A agents.archive worker`` reads
:data:`app`, built on first use by ``create_app(load_settings())``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agents.cli.exits import EXIT_FAILED, EXIT_OUTPUT
from agents.faustapi import (
    EXIT_STUCK,
    batch_consumer,
    fetch_channel,
    on_partitions_assigned,
    on_partitions_revoked,
    on_worker_init,
    subscribe,
    task,
    use_batch_fetches,
)
from agents.faustapp import make_app
from agents.fetches import FetchBatches
from agents.observe import Observability, family
from metering.periods import PeriodGrid, as_period
from metering.settings import Settings, load_settings
from storage.archive import LOCK_NAME, ArchiveWriter, BatchResult
from storage.dataset import DirectoryLock, LockHeldError
from storage.gctune import tune_long_running

log = logging.getLogger("metering.archive")

RETRY_FIRST, RETRY_MAX = 0.5, 30.0
"""Backoff (seconds) between attempts to write a batch after a disk error."""


class ArchiveStats:
    """Counters of the archive worker (read by ``/metrics``). Times are UTC epoch seconds."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.rows = 0
        self.rejected = 0
        self.skipped = 0
        self.failures = 0
        self.last_success: float = 0.0
        self.failing = False

    def add(self, result: BatchResult) -> None:
        self.files += len(result.files)
        self.bytes += result.bytes
        self.rows += result.rows
        self.rejected += result.rejected
        self.skipped += result.skipped
        self.last_success = time.time()
        self.failing = False


class Archive:
    """One archive's writer, directory lock and counters, and what its app calls: the
    agent's body (:meth:`archive`), the rebalance handlers and the metric families."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer = ArchiveWriter(settings.archive_dir.resolve(),
                                    PeriodGrid(as_period(settings.period), settings.timezone))
        self.stats = ArchiveStats()
        self.lock: DirectoryLock | None = None
        """The directory lock, held from worker start-up until the process exits."""

    def take_lock(self) -> None:
        """Take the archive directory's lock, or exit: 1 if another archive holds it, 4 if
        the lock file cannot be created. Logging is not configured yet: the message goes to
        stderr."""
        if self.lock is not None:
            return
        root = self.writer.root
        path = root / LOCK_NAME
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        holder = f"metering archive, pid {os.getpid()} on {socket.gethostname()} since {since}"
        try:
            self.lock = DirectoryLock(path, holder)
        except LockHeldError as exc:
            print(f"metering archive: another archive process is writing {root} "
                  f"({exc.holder or 'holder unknown'}; lock file {path}). One archive per "
                  "directory: stop it, or give this one another --archive-dir.",
                  file=sys.stderr, flush=True)
            raise SystemExit(EXIT_FAILED) from None
        except OSError as exc:
            print(f"metering archive: cannot lock the archive directory {root} "
                  f"({path}): {exc.strerror or exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_OUTPUT) from None

    async def write_durably(self, topic: str, partition: int,
                            records: list[tuple[int, bytes]]) -> None:
        """Write one partition's share of a batch, retrying disk errors until it is durable."""
        loop = asyncio.get_running_loop()
        delay = RETRY_FIRST
        writer, stats = self.writer, self.stats
        while True:
            try:
                result = await loop.run_in_executor(None, writer.write_batch, topic, partition,
                                                    records)
            except OSError as exc:
                stats.failures += 1
                stats.failing = True
                log.error("archive write of %s[%d] offsets %d..%d failed: %s; nothing is "
                          "committed past it; retrying in %.1f s (fix the disk or "
                          "permissions of %s)", topic, partition, records[0][0],
                          records[-1][0], exc, delay, writer.root)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            stats.add(result)
            if result.kept_higher:
                log.warning("archive checkpoint of %s[%d] is at %d, above this batch's last "
                            "offset %d: kept (checkpoints never move backwards); is another "
                            "process writing %s?", topic, partition, result.checkpoint,
                            records[-1][0], writer.root)
            return

    async def consume(self, batches: FetchBatches, mark: Callable[[TP, int], None],
                      generation: Callable[[], int]) -> None:
        """The archive's loop: batches of usage intervals (whole fetches) -> Parquet files,
        durable before the batch's partitions are marked processed (``mark(tp, next
        offset)``: what the consumer commits). Fetches read in an older consumer group
        generation than ``generation()`` are dropped (read again from the committed
        offsets). Anything but a disk error exits the process (:data:`EXIT_STUCK`)."""
        while True:
            batch = await batches.next()
            try:
                current = [f for f in batch.fetches if f.generation == generation()]
                shares: dict[tuple[str, int], list[tuple[int, bytes]]] = {}
                for fetch in current:
                    shares.setdefault((fetch.tp.topic, fetch.tp.partition), []).extend(
                        (r.offset, r.value if isinstance(r.value, bytes) else b"")
                        for r in fetch.records)
                for (topic, partition), records in sorted(shares.items()):
                    records.sort()
                    await self.write_durably(topic, partition, records)
                for fetch in current:
                    mark(fetch.tp, fetch.next_offset)
            except Exception:
                log.critical("archive batch failed: exiting without committing (restart to "
                             "resume)", exc_info=True)
                logging.shutdown()
                os._exit(EXIT_STUCK)
            batch.done()

    async def run(self, app: faust.App) -> None:
        """:meth:`consume` on ``app``'s usage topic fetches (a task of the running app)."""
        tune_long_running()  # started: the app and its services are built (as the worker)
        settings = self.settings
        consumer = batch_consumer(app)
        batches = FetchBatches(fetch_channel(app, settings.usage_topic),
                               settings.archive_batch_records, settings.archive_flush_seconds,
                               consumer.suspend_flow)
        await self.consume(batches, consumer.mark_processed,
                           lambda: app.consumer_generation_id)

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Remove part files past the checkpoint of each newly assigned usage partition."""
        for tp in sorted(assigned):
            if tp.topic != self.settings.usage_topic:
                continue
            try:
                removed = self.writer.recover(tp.topic, tp.partition)
            except OSError:
                log.critical("cannot recover the archive of %s[%d] under %s: exiting",
                             tp.topic, tp.partition, self.writer.root, exc_info=True)
                logging.shutdown()
                os._exit(EXIT_STUCK)
            if removed:
                log.warning("removed %d part file(s) of %s[%d] written after its checkpoint "
                            "(interrupted batch; Kafka re-delivers its records): %s",
                            len(removed), tp.topic, tp.partition, ", ".join(removed))

    async def on_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self.writer.forget(tp.topic, tp.partition)

    def families(self) -> Iterable[Any]:
        """The archive's own metric families (see :mod:`agents.catalogue`)."""
        stats = self.stats
        for name, value in (
            ("metering_archive_files_written_total", stats.files),
            ("metering_archive_bytes_written_total", stats.bytes),
            ("metering_archive_rows_written_total", stats.rows),
            ("metering_archive_records_rejected_total", stats.rejected),
            ("metering_archive_records_skipped_total", stats.skipped),
            ("metering_archive_write_failures_total", stats.failures),
        ):
            yield family(name, CounterMetricFamily, value=value)
        yield family("metering_archive_last_success_timestamp_seconds", GaugeMetricFamily,
                     value=stats.last_success)
        yield family("metering_archive_failing", GaugeMetricFamily,
                     value=1.0 if stats.failing else 0.0)

    def health(self) -> dict[str, Any]:
        """Liveness details: whether writes currently fail, and the last durable batch."""
        return {"status": "failing" if self.stats.failing else "ok",
                "last_success": self.stats.last_success}


def create_app(settings: Settings, archive: Archive | None = None) -> faust.App:
    """The archive's Faust app for ``settings`` (consumer group ``<app_id>-archive``, web
    on ``archive_web_port``), with the agent, rebalance handlers, directory lock (taken at
    worker init) and ``/metrics``, ``/healthz``, ``/readyz`` of ``archive`` (default: a new
    :class:`Archive` of ``settings``). Each call builds a new app."""
    app = make_app(settings, app_id=f"{settings.app_id}-archive",
                   web_port=settings.archive_web_port)
    archive = archive or Archive(settings)
    # internal=True: Faust creates the topic at start-up if it is missing (the archive may
    # start before the worker has produced anything; subscribing to a missing topic would
    # wait for a metadata refresh, minutes). An existing topic is used as it is.
    usage_topic = app.topic(settings.usage_topic, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw", allow_empty=True,
                            internal=True, partitions=settings.partitions)
    # Whole fetches, not a Faust event per record (agents.fetches): one task reads them.
    use_batch_fetches(app, [settings.usage_topic])
    subscribe(app, usage_topic)

    async def archive_usage() -> None:
        await archive.run(app)

    task(app)(archive_usage)
    on_worker_init(app)(archive.take_lock)
    on_partitions_assigned(app)(archive.on_assigned)
    on_partitions_revoked(app)(archive.on_revoked)
    # ``/metrics``, ``/healthz`` and ``/readyz`` on ``archive_web_port``.
    Observability(app, settings, "archive", f"{settings.app_id}-archive",
                  {settings.usage_topic}, archive.families, archive.health)
    return app


_default: faust.App | None = None


def __getattr__(name: str) -> Any:
    """``app``: the archive app of the ``METERING_*`` environment, built on first use (what
    ``faust -A agents.archive worker`` reads)."""
    global _default
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _default is None:
        _default = create_app(load_settings())
    return _default
