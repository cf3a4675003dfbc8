"""Encoding of decoded events on the worker's internal topic (``metering.events``).

The ingest agent decodes each CloudStack record once and forwards what can change metering
state, keyed by resource id, together with its source coordinates (the lane and offset used
for redelivery checks) and the wall-clock time it was forwarded. Ticks carry only a wall
time and drive period closing on idle partitions. The encoding is a compact orjson array
whose first element is a kind number; it is versioned by that number.

Instants are UTC epoch milliseconds.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from metering.errors import MeteringError
from metering.events import (
    MAX_ID_CHARS,
    AccountCreated,
    AccountDeleted,
    Enrichment,
    Lane,
    Meterable,
    Source,
    UsageEvent,
)
from metering.rejects import KAFKA_RECORD_OVERHEAD, TOPIC_CHARS

MAX_ROUTED_VALUE_BYTES: Final = 6 * (4 * MAX_ID_CHARS + TOPIC_CHARS) + 512
"""Upper bound (bytes) of :func:`encode_routed` for any decoded event: at most four strings
of at most :data:`~metering.events.MAX_ID_CHARS` characters (decode rejects longer ones),
each character at most 6 bytes in JSON, the topic name, the event type, six integers and
punctuation."""

MAX_ROUTED_MESSAGE_BYTES: Final = MAX_ROUTED_VALUE_BYTES + 4 * MAX_ID_CHARS + KAFKA_RECORD_OVERHEAD
"""Upper bound (bytes) of a forwarded event as the producer sizes it (key: the resource id,
at most 4 UTF-8 bytes a character)."""

TICK: Final = 0
USAGE: Final = 1
ENRICH: Final = 2
ACCOUNT_CREATED: Final = 3
ACCOUNT_DELETED: Final = 4


class Routed(NamedTuple):
    """A forwarded event: the decoded value, its source record and the forwarding wall time.

    ``record_ms`` is the Kafka timestamp of the source record (UTC ms), for the processing
    latency metric; None when unknown (records written before it was carried).
    """

    value: Meterable
    source: Source
    wall_ms: int
    record_ms: int | None = None


class Tick(NamedTuple):
    """A period-closing tick: the sender's wall clock and its source-lane progress.

    ``lanes`` maps each source lane (``topic/partition``) the sender reads to
    ``(max_event_ms, idle_from_ms)``: the newest event time among the lane's meterable
    records that the sender had forwarded (and seen delivered) before it sent this tick
    (-1: none yet), and since when (sender's wall clock, UTC ms) it has been caught up on the
    lane without a new meterable record (see :func:`metering.observe.idle_from`). Because
    a tick is produced after those records, every partition applies it after them.
    """

    wall_ms: int
    lanes: dict[Lane, tuple[int, int]]
    inputs: dict[str, int] = {}  # noqa: RUF012 (NamedTuple default, never mutated)
    """Input topic -> its partition count: every ``topic/partition`` is a lane that must
    hold the watermark back until it reports progress (or idles), even one that has not
    delivered a record yet."""


class WireError(MeteringError, ValueError):
    """An internal record that this code did not write (a bug or a foreign producer)."""


def encode_tick(wall_ms: int, lanes: dict[Lane, tuple[int, int]] | None = None,
                inputs: dict[str, int] | None = None) -> bytes:
    """Encode a tick (``inputs``: input topic -> partition count, see :class:`Tick`)."""
    return orjson.dumps([TICK, wall_ms, {k: list(v) for k, v in (lanes or {}).items()},
                         inputs or {}])


def encode_routed(value: Meterable, src: Source, wall_ms: int,
                  record_ms: int | None = None) -> bytes:
    """Encode a decoded, meterable event with its source and forwarding time.

    The last element is ``wall_ms``, or ``[wall_ms, record_ms]`` when the source record's
    timestamp is known (both forms decode). For any value :func:`metering.decode.decode`
    returns the result is at most :data:`MAX_ROUTED_VALUE_BYTES` bytes (its strings are
    bounded by :data:`~metering.events.MAX_ID_CHARS`), far below the producer's limit.
    """
    tail = [src.topic, src.partition, src.offset,
            wall_ms if record_ms is None else [wall_ms, record_ms]]
    if isinstance(value, UsageEvent):
        return orjson.dumps([USAGE, value.event_type, value.account_id, value.resource_id,
                             value.zone_id, value.time_ms, *tail])
    if isinstance(value, Enrichment):
        return orjson.dumps([ENRICH, value.entity_id, value.time_ms, value.service_offering_id,
                             value.template_id, value.disk_offering_id, *tail])
    if isinstance(value, AccountCreated):
        return orjson.dumps([ACCOUNT_CREATED, value.account_id, value.domain_id, value.time_ms,
                             *tail])
    return orjson.dumps([ACCOUNT_DELETED, value.account_id, value.time_ms, *tail])


def decode_wire(data: bytes) -> Routed | Tick:
    """Inverse of :func:`encode_routed` / :func:`encode_tick`; raises :class:`WireError`."""
    try:
        item = orjson.loads(data)
        kind = item[0]
        if kind == TICK:
            lanes = item[2] if len(item) > 2 else {}
            inputs = item[3] if len(item) > 3 else {}
            return Tick(int(item[1]),
                        {Lane(str(k)): (int(v[0]), int(v[1])) for k, v in lanes.items()},
                        {str(t): int(n) for t, n in inputs.items()})
        *head, topic, partition, offset, wall = item
        src = Source(topic, partition, offset)
        record_ms = None
        if isinstance(wall, list):
            wall, record_ms = wall
        value: Meterable
        if kind == USAGE:
            value = UsageEvent(head[1], head[2], head[3], head[4], head[5])
        elif kind == ENRICH:
            value = Enrichment(head[1], head[2], head[3], head[4], head[5])
        elif kind == ACCOUNT_CREATED:
            value = AccountCreated(head[1], head[2], head[3])
        elif kind == ACCOUNT_DELETED:
            value = AccountDeleted(head[1], head[2])
        else:
            raise WireError(f"unknown internal record kind {kind!r}")
        return Routed(value, src, wall, record_ms)
    except (orjson.JSONDecodeError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"malformed internal record: {data[:80]!r}") from exc
