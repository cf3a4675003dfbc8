"""Typed entry points to the Faust APIs the agents use where Faust's own hints fall short.

faust-streaming (pinned < 0.16) ships type hints, but a few calls the agents need are too
loosely typed for mypy strict or missing from its abstract types:

* ``App.task`` and ``App.timer`` return a bare ``Callable``, so a function they decorate
  loses its type (:func:`task`, :func:`timer`);
* signal receivers must accept ``(sender, *args, signal=..., **kwargs)``; the handlers
  here take just what they use (:func:`on_partitions_assigned`,
  :func:`on_partitions_revoked`, :func:`on_worker_init`);
* the aiokafka producer behind ``app.producer`` is reached through the driver's private
  ``_ensure_producer`` (:func:`kafka_producer`).

Private Faust internals (faust-streaming 0.15.3; each pinned by
``tests/unit/test_faust_internals.py``):

* :class:`BatchConsumer` overrides the consumer's ``_drain_messages`` (one fetch of a batch
  topic's partition goes to its :class:`agents.fetches.FetchChannel`, not one Faust event
  per record), ``_new_offset``/``_filter_tps_with_pending_acks`` (the commit offset of a
  batch topic is the agent's "processed up to" mark) and ``wait_empty`` (a rebalance or a
  stop waits for the fetch in progress); its consumer thread lowers the hard-coded
  ``fetch_max_wait_ms`` (:data:`FETCH_MAX_WAIT_MS`);
* :func:`use_batch_fetches` installs it through the app's ``transport`` setter;
* :func:`partition_db` and :data:`OFFSET_KEY`: the RocksDB of one table partition and the
  key of its persisted changelog offset (``Store._db_for_partition``, ``Store.offset_key``).
* :func:`append_records`: records straight into the record batch builder of an aiokafka
  ``BatchBuilder`` (``_builder.append``, ``_relative_offset``; aiokafka 0.14, pinned by
  ``tests/unit/test_sender.py``), what ``BatchBuilder.append`` does without its per-record
  Python wrapper.
* :func:`wait_on_metadata` and :func:`admin_request`: aiokafka's private
  ``AIOKafkaClient._wait_on_metadata`` and ``AIOKafkaAdminClient._send_request``.
* :func:`install_patches` (called by :func:`agents.faustapp.make_app`; nothing is patched
  at import): ``ProducerBuffer.max_messages``, ``ProducerBuffer._send_pending`` and
  ``flush`` (a commit waits for every buffered changelog record; an undelivered one exits
  70), ``Worker._disable_spinner_if_level_below_WARN`` (no spinner),
  ``Worker._schedule_shutdown`` (a stop bounded by :data:`SHUTDOWN_GRACE`),
  ``Worker.on_setup_root_logger`` (:mod:`agents.logfilter` on the root handlers),
  ``Recovery.on_recovery_completed`` (seek before resume) and the aiokafka transport's
  ``_really_create_topic`` (an existing topic is never created again: the broker is asked
  which topics exist, not the producer's metadata).

:data:`PRIVATE_INTERNALS` lists every private method of those libraries this module relies
on; tests/unit/test_faust_internals.py pins each by the digest of its source, so an upgrade
that changes one fails there, naming it. No other module of ``agents`` reaches into them
(tests/unit/test_app_layout.py).

Each narrowing (a ``cast``) sits here once, with its reason. Nothing here changes what Faust
does: the same calls are made with the same arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import aiokafka
import faust
from aiokafka.errors import KafkaError
from faust.tables.recovery import Recovery
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from faust.worker import Worker as FaustWorker
from mode.worker import Worker as ModeWorker

from agents import logfilter
from agents.fetches import Fetch, FetchChannel

TaskFun = Callable[[], Awaitable[None]]
"""A nullary ``async def`` function run by the app (a task or a timer)."""

PartitionsHandler = Callable[[set[TP]], Awaitable[None]]
"""``async def handler(partitions)`` for a rebalance signal (assigned or revoked)."""


def task(app: faust.App) -> Callable[[TaskFun], TaskFun]:
    """``@app.task``: run the decorated function once when the worker is ready."""
    # App.task is @no_type_check; called with a function it registers it and returns it.
    return cast(Callable[[TaskFun], TaskFun], app.task)


def timer(app: faust.App, interval: float,
          name: str | None = None) -> Callable[[TaskFun], TaskFun]:
    """``@app.timer(interval, name=name)``: run the decorated function every ``interval``
    seconds (``name``: the timer's name in Faust's logs; default the function's)."""
    # App.timer returns a bare Callable: a decorator that registers a nullary wrapper
    # (``around_timer(*args)``) of the function as a task and returns that wrapper.
    return cast(Callable[[TaskFun], TaskFun], app.timer(interval, name=name))


def kafka_producer(app: faust.App) -> aiokafka.AIOKafkaProducer:
    """The aiokafka producer under ``app.producer`` (private API; raises ``NotReady``
    before the producer started). aiokafka has no type hints: the result is untyped."""
    # kafka:// brokers use the aiokafka driver, whose Producer holds the aiokafka producer.
    return cast(AIOKafkaDriverProducer, app.producer)._ensure_producer()


async def wait_on_metadata(producer: aiokafka.AIOKafkaProducer, topic: str) -> Any:
    """Wait until ``producer`` has metadata for ``topic`` (its partitions), as its ``send``
    does first (aiokafka's private ``AIOKafkaClient._wait_on_metadata``; raises
    ``UnknownTopicOrPartitionError`` after the producer's request timeout)."""
    return await producer.client._wait_on_metadata(topic)


async def admin_request(admin: Any, request: Any, node_id: int | None = None) -> Any:
    """Send a protocol ``request`` (e.g. ``CreateAclsRequest``, ``ProduceRequest``) through
    the aiokafka admin client ``admin`` to broker ``node_id`` (None: a random one), and
    return the response (aiokafka's private ``AIOKafkaAdminClient._send_request``: the admin
    client has no public call for requests it does not wrap)."""
    return await admin._send_request(request, node_id=node_id)


def on_partitions_assigned(app: faust.App) -> Callable[[PartitionsHandler], PartitionsHandler]:
    """Decorator: call ``handler(assigned)`` after each rebalance with the partitions
    assigned to this worker (``app.on_partitions_assigned``)."""

    def register(handler: PartitionsHandler) -> PartitionsHandler:
        async def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            await handler(*args)  # Faust sends (sender, assigned, signal=...)

        app.on_partitions_assigned.connect(receive)
        return handler

    return register


def on_partitions_revoked(app: faust.App) -> Callable[[PartitionsHandler], PartitionsHandler]:
    """Decorator: call ``handler(revoked)`` at each rebalance with the partitions taken
    from this worker (``app.on_partitions_revoked``)."""

    def register(handler: PartitionsHandler) -> PartitionsHandler:
        async def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            await handler(*args)  # Faust sends (sender, revoked, signal=...)

        app.on_partitions_revoked.connect(receive)
        return handler

    return register


def on_worker_init(app: faust.App) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Decorator: call ``handler()`` when the worker initialises, before it contacts Kafka
    (``app.on_worker_init``)."""

    def register(handler: Callable[[], None]) -> Callable[[], None]:
        def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            handler()  # Faust sends (sender, signal=...)

        app.on_worker_init.connect(receive)
        return handler

    return register


FETCH_MAX_WAIT_MS = 100
"""How long the broker may hold a fetch for more data (ms). Faust hard-codes 1500; one
fetch covers every assigned partition, changelogs included, so with 1500 a fetch that
finds nothing new on idle changelog partitions could hold new input back 1.5 s (issue 18:
p99 at 2 000 records/s 1.9 s with 1500, 0.44 s with 100)."""

OFFSET_KEY = b"__faust\x00offset__"
"""Key under which Faust's RocksDB store keeps a table partition's persisted changelog
offset (``Store.offset_key``); recovery replays the changelog from there."""


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict ``Rdict`` (raw mode) of one partition of a RocksDB-backed table
    (``Store._db_for_partition``, opened on first use). Do not keep it across a
    rebalance: Faust drops its references on revocation so the RocksDB lock is released."""
    return table.data._db_for_partition(partition)


class _ShortWaitConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with :data:`FETCH_MAX_WAIT_MS` instead of 1500."""

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start() into its Fetcher
        return consumer


class BatchConsumer(AIOKafkaDriverConsumer):
    """Faust's aiokafka consumer that hands whole fetches of batch topics to channels.

    Records of a topic that has a :class:`FetchChannel` (``transport.channels``) go to it
    as one :class:`Fetch` per partition and fetch, in offset order, without a Faust event
    per record; their commit offset is what :meth:`mark_processed` says (the channel's
    reader calls it once every effect of a fetch is acknowledged). Every other topic (the
    tables' changelogs: recovery, standbys) keeps Faust's per-record path and acks.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._processed: dict[TP, int] = {}

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return _ShortWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def channels(self) -> dict[str, FetchChannel]:
        """Topic name -> its fetch channel (the batch topics)."""
        return cast(BatchTransport, self.transport).channels

    def mark_processed(self, tp: TP, next_offset: int) -> None:
        """Every record of ``tp`` before ``next_offset`` is processed and its effects are
        acknowledged: the next commit may move ``tp`` up to ``next_offset``."""
        if next_offset > self._processed.get(tp, -1):
            self._processed[tp] = next_offset

    def _new_offset(self, tp: TP) -> int | None:
        mark = self._processed.get(tp)
        if mark is not None:
            return mark
        offset: int | None = super()._new_offset(tp)
        return offset

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        for tp in list(self._processed):
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)  # commits the marks first
        for tp in revoked:
            self._processed.pop(tp, None)

    async def wait_empty(self) -> None:
        """Wait until every fetch handed to a channel is processed (its effects
        acknowledged and marked), then Faust's wait (which commits): called before
        partitions are given away and at stop. Queued fetches are processed, not dropped:
        dropping some while a later fetch of the same partition is processed would let
        the mark pass records never processed (crash-findings: Faust's own gap)."""
        for channel in {id(c): c for c in self.channels.values()}.values():
            while (channel.busy or channel.queued) and not self.should_stop:
                try:
                    await asyncio.wait_for(channel.wait_idle(), timeout=1.0)
                except TimeoutError:
                    self.log.info("waiting for the batches in progress on %s", channel.topic)
        await super().wait_empty()

    async def _hand_over(self, channel: FetchChannel, fetch: Fetch) -> bool:
        """Put ``fetch`` on ``channel`` unless the flow is suspended first (a rebalance);
        True if it was handed over."""
        put = asyncio.ensure_future(channel.put(fetch))
        stop = asyncio.ensure_future(self.suspend_flow.wait())
        try:
            await asyncio.wait({put, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not put.done():
                put.cancel()
        return put.done() and not put.cancelled() and put.exception() is None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs Kafka
        """Faust's fetch loop; batch topics get one :class:`Fetch` per partition."""
        channels = self.channels
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        app = self.app
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if not records or self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                if not self.flow_active:
                    await self.perform_seek()  # as Faust's getmany: read again later
                    continue
                generation = app.consumer_generation_id
                for tp, batch in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation:
                        break
                    if (active is not None and tp not in active
                            and tp not in self._buffered_partitions):
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    r_offset = read_offset[tp]
                    if r_offset is not None and batch and batch[0].offset < r_offset:
                        batch = [r for r in batch if r.offset >= r_offset]
                    if not batch:
                        continue
                    channel = channels.get(tp.topic)
                    if channel is not None:
                        if not await self._hand_over(channel, Fetch(tp, batch, generation)):
                            break  # suspended: read again from the committed offsets
                        read_offset[tp] = batch[-1].offset + 1
                        continue
                    for record in batch:  # Faust's own per-record path
                        await self.wait_first(callback(self._to_message(tp, record)),
                                              self.suspend_flow.wait())
                        read_offset[tp] = record.offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class BatchTransport(AIOKafkaTransport):
    """Faust's aiokafka transport with :class:`BatchConsumer` and the fetch channels."""

    Consumer = BatchConsumer

    def __init__(self, url: Any, app: faust.App, channels: dict[str, FetchChannel]) -> None:
        super().__init__(url, app)
        self.channels = channels


def use_batch_fetches(app: faust.App, topics: Iterable[str | tuple[str, ...]]) -> None:
    """Make ``app`` consume ``topics`` as whole fetches (one :class:`FetchChannel` each,
    :func:`fetch_channel`); a tuple of topics shares one channel (one reader for the input
    topics of several regions). Call before the app starts."""
    channels: dict[str, FetchChannel] = {}
    for group in topics:
        names = (group,) if isinstance(group, str) else group
        channel = FetchChannel(",".join(names))
        channels.update((name, channel) for name in names)
    app.transport = BatchTransport(app.conf.broker_consumer, app, channels)


def fetch_channel(app: faust.App, topic: str) -> FetchChannel:
    """The fetch channel of ``topic`` (see :func:`use_batch_fetches`)."""
    return cast(BatchTransport, app.transport).channels[topic]


def batch_consumer(app: faust.App) -> BatchConsumer:
    """The app's consumer, a :class:`BatchConsumer` once :func:`use_batch_fetches` ran."""
    return cast(BatchConsumer, app.consumer)


def subscribe(app: faust.App, topic: faust.TopicT) -> None:
    """Subscribe the app's consumer to ``topic`` without a Faust agent or stream on it
    (``app.topics.add``: the conductor's subscription set)."""
    app.topics.add(topic)


_NO_HEADERS: list[tuple[str, bytes]] = []  # never mutated (aiokafka's own default is shared too)


def append_records(batch: Any, keys: Sequence[bytes | None], values: Sequence[bytes],
                   order: Sequence[int], start: int = 0) -> int:
    """Append the records ``keys[i]``, ``values[i]`` for ``i`` in ``order[start:]`` to the
    aiokafka ``BatchBuilder`` ``batch`` until it is full; the position in ``order`` of the
    first record not appended (``len(order)``: all were).

    What ``batch.append(key=..., value=..., timestamp=None)`` does record by record (no key
    or value serializer: Faust's producer has none), a third cheaper per record: the
    builder's C ``append`` at the next relative offset, which gives None when the batch is
    full (aiokafka closes the batch then, as ``BatchBuilder.append`` does).
    """
    if batch.closed():
        return start
    append, offset, end = batch._builder.append, batch._relative_offset, len(order)
    n = start
    try:
        while n < end:
            i = order[n]
            if append(offset, None, keys[i], values[i], _NO_HEADERS) is None:
                batch.close()
                break
            offset += 1
            n += 1
    finally:
        batch._relative_offset = offset
    return n


# --- Patches of Faust internals (installed by install_patches, from make_app) --------------
#
# Each replaces one method of a faust-streaming (or mode-streaming) class with a version of
# the same signature; the method replaced is kept (``FAUST_*``) and pinned, by digest of its
# source, in tests/unit/test_faust_internals.py: a faust-streaming upgrade that changes one
# fails that test, naming the method to re-check. Nothing is patched at import:
# :func:`install_patches` does it, once per process (``agents.faustapp.make_app`` calls it).

PRODUCER_BUFFER_MAX_MESSAGES = 20_000
"""``ProducerBuffer.max_messages`` (Faust's default 100). Table writes queue one changelog
record each in Faust's ProducerBuffer; above ``max_messages`` every stream step waits for the
buffer to drain one message at a time ("producer buffer full" warnings), which throttled the
meter agent to a few thousand states per second. Each batch writes at most one record per
changed key, so a larger bound is safe."""

SHUTDOWN_GRACE = 20.0
"""Seconds a worker or archive may take to stop after SIGTERM/SIGINT before it exits 70.

A clean stop waits for the batch in progress, and a batch waiting for acknowledgements
that never come (an output topic deleted, the broker gone) would wait for ever. After the
grace the process exits at once without committing anything more: the batch in progress
was not acknowledged, so its records are delivered again after the restart
(at-least-once). 20 s fits inside Kubernetes' default termination grace (30 s)."""

EXIT_STUCK = 70
"""Exit code of a process that stops from inside Faust without committing more (a buffered
changelog record not delivered; a stop not finished within :data:`SHUTDOWN_GRACE`)."""

FAUST_SEND_PENDING = ProducerBuffer._send_pending
"""faust-streaming's ``ProducerBuffer._send_pending`` (wrapped by :func:`_counted_send_pending`)."""
FAUST_BUFFER_FLUSH = ProducerBuffer.flush
"""faust-streaming's ``ProducerBuffer.flush`` (replaced by :func:`_flush_all`)."""
FAUST_DISABLE_SPINNER = FaustWorker._disable_spinner_if_level_below_WARN
"""faust-streaming's ``Worker._disable_spinner_if_level_below_WARN`` (replaced by
:func:`_no_spinner`)."""
FAUST_SCHEDULE_SHUTDOWN = FaustWorker._schedule_shutdown
"""mode-streaming's ``Worker._schedule_shutdown``, inherited by Faust's (wrapped by
:func:`_schedule_bounded_shutdown`)."""
FAUST_ON_SETUP_ROOT_LOGGER = FaustWorker.on_setup_root_logger
"""faust-streaming's ``Worker.on_setup_root_logger`` (wrapped by :func:`_setup_root_logger`)."""
FAUST_ON_RECOVERY_COMPLETED = Recovery.on_recovery_completed
"""faust-streaming's ``Recovery.on_recovery_completed`` (replaced by :func:`_seek_then_resume`)."""
FAUST_REALLY_CREATE_TOPIC = AIOKafkaTransport._really_create_topic
"""faust-streaming's aiokafka ``Transport._really_create_topic`` (wrapped by
:func:`_create_unless_present`)."""


async def _create_unless_present(self: AIOKafkaTransport, owner: Any, client: Any, topic: str,
                                 partitions: int, replication: int, **kwargs: Any) -> None:
    """Faust's topic creation, skipped when the broker already has the topic.

    Faust decides that a topic exists from the client's metadata, which holds only the
    topics that client tracks, and otherwise asks the broker to create it. A broker refuses
    to create an existing topic the principal may not create (``TopicAuthorizationFailed``,
    not "exists"): the documented ACLs give the worker no CREATE on the usage and rejects
    topics and the archive none on the usage topic, which the operator created. So a
    worker or archive whose producer had not yet tracked one of them exited at start (a CI
    run of 2026-11-29). The broker's full topic list (a metadata request for every topic,
    which never creates one) decides instead; creation proceeds as Faust's when the topic
    is missing, or when the caller insists (``ensure_created``).
    """
    if not kwargs.get("ensure_created") and topic not in client.cluster.topics():
        with contextlib.suppress(KafkaError, asyncio.TimeoutError):
            present = (await asyncio.wait_for(client.fetch_all_metadata(), 30)).topics()
            if topic in present:
                owner.log.debug("Topic %r exists, skipping creation.", topic)
                return
    await FAUST_REALLY_CREATE_TOPIC(self, owner, client, topic, partitions, replication,
                                    **kwargs)

_in_flight: weakref.WeakKeyDictionary[ProducerBuffer, int] = weakref.WeakKeyDictionary()
"""Buffer -> messages its sender took off the queue and has not yet handed to aiokafka."""


async def _counted_send_pending(self: ProducerBuffer, fut: Any) -> None:
    """Faust's ``_send_pending``, counting the message in flight until it reached aiokafka;
    a message the broker refuses stops the process (:func:`_exit_if_failed`)."""
    _in_flight[self] = _in_flight.get(self, 0) + 1
    try:
        await FAUST_SEND_PENDING(self, fut)
    finally:
        _in_flight[self] -= 1
    fut.add_done_callback(_exit_if_failed)


def _exit_if_failed(fut: Any) -> None:
    """Exit 70 at once if a buffered message (a table's changelog record) was not delivered.

    Faust's ``Topic._on_published`` only logs a failed send, and the offsets would then be
    committed past the state change it carried: the state would be lost with the RocksDB
    directory. Exiting without committing more re-delivers its input after the restart.
    """
    if fut.cancelled() or fut.exception() is None:
        return
    log = logging.getLogger("metering.worker")
    log.critical("changelog record not delivered (%r): exiting %d without committing more "
                 "(at-least-once: restart to resume)", fut.exception(), EXIT_STUCK)
    logging.shutdown()
    os._exit(EXIT_STUCK)


async def _flush_all(self: ProducerBuffer) -> None:
    """Wait until every buffered message has been handed to aiokafka (no give-up).

    Faust's ``ProducerBuffer.flush`` (``flush_atmost(None)``) gives up after 0.1 s without a
    message sent, and does not wait for the message its sender task has taken off the queue
    but not yet handed to aiokafka. The consumer's commit calls ``producer.flush()`` and then
    commits the acknowledged offsets, so a changelog record still in the buffer (a batch
    writes one per changed key: thousands at an hourly cut; a busy CPU slows the sender)
    could be committed past and lost with the process (kill -9 with the RocksDB directory
    lost: state missing, input committed; issue 18's intermittent loss). This waits for the
    queue to be empty and nothing in flight; aiokafka's own ``flush`` (called next by the
    driver) then waits for delivery. A producer that stops running with messages queued
    raises as Faust's did (the commit fails; nothing is committed).
    """
    while self.size or _in_flight.get(self, 0):
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")
        self.message_sent.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


def _no_spinner(self: FaustWorker, level: int) -> None:
    """No terminal spinner at any level. At ``--loglevel warn`` and above Faust's worker keeps
    one and sets the *root* logger to DEBUG for it, so every ``log.debug`` call in
    aiokafka/Faust builds a LogRecord (measured ~12 % of the worker's throughput,
    BENCHMARKS.md); the root logger keeps the requested level."""
    self.spinner = None


def _setup_root_logger(self: FaustWorker, logger: logging.Logger, level: int) -> None:
    """Faust's hook once mode configured the root logger (before stderr is redirected to
    it), then :func:`agents.logfilter.install`: repeated library messages thinned out,
    thread exceptions logged as one record."""
    FAUST_ON_SETUP_ROOT_LOGGER(self, logger, level)
    logfilter.install(logger.handlers)


def _force_exit(signum: int) -> None:
    log = logging.getLogger("metering.worker")
    log.critical("shutdown on signal %d not finished after %.0f s (a batch waits for sends "
                 "the broker does not acknowledge?): exiting %d without committing more "
                 "(at-least-once: the rest is delivered again after restart)",
                 signum, SHUTDOWN_GRACE, EXIT_STUCK)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os._exit(EXIT_STUCK)


def _schedule_bounded_shutdown(self: ModeWorker, signal: signal.Signals) -> None:
    """mode's ``_schedule_shutdown``; the first signal also starts a :data:`SHUTDOWN_GRACE`
    timer that exits the process (:data:`EXIT_STUCK`) if the stop has not finished by then."""
    if not self._signal_stop_time:  # the first signal starts the grace period
        timer = threading.Timer(SHUTDOWN_GRACE, _force_exit, args=(int(signal),))
        timer.daemon = True  # a clean stop in time exits without waiting for it
        timer.start()
    FAUST_SCHEDULE_SHUTDOWN(self, signal)


async def _seek_then_resume(self: Recovery, generation_id: int = 0) -> None:
    """Faust's ``Recovery.on_recovery_completed`` with one change: the stream partitions are
    sought to their committed offsets *before* they are resumed (faust-streaming 0.15.3
    resumes them first).

    After a restore from the changelogs the Fetcher is already running, so Faust's order let
    it deliver stream records from the committed offset C before ``perform_seek`` reset the
    consumer's read offset to C; the next record of the fetch in progress (offset P > C + 1)
    then looked like a hole in the log and ``Consumer._add_gap`` counted C+1..P as acked.
    The offsets were committed up to P after the first batch, while the records after it were
    still waiting to be processed: a crash then lost them (issue 18: a kill -9 with the RocksDB
    directory lost, the opens of some resources never applied, their hourly pieces missing).
    Sought while paused, the partitions are delivered once, from C, without a gap.
    """
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id "
                         f"{self.app.consumer_generation_id} param {generation_id}")
        return
    if assignment:  # still paused: nothing is fetched from the old position meanwhile
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(),
                         timeout=self.app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


PATCHES: tuple[tuple[type, str, Any], ...] = (
    (ProducerBuffer, "_send_pending", _counted_send_pending),
    (ProducerBuffer, "flush", _flush_all),
    (FaustWorker, "_disable_spinner_if_level_below_WARN", _no_spinner),
    (FaustWorker, "_schedule_shutdown", _schedule_bounded_shutdown),
    (FaustWorker, "on_setup_root_logger", _setup_root_logger),
    (Recovery, "on_recovery_completed", _seek_then_resume),
    (AIOKafkaTransport, "_really_create_topic", _create_unless_present),
)
"""(class, method name, replacement) of every Faust method :func:`install_patches` replaces."""


def install_patches() -> None:
    """Install the patches of Faust internals above, once per process (later calls change
    nothing). They apply to every Faust app of the process: the worker's and the archive's
    need the same ones (and an app built without them would not be one of ours)."""
    ProducerBuffer.max_messages = PRODUCER_BUFFER_MAX_MESSAGES
    for cls, name, replacement in PATCHES:
        setattr(cls, name, replacement)


def patches_installed() -> bool:
    """Whether :func:`install_patches` ran in this process."""
    return (ProducerBuffer.max_messages == PRODUCER_BUFFER_MAX_MESSAGES
            and all(getattr(cls, name) is fn for cls, name, fn in PATCHES))


PRIVATE_INTERNALS: dict[str, str] = {
    "faust.transport.producer:ProducerBuffer._send_pending":
        "wrapped by _counted_send_pending (messages in flight; exit on a failed send)",
    "faust.transport.producer:ProducerBuffer.flush":
        "replaced by _flush_all (Faust's gives up after 0.1 s without progress)",
    "faust.transport.producer:ProducerBuffer.flush_atmost":
        "what Faust's flush runs; its give-up is why _flush_all exists",
    "faust.worker:Worker._disable_spinner_if_level_below_WARN":
        "replaced by _no_spinner (no spinner, root logger kept at its level)",
    "faust.worker:Worker.on_setup_root_logger":
        "calls _disable_spinner_if_level_below_WARN before it installs the spinner; "
        "wrapped by _setup_root_logger (agents.logfilter on the root handlers)",
    "mode.worker:Worker._schedule_shutdown":
        "wrapped by _schedule_bounded_shutdown (reads _signal_stop_time)",
    "faust.tables.recovery:Recovery.on_recovery_completed":
        "copied by _seek_then_resume with the seek moved before the resume",
    "faust.transport.drivers.aiokafka:Transport._really_create_topic":
        "wrapped by _create_unless_present (asks the broker whether the topic exists)",
    "faust.transport.consumer:Consumer._drain_messages":
        "overridden by BatchConsumer._drain_messages (whole fetches to channels)",
    "faust.transport.consumer:Consumer._new_offset":
        "overridden by BatchConsumer._new_offset (commit offset = the processed mark)",
    "faust.transport.consumer:Consumer._filter_tps_with_pending_acks":
        "extended by BatchConsumer (partitions with a processed mark commit too)",
    "faust.transport.consumer:Consumer.wait_empty":
        "extended by BatchConsumer.wait_empty (waits for the fetches handed over)",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer":
        "extended by _ShortWaitConsumerThread (sets the consumer's _fetch_max_wait_ms)",
    "faust.transport.drivers.aiokafka:Producer._ensure_producer":
        "kafka_producer: the aiokafka producer under app.producer",
    "faust.stores.rocksdb:Store._db_for_partition":
        "partition_db: one table partition's Rdict, written in batches by agents.state",
    "aiokafka.admin.client:AIOKafkaAdminClient._send_request":
        "admin_request: CreateAcls (agents.acls), an empty Produce (agents.kafkacheck)",
    "aiokafka.client:AIOKafkaClient._wait_on_metadata":
        "wait_on_metadata: a topic's metadata before a batch is built for it",
    "aiokafka.producer.message_accumulator:BatchBuilder.append":
        "append_records: its _builder.append and _relative_offset, without the wrapper",
}
"""Every private faust-streaming / mode-streaming / aiokafka method this module relies on
("module:Class.method" -> how), each pinned by the digest of its source in
tests/unit/test_faust_internals.py: after an upgrade that changes one, that test names it."""
