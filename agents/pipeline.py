"""Topics, tables, agents and the tick timer of the streaming worker.

:func:`register` declares them on a worker app (:func:`agents.app.create_app`) and returns
the :class:`Pipeline` that holds them with the worker's state (per-partition meters, lane
clocks, counters, liveness, observability). Importing this module builds nothing: no
state lives in module globals, so each app has a pipeline of its own.

Agents (one loop each, at-least-once; effects are idempotent). Both read whole fetches:
the consumer (:class:`agents.faustapi.BatchConsumer`) hands each partition's part of a
fetch to the topic's :class:`agents.fetches.FetchChannel`, and the loop marks it processed
(the offset the consumer commits) only after every effect of it is acknowledged:

* ``ingest``: input topic (CloudStack ``cs``, raw bytes, any key or none) -> decodes with
  :func:`metering.decode.decode`; rejects -> rejects topic
  (:func:`metering.rejects.reject_record`: a bounded excerpt of raw, reason, source
  coordinates); meterable events -> internal events topic keyed by resource id (account
  events go to every partition). Faust never decodes the bytes itself, so no record can
  throw a decode error into the stream.
* ``meter``: internal events topic -> per-partition :class:`metering.engine.Engine` over the
  RocksDB tables -> usage intervals to the usage topic (key = account_id, JSON value). The
  sends are awaited *before* the state is written, so a state that reached the changelog
  never hides an interval that did not reach the usage topic; a crash in between re-emits
  the same intervals (same ``interval_id`` and content) after restart. State is written
  by :meth:`agents.state.PartitionMeter.flush`: changelog acknowledged, then RocksDB, then
  the fetch is marked processed.
* ``tick`` timer (every worker): sends a tick with the wall clock and the progress of the
  input partitions it ingests to every partition of the internal topic; ticks close the
  completed periods of open resources, also on idle partitions.

Any exception in a batch that is not data (decoding never raises) means Kafka or the disk
failed (a send the broker did not acknowledge, a RocksDB write): the process exits at once
(exit code 70) without marking the fetch, so nothing is committed past it; a supervisor
restarts the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import orjson
from faust.types import TP
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agents.commits import Committer, Tail
from agents.faustapi import (
    batch_consumer,
    fetch_channel,
    kafka_producer,
    on_partitions_assigned,
    on_partitions_revoked,
    subscribe,
    task,
    timer,
    wait_on_metadata,
)
from agents.fetches import Fetch
from agents.kafkaclient import aiokafka_options
from agents.liveness import CHECK_INTERVAL as LIVENESS_INTERVAL
from agents.liveness import Liveness
from agents.observe import Observability, WorkerCounts, dir_bytes, family
from agents.sender import BatchSender
from agents.state import CUT_CHUNK, Changes, PartitionMeter, PartitionMeters, snapshot, store
from metering.decode import BROADCAST, decode, routing_key
from metering.engine import Record
from metering.events import Ignored, Lane, Rejected, Source, lane_of, partition_of, topic_of
from metering.intervals import UsageInterval, encode_intervals
from metering.observe import caught_up, event_time_lag_seconds
from metering.regions import input_topic_regions, label
from metering.rejects import reject_key, reject_record
from metering.usage_types import NAMES
from metering.watermarks import LaneReader
from metering.wire import Tick, WireError, decode_wire, encode_routed, encode_tick
from storage.gctune import tune_long_running

if TYPE_CHECKING:
    import faust

    from metering.settings import Settings

log = logging.getLogger("metering.worker")

ROCKSDB_OPTIONS: Final[dict[str, Any]] = {
    "block_cache_size": 64 << 20,  # faust's default is 2 GiB *per partition DB*
    "write_buffer_size": 32 << 20,
    "max_write_buffer_number": 2,
    "max_open_files": 512,
}

RAW: Final[dict[str, Any]] = {"key_type": bytes, "value_type": bytes,
                              "key_serializer": "raw", "value_serializer": "raw"}

RECOVER_WINDOW = 500
"""Records read back before the committed offset to find a lane's progress."""

