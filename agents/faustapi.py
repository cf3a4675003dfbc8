"""Typed entry points to the Faust APIs the agents use where Faust's own hints fall short.

faust-streaming (pinned < 0.16) ships type hints, but a few calls the agents need are too
loosely typed for mypy strict or missing from its abstract types:

* ``App.task`` and ``App.timer`` return a bare ``Callable``, so a function they decorate
  loses its type (:func:`task`, :func:`timer`);
* an agent is declared over ``StreamT``, which lacks ``take_events``; the stream it
  receives is a :class:`faust.Stream`, which has it (:func:`take_events`);
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

Each narrowing (a ``cast``) sits here once, with its reason. Nothing here changes what Faust
does: the same calls are made with the same arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import aiokafka
import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP, EventT

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


def take_events(stream: faust.StreamT[bytes], max_: int,
                within: float) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """``stream.take_events(max_, within=within)``: batches of at most ``max_`` events, each
    yielded at the latest ``within`` seconds after its first event."""
    # App.agent declares the agent's argument as StreamT; Faust passes a faust.Stream.
    return cast(faust.Stream[bytes], stream).take_events(max_, within=within)


def kafka_producer(app: faust.App) -> aiokafka.AIOKafkaProducer:
    """The aiokafka producer under ``app.producer`` (private API; raises ``NotReady``
    before the producer started). aiokafka has no type hints: the result is untyped."""
    # kafka:// brokers use the aiokafka driver, whose Producer holds the aiokafka producer.
    return cast(AIOKafkaDriverProducer, app.producer)._ensure_producer()


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
