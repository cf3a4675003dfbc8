"""``metering route``: forward input records whose route key matches a pattern (issue 19).

CloudStack's event bus on RabbitMQ lets each subscriber bind to the events it needs
(``category.type.resourceType.resourceUUID`` with ``*`` and ``#``); on Kafka every event is
on one topic. This app gives other integrations (notifications, helpdesk, region sync) that
filter back: its own consumer group (``<app_id>-route``) reads the input topics (the
worker's ``input_topic`` or ``input_topics``) and forwards each record whose route key
(:func:`metering.routes.record_key`) matches a route of the ``routes`` setting to that
route's topic, unchanged: same key, same value, same timestamp, plus a header
``metering-source`` = ``topic/partition/offset``. A record matching several routes goes to
each of their topics once.

At least once: a batch's sends are acknowledged by the broker (``acks=all``) before its
offsets are committed, so a crash or a rebalance re-delivers (and re-forwards) what was not
committed, never skips it. Target topics missing at start are created (``partitions``
partitions). The rules (keys, patterns) are pure and live in :mod:`metering.routes`; this
module is only the Kafka edge.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agents.errors import RouteError
from agents.kafkaclient import aiokafka_options, compression_type
from metering.regions import input_topic_regions
from metering.routes import Route, parse_routes, record_key, targets
from metering.settings import Settings

log = logging.getLogger("metering.route")

LOG_EVERY_S = 10.0
"""Seconds between two progress lines in the log."""


def group_of(settings: Settings) -> str:
    """The consumer group of ``metering route`` (its own: the worker's is not touched)."""
    return f"{settings.app_id}-route"


@dataclass
class RouteCounts:
    """What the app did so far (records read; records forwarded, per target topic)."""

    read: int = 0
    routed: Counter[str] = field(default_factory=Counter)
    commits_lost: int = 0
    """Batches whose commit a rebalance refused (their records are forwarded again)."""


def _client_options(settings: Settings) -> dict[str, Any]:
    """Options every Kafka client of this app is created with (one place for all)."""
    return {**aiokafka_options(settings), "request_timeout_ms": 30_000}


async def ensure_topics(settings: Settings, topics: set[str]) -> None:
    """Create the target topics that do not exist (``partitions`` partitions each)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**_client_options(settings))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = sorted(topics - existing)
        if not missing:
            return
        try:
            await admin.create_topics([NewTopic(t, settings.partitions, settings.replication_factor)
                                        for t in missing])
        except Exception as exc:  # already created by another process is fine
            if "TopicAlreadyExists" not in type(exc).__name__ + str(exc):
                raise RouteError(
                    f"cannot create the route target topic(s) {', '.join(missing)}: {exc}; "
                    "create them, or allow metering to (CREATE on the topics)") from None
        log.info("created route target topic(s) %s", ", ".join(missing))
    finally:
        await admin.close()


async def _send(producer: Any, topic: str, value: bytes, **kwargs: Any) -> Any:
    """``producer.send`` (the delivery future); :class:`RouteError` if it cannot even be
    queued (e.g. no metadata for ``topic`` within the request timeout)."""
    try:
        return await producer.send(topic, value, **kwargs)
    except Exception as exc:
        raise RouteError(f"forwarding to {topic!r} failed: {exc!r}; check that the topic "
                         "exists and metering may write to it; nothing past the last "
                         "committed batch is committed (restart to resume)") from None


async def forward_batch(producer: Any, routes: list[Route], batch: dict[Any, list[Any]],
                        max_bytes: int, counts: RouteCounts) -> dict[Any, int]:
    """Forward one ``getmany`` batch (partition -> records) and wait until the broker has
    acknowledged every send; the offsets to commit (partition -> last offset + 1). Raise
    :class:`RouteError` if a send fails (then nothing of the batch may be committed).

    Each record whose route key matches goes to each of its routes' topics once,
    unchanged (key, value, timestamp) plus the header ``metering-source`` =
    ``topic/partition/offset``; ``producer`` is an aiokafka producer (``send`` returns the
    delivery future)."""
    futures: list[tuple[str, Any]] = []
    offsets: dict[Any, int] = {}
    for tp, messages in batch.items():
        for m in messages:
            source = f"{m.topic}/{m.partition}/{m.offset}".encode()
            for topic in targets(routes, record_key(m.value, max_bytes)):
                futures.append((topic, await _send(
                    producer, topic, m.value, key=m.key, timestamp_ms=m.timestamp,
                    headers=[("metering-source", source)])))
        offsets[tp] = messages[-1].offset + 1
        counts.read += len(messages)
    for topic, future in futures:  # acknowledged before anything is committed
        try:
            await future
        except Exception as exc:
            raise RouteError(f"forwarding to {topic!r} failed: {exc!r}; nothing "
                             "past the last committed batch is committed (restart "
                             "to resume)") from None
        counts.routed[topic] += 1
    return offsets


async def forward(settings: Settings, routes: list[Route], stop: asyncio.Event,
                  counts: RouteCounts) -> None:
    """Forward matching records until ``stop`` is set; raise :class:`RouteError` if a send
    or the broker fails (nothing past the failing batch is committed)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import CommitFailedError

    inputs = input_topic_regions(settings.input_topic, settings.input_topics).topics
    max_bytes = settings.max_record_bytes
    await ensure_topics(settings, {r.topic for r in routes})
    consumer = AIOKafkaConsumer(
        *inputs, **_client_options(settings), group_id=group_of(settings),
        enable_auto_commit=False, auto_offset_reset="earliest",
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=max(1000, int(settings.session_timeout * 1000) // 3),
        max_poll_records=settings.batch_size)
    producer = AIOKafkaProducer(**_client_options(settings), acks="all",
                                enable_idempotence=True, linger_ms=5,
                                compression_type=compression_type(settings))
    await producer.start()
    try:
        await consumer.start()
        log.info("routing %s -> %s (group %s)", ", ".join(inputs),
                 ", ".join(f"{r.pattern}={r.topic}" for r in routes), group_of(settings))
        logged = time.monotonic()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=settings.batch_size)
            offsets = await forward_batch(producer, routes, batch, max_bytes, counts)
            if offsets:
                try:
                    await consumer.commit(offsets)
                except CommitFailedError as exc:  # a rebalance moved the partitions:
                    counts.commits_lost += 1  # their new reader forwards them again
                    log.warning("commit refused after a rebalance (%s); the batch will be "
                                "forwarded again (at least once)", exc)
            if time.monotonic() - logged >= LOG_EVERY_S:
                logged = time.monotonic()
                log.info("read %d records, forwarded %s", counts.read,
                         ", ".join(f"{t}: {n}" for t, n in sorted(counts.routed.items()))
                         or "none")
    finally:
        await consumer.stop()
        await producer.stop()


def run(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT (then finish the batch in hand and exit 0); raise
    :class:`RouteError` on a failure. ``settings.routes`` must be set."""
    routes = parse_routes(settings.routes)
    counts = RouteCounts()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await forward(settings, routes, stop, counts)

    asyncio.run(main())
    log.info("stopped: read %d records, forwarded %s", counts.read,
             dict(sorted(counts.routed.items())))
    return 0