_USAGE_TYPE_NAME = attrgetter("usage_type_name")
_DURATION_MS = attrgetter("duration_ms")
_ACCOUNT_ID = attrgetter("account_id")


def _mono_ms() -> int:
    """Monotonic milliseconds (idle time; immune to steps of the host's wall clock)."""
    return int(time.monotonic() * 1000)


def _die(what: str) -> None:
    log.critical("%s: exiting without committing (at-least-once; restart to resume)", what,
                 exc_info=True)
    logging.shutdown()
    os._exit(70)


def register(app: faust.App, settings: Settings) -> Pipeline:
    """Declare the worker's topics and tables on ``app`` (a worker app of ``settings``, its
    input and internal topics consumed as whole fetches: :func:`agents.app.create_app`),
    and register the pipeline's tasks, timers and rebalance handlers on it. Returns the
    :class:`Pipeline` that holds them and the worker's state. Each call builds a new one."""
    pipeline = Pipeline(app, settings)
    # Timers keep the names they had as module functions (Faust's logs name them).
    task(app)(pipeline.declare_output_topics)
    task(app)(pipeline.ingest)
    task(app)(pipeline.meter)
    timer(app, settings.tick_interval, name="agents.pipeline.tick")(pipeline.tick)
    on_partitions_revoked(app)(pipeline.on_revoked)
    on_partitions_assigned(app)(pipeline.on_assigned)
    pipeline.observability = Observability(
        app, settings, "worker", settings.app_id,
        {*pipeline.input_regions.topics, settings.events_topic}, pipeline.worker_families,
        problems=pipeline.liveness.problems)
    timer(app, LIVENESS_INTERVAL, name="agents.pipeline.check_liveness")(
        pipeline.check_liveness)
    return pipeline


class Pipeline:
    """The streaming worker on one Faust app: its topics and tables, per-partition meters,
    lane clocks, counters, liveness and observability, and the bodies of its tasks
    (``ingest``, ``meter``, ``declare_output_topics``), timers (``tick``,
    ``check_liveness``) and rebalance handlers. Built by :func:`register`, which declares
    the topics and tables on the app and registers the rest."""

    observability: Observability
    """``/metrics``, ``/healthz`` and ``/readyz`` on the worker's web port (set by
    :func:`register`)."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.input_regions = input_topic_regions(settings.input_topic, settings.input_topics)
        """The input topics and the region of each (``input_topics``, else ``input_topic``
        without one; :mod:`metering.regions`). A regional worker qualifies each record's ids
        by its topic's region before the engine (``meter``) and labels the rows after it
        (``_send_rows``)."""
        self.input_topic = app.topic(*self.input_regions.topics, allow_empty=True, **RAW)
        self.events_topic = app.topic(settings.events_topic, partitions=settings.partitions,
                                      internal=True, allow_empty=True, **RAW)
        self.usage_topic = app.topic(settings.usage_topic, partitions=settings.partitions,
                                     **RAW)
        self.rejects_topic = app.topic(settings.rejects_topic,
                                       partitions=settings.partitions, **RAW)
        subscribe(app, self.input_topic)  # consumed as whole fetches (faustapi.BatchConsumer)
        subscribe(app, self.events_topic)

        table: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "default": None,
                                 "partitions": settings.partitions,
                                 "options": ROCKSDB_OPTIONS}
        self.entities_table = app.Table("entities", **table)  # resource id -> encode_entity
        self.accounts_table = app.Table("accounts", **table)  # "<partition>:<account>"

        self.lane_progress: dict[Lane, LaneReader] = {}
        """Source lane -> its progress as this process read it (:class:`LaneReader`).

        The newest confirmed event time is updated only after a batch's forwarded records
        are delivered; an outlier more than ``max_watermark_jump`` ahead is held until a
        later record of the lane or the wall clock confirms it (contract rule 4b), and
        never announced before. "Idle since" is the monotonic time of the lane's last
        meterable record, moved on whenever this process is behind on the lane. Ticks carry
        the entries of :attr:`owned_lanes`."""
        self.owned_lanes: set[Lane] = set()
        """Input lanes assigned to this process: only their reader reports them in ticks."""
        self.read_to: dict[Lane, int] = {}
        """Input lane -> next offset to process (after the last delivered batch, or the
        group's committed offset found after an assignment)."""
        self.stats = WorkerCounts()
        """The worker's counters (records by category/outcome, intervals by type)."""
        self.meters = PartitionMeters(settings, self.entities_table, self.accounts_table,
                                      self.stats, (
            self._sender(self.entities_table.changelog_topic.get_topic_name(),
                         settings.partitions),
            self._sender(self.accounts_table.changelog_topic.get_topic_name(),
                         settings.partitions)))
        self.input_partitions_read: dict[str, tuple[int, float]] = {}
        """Input topic -> (its partition count, monotonic time it was read) (refreshed
        every 60 s)."""
        self.pending: list[asyncio.Future[None]] = []
        """Lane progress recoveries started by :meth:`on_assigned`."""
        self.liveness = Liveness(
            {settings.usage_topic, settings.rejects_topic, settings.events_topic},
            self._admin)
        """Output topics, broker and pending sends, reported in the log and ``/readyz``."""

    def _reader(self, lane: Lane) -> LaneReader:
        reader = self.lane_progress.get(lane)
        if reader is None:
            reader = self.lane_progress[lane] = LaneReader(idle_since_mono_ms=_mono_ms())
        return reader

    def _producer(self) -> Any:
        return kafka_producer(self.app)

    async def _waiting(self, pending: Awaitable[Any]) -> Any:
        with self.liveness.sending():  # a wait that never ends is reported (agents.liveness)
            return await pending

    def _sender(self, topic: str, partitions: int | None = None) -> BatchSender:
        """A :class:`BatchSender` to ``topic`` on the driver's aiokafka producer."""
        return BatchSender(self._producer, topic, partitions, self._waiting)

    async def declare_output_topics(self) -> None:
        """Create the usage, rejects and internal topics if missing (preflight created them
        before the worker started; brokers may disable auto-creation); the producer then
        tracks the internal topic the ticks go to (an untracked topic can drop out of its
        metadata with a batch of it waiting: :mod:`agents.sender`). Existing topics are
        left alone, whatever the producer tracks (:func:`agents.faustapi.install_patches`:
        the worker may not create the usage and rejects topics)."""
        for topic in (self.usage_topic, self.rejects_topic, self.events_topic):
            await topic.maybe_declare()
        await kafka_producer(self.app).client.add_topic(self.events_topic.get_topic_name())

    async def _fetches(self, topic: str) -> AsyncIterator[list[Fetch]]:
        """The fetches of ``topic``'s assigned partitions, in order, each time every fetch
        queued (one batch). The caller calls :meth:`_done` for each batch once every effect
        of it is acknowledged (in order)."""
        app = self.app
        channel = fetch_channel(app, topic)
        while True:
            fetches = await channel.get_all()
            # Fetches read before a rebalance are read again from the committed offsets.
            current = [f for f in fetches if f.generation == app.consumer_generation_id]
            if current:
                yield current
            else:
                channel.done()

    def _done(self, topic: str, fetches: list[Fetch]) -> None:
        """Every effect of ``fetches`` is acknowledged: their offsets may be committed."""
        consumer = batch_consumer(self.app)
        for fetch in fetches:
            consumer.mark_processed(fetch.tp, fetch.next_offset)
        fetch_channel(self.app, topic).done()

    async def ingest(self) -> None:
        """Decode CloudStack records, the queued fetches of the input partitions at a time;
        forward meterable ones, reject bad ones; mark the fetches processed once every
        record sent is acknowledged."""
        settings, stats, read_to = self.settings, self.stats, self.read_to
        input_regions, reader_of = self.input_regions, self._reader
        n_partitions = settings.partitions
        max_bytes, max_skew_ms = settings.max_record_bytes, settings.max_clock_skew_ms
        jump = settings.max_watermark_jump_ms
        events_out = self._sender(self.events_topic.get_topic_name(), n_partitions)
        rejects_out = self._sender(self.rejects_topic.get_topic_name())
        async for fetches in self._fetches(input_regions.topics[0]):
            try:
                wall = int(time.time() * 1000)
                progress: dict[Lane, list[tuple[int, int]]] = {}  # lane -> (offset, time)
                forward: list[tuple[bytes, bytes]] = []  # keyed records, sent a run at a time
                for fetch in fetches:
                    partition = fetch.tp.partition
                    topic = fetch.tp.topic
                    times = progress.setdefault(lane_of(topic, partition), [])
                    for msg in fetch.records:
                        raw = msg.value if isinstance(msg.value, bytes) else b""
                        value = decode(raw, max_bytes, wall, max_skew_ms)
                        category = value.category
                        if isinstance(value, Rejected):
                            stats.records[category, "rejected"] += 1
                            stats.rejects[value.reason] += 1
                            key = msg.key.decode("utf-8", "replace") if msg.key else None
                            body = reject_record(raw, value, topic, partition, msg.offset,
                                                 key)
                            await rejects_out.add(reject_key(msg.key), orjson.dumps(body))
                            continue
                        if isinstance(value, Ignored):
                            stats.records[category, "ignored"] += 1
                            stats.ignored[value.kind] += 1
                            continue
                        stats.records[category, "metered"] += 1
                        times.append((msg.offset, value.time_ms))
                        stamp = msg.timestamp if msg.timestamp and msg.timestamp > 0 else None
                        data = encode_routed(value, Source(topic, partition, msg.offset),
                                             wall, stamp)
                        target = routing_key(value)
                        if target == BROADCAST:  # in order with the keyed records before it
                            await events_out.add_many(forward)
                            forward.clear()
                            for p in range(n_partitions):
                                await events_out.add(None, data, p)
                        elif target is not None:
                            forward.append((target.encode(), data))
                await events_out.add_many(forward)
                folded = {lane: reader_of(lane).fold(times, jump)  # rule 4b, record by record
                          for lane, times in progress.items() if times}
                # Not pipelined (agents.commits): the next fold starts from this delivery.
                await asyncio.gather(events_out.flush(), rejects_out.flush())
                mono = _mono_ms()
                for lane, (newest, suspect) in folded.items():  # delivered: ticks announce
                    reader_of(lane).delivered(newest, suspect, jump, mono,
                                              progress[lane][-1][0])
                for fetch in fetches:
                    lane = lane_of(fetch.tp.topic, fetch.tp.partition)
                    offset = fetch.next_offset
                    read_to[lane] = max(offset, read_to.get(lane, offset))
                self._done(input_regions.topics[0], fetches)
            except Exception:
                _die("ingest batch failed")

    async def _send_rows(self, usage_out: BatchSender, rows: list[UsageInterval]) -> None:
        """Count and send a batch of the engine's rows (keyed by account; no await per
        row)."""
        if not rows:
            return
        if self.input_regions.regional:  # the one place rows get their region
            rows = [label(row) for row in rows]
        names = list(map(_USAGE_TYPE_NAME, rows))
        stats = self.stats
        stats.intervals.update(names)
        usage_ms = stats.usage_ms
        for name, duration in zip(names, map(_DURATION_MS, rows), strict=True):
            usage_ms[name] += duration
        await usage_out.add_columns(list(map(str.encode, map(_ACCOUNT_ID, rows))),
                                    encode_intervals(rows))

    def _meter_tail(self, usage_out: BatchSender, pending: list[Any], changes: Changes,
                    closed_by: list[int], fetches: list[Fetch] | None) -> Tail:
        """A meter batch's tail: its intervals acknowledged, then its states stored
        (changelog acknowledged, then RocksDB), then its fetches marked processed
        (``None``: a step of a period cut inside the batch; the batch's last tail marks
        it)."""

        async def tail() -> None:
            await usage_out.wait(pending)  # delivered before the state that produced them
            if closed_by:
                now = time.time()
                latency = self.observability.latency
                for record_ms in closed_by:
                    latency.observe(now - record_ms / 1000)
            await store(changes)
            if fetches is not None:
                self._done(self.settings.events_topic, fetches)

        return tail

    async def meter(self) -> None:
        """Apply the queued fetches of the internal partitions; their tail (intervals
        acknowledged, then states stored, then fetches marked processed) runs in order
        behind the processing of the next batch (:class:`agents.commits.Committer`)."""
        tune_long_running()  # started: the app and its services are built
        stats, meters, input_regions = self.stats, self.meters, self.input_regions
        send_rows, meter_tail = self._send_rows, self._meter_tail
        usage_out = self._sender(self.usage_topic.get_topic_name())
        tails = Committer(_die, "meter batch")
        async for fetches in self._fetches(self.settings.events_topic):
            try:
                touched: dict[int, PartitionMeter] = {}
                closed_by: list[int] = []  # record times (UTC ms) of event-closed intervals
                for fetch in fetches:
                    partition = fetch.tp.partition
                    pm = touched.get(partition) or meters.for_partition(partition)
                    touched[partition] = pm
                    engine = pm.meter
                    run: list[Record] = []  # records since the last tick: one engine batch
                    for msg in fetch.records:
                        try:
                            item = decode_wire(msg.value)
                        except WireError:
                            stats.wire_errors += 1
                            log.error("skipping foreign record on %s[%d]@%d", msg.topic,
                                      partition, msg.offset)
                            continue
                        if not isinstance(item, Tick):
                            run.append(Record(input_regions.qualify(item.value,
                                                                    item.source.topic),
                                              item.source, item.wall_ms, item.record_ms))
                            continue
                        if run:
                            await send_rows(usage_out, pm.take(engine.apply(run)))
                            run = []
                        engine.report(item.lanes, item.inputs, item.wall_ms)
                        await send_rows(usage_out, pm.take(engine.advance(CUT_CHUNK)))
                        while engine.cutting:  # a period cut of many open resources: chunk
                            # by chunk, each sent, then stored (bounded memory, same order)
                            await tails.submit(meter_tail(
                                usage_out, await usage_out.submit(),
                                snapshot(list(touched.values())), [], None))
                            await send_rows(usage_out, pm.take(engine.advance(CUT_CHUNK)))
                    if run:
                        await send_rows(usage_out, pm.take(engine.apply(run)))
                    closed_by.extend(engine.closed_record_ms)
                    engine.closed_record_ms.clear()
                # The tail stores the states of the very engines this batch used: a
                # rebalance callback may have dropped them from ``meters`` meanwhile, and a
                # fresh engine (restored from RocksDB before these writes) would lose the
                # batch's changes.
                await tails.submit(meter_tail(usage_out, await usage_out.submit(),
                                              snapshot(list(touched.values())), closed_by,
                                              fetches))
                if any(pm.caches_full for pm in touched.values()):
                    await tails.drain()  # nothing may wait to be stored while caches drop
                    for pm in touched.values():
                        pm.trim_caches()
            except Exception:
                _die("meter batch failed")

    async def _topic_partitions(self, topic: str) -> int | None:
        """Partition count of one input topic from the producer's metadata (None if
        unknown)."""
        now = time.monotonic()
        known = self.input_partitions_read.get(topic)
        if known and now - known[1] < 60:
            return known[0]
        producer = kafka_producer(self.app)
        try:
            await asyncio.wait_for(wait_on_metadata(producer, topic), 5)
        except Exception:  # no metadata yet (topic missing, broker away): no tick this time
            return known[0] if known else None
        parts = producer.client.cluster.partitions_for_topic(topic)
        if not parts:
            return None
        self.input_partitions_read[topic] = (len(parts), now)
        return len(parts)

    async def input_partitions(self) -> dict[str, int] | None:
        """Partition count of every input topic (None unless all are known)."""
        counts = {}
        for topic in self.input_regions.topics:
            count = await self._topic_partitions(topic)
            if not count:
                return None
            counts[topic] = count
        return counts

    async def _end_offsets(self, lanes: list[Lane]) -> dict[Lane, int] | None:
        """Log-end offset per input lane (None if the broker could not tell)."""
        from aiokafka import TopicPartition

        if not lanes:
            return {}
        tps = {lane: TopicPartition(topic_of(lane), partition_of(lane)) for lane in lanes}
        ends = await self.observability.monitor.end_offsets(list(tps.values()))
        if ends is None:
            return None
        return {lane: ends[tp] for lane, tp in tps.items() if tp in ends}

    async def tick(self) -> None:
        """Send a tick (wall clock + this worker's lane progress) to every internal
        partition.

        Every worker sends ticks: each reports the input partitions it is assigned, with the
        newest event time it forwarded and since when it has been caught up without new
        records (so a lane is never taken for idle while its reader is behind, paused or
        restarting). Each tick also names every input partition, so a partition that nobody
        has reported yet holds period closing back instead of being overlooked.
        """
        settings = self.settings
        inputs = await self.input_partitions()
        if not inputs:
            return  # without the full set of lanes a tick could close periods too early
        lanes = sorted(self.owned_lanes)
        ends = await self._end_offsets(lanes)
        wall, mono = int(time.time() * 1000), _mono_ms()
        report: dict[Lane, tuple[int, int]] = {}
        for lane in lanes:
            up = caught_up(self.read_to.get(lane), None if ends is None else ends.get(lane))
            report[lane] = self._reader(lane).report(up, wall, mono,
                                                     settings.max_watermark_jump_ms)
        data = encode_tick(wall, report, inputs)
        for p in range(settings.partitions):
            await self.events_topic.send(value=data, partition=p)

    async def on_revoked(self, revoked: set[TP]) -> None:
        """Partitions taken from this worker: drop their engines and lane clocks."""
        self.meters.forget({tp.partition for tp in revoked
                            if tp.topic == self.settings.events_topic})
        for tp in revoked:
            if tp.topic in self.input_regions.by_topic:  # its next reader reports it now
                lane = lane_of(tp.topic, tp.partition)
                self.owned_lanes.discard(lane)
                self.read_to.pop(lane, None)

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Partitions assigned to this worker: fresh engines, lane clocks reported from now
        on, their progress recovered (:meth:`recover_lane_progress`)."""
        self.meters.forget({tp.partition for tp in assigned
                            if tp.topic == self.settings.events_topic})
        inputs = sorted((tp.topic, tp.partition) for tp in assigned
                        if tp.topic in self.input_regions.by_topic)
        mono = _mono_ms()
        for topic, partition in inputs:  # reported from now on; not idle until caught up
            lane = lane_of(topic, partition)
            self.owned_lanes.add(lane)
            self._reader(lane).idle_since_mono_ms = mono
        if inputs:
            self.pending.append(asyncio.ensure_future(self.recover_lane_progress(inputs)))

    async def recover_lane_progress(self, partitions: list[tuple[str, int]]) -> None:
        """Rebuild :attr:`lane_progress` and :attr:`read_to` of newly assigned input
        partitions.

        Everything before the group's committed offset was forwarded and delivered by an
        earlier process, so the newest event time among the last records before it is a
        safe lower bound of the lane's progress, and the committed offset is where this
        process starts reading. Without them, a lane whose records were all consumed before
        a crash would never be reported with progress, nor ever be seen caught up (so never
        idle), and would hold period closing back. Retried with backoff (up to 30 s apart)
        while the partitions are still ours.
        """
        for attempt in range(1_000_000):
            if not any(lane_of(t, p) in self.owned_lanes for t, p in partitions):
                return  # revoked meanwhile: the next owner recovers them
            try:
                await self._recover_once(partitions)
                return
            except Exception as exc:
                delay = min(30.0, 2.0 ** attempt)
                log.warning("lane progress of %s not recovered (%r); retrying in %.0f s",
                            partitions, exc, delay)
                await asyncio.sleep(delay)

    async def _recover_once(self, partitions: list[tuple[str, int]]) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        settings = self.settings
        tps = [TopicPartition(t, p) for t, p in partitions]
        admin = AIOKafkaAdminClient(**aiokafka_options(settings), request_timeout_ms=10_000)
        reader = AIOKafkaConsumer(**aiokafka_options(settings), group_id=None,
                                  enable_auto_commit=False, request_timeout_ms=10_000)
        try:
            await admin.start()
            await reader.start()
            committed = await asyncio.wait_for(
                admin.list_consumer_group_offsets(settings.app_id, partitions=tps), 15)
            reader.assign(tps)
            wall = int(time.time() * 1000)
            for tp in tps:
                meta = committed.get(tp)
                end = -1 if meta is None else meta.offset
                lane = lane_of(tp.topic, tp.partition)
                if lane in self.owned_lanes and lane not in self.read_to:
                    self.read_to[lane] = max(0, end)  # no commit yet: read from the start
                if end <= 0:
                    continue
                reader.seek(tp, max(0, end - RECOVER_WINDOW))
                times: list[tuple[int, int]] = []  # (offset, event time)
                deadline = time.monotonic() + 15
                position = max(0, end - RECOVER_WINDOW)
                while position < end and time.monotonic() < deadline:
                    got = await reader.getmany(tp, timeout_ms=1000,
                                               max_records=RECOVER_WINDOW)
                    for msg in got.get(tp, []):
                        position = msg.offset + 1
                        if msg.offset >= end:
                            break
                        value = decode(msg.value or b"", settings.max_record_bytes, wall,
                                       settings.max_clock_skew_ms)
                        if not isinstance(value, Rejected | Ignored):
                            times.append((msg.offset, value.time_ms))
                progress = self._reader(lane)
                progress.recovered(times, settings.max_watermark_jump_ms)
                log.info("lane progress of %s/%d: committed %d, newest confirmed event %d",
                         tp.topic, tp.partition, end, progress.newest_ms)
        finally:
            await reader.stop()
            await admin.close()

    def worker_families(self) -> Iterable[Any]:
        """The worker's own metric families (see :mod:`agents.catalogue`), read at each
        scrape."""
        stats = self.stats
        consumed = family("metering_records_consumed_total", CounterMetricFamily,
                          labels=["category", "outcome"])
        for (category, outcome), value in sorted(stats.records.items()):
            consumed.add_metric([category.value, outcome], value)
        yield consumed
        rejected = family("metering_records_rejected_total", CounterMetricFamily,
                          labels=["reason"])
        for reason, value in sorted(stats.rejects.items()):
            rejected.add_metric([reason.value], value)
        yield rejected
        emitted = family("metering_intervals_emitted_total", CounterMetricFamily,
                         labels=["usage_type"])
        for name, value in sorted(stats.intervals.items()):
            emitted.add_metric([name], value)
        yield emitted
        usage = family("metering_usage_emitted_seconds_total", CounterMetricFamily,
                       labels=["usage_type"])
        for name, value in sorted(stats.usage_ms.items()):
            usage.add_metric([name], value / 1000.0)
        yield usage
        engines = list(self.meters.by_partition.items())
        open_counts: Counter[int] = Counter()
        for _, pm in engines:
            open_counts.update(pm.meter.open_counts)
        opened = family("metering_open_resources", GaugeMetricFamily, labels=["usage_type"])
        for usage_type, count in sorted(open_counts.items()):
            opened.add_metric([NAMES.get(usage_type, str(usage_type))], count)
        yield opened
        lag = family("metering_event_time_lag_seconds", GaugeMetricFamily,
                     labels=["partition"])
        now = int(time.time() * 1000)
        for partition, pm in sorted(engines):
            seconds = event_time_lag_seconds(now, pm.meter.low_watermark())
            if seconds is not None:
                lag.add_metric([str(partition)], seconds)
        yield lag
        yield family("metering_state_store_bytes", GaugeMetricFamily,
                     value=dir_bytes(self.settings.data_dir))

    async def _admin(self) -> Any:
        return (await self.observability.monitor._clients())[0]  # shared with the lag monitor

    async def check_liveness(self) -> None:
        """Report a missing output topic or an unreachable broker (see
        :mod:`agents.liveness`)."""
        await self.liveness.check()
