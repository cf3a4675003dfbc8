"""Plain values produced by decoding CloudStack event-bus records.

Decoding (:mod:`metering.decode`) turns one Kafka record value into exactly one of:

* :class:`UsageEvent`: a usage event of a metered type (contract section 3);
* :class:`AccountDeleted` / :class:`AccountCreated`: account lifecycle action events that
  act on every resource of an account (rules 5 and 7);
* :class:`Enrichment`: an action event carrying offering/template keys for an entity (rule 7);
* :class:`Ignored`: well formed but not metered (other categories, ignored event types);
* :class:`Rejected`: bad input, with a :class:`RejectReason` (contract section 2).

All instants are integer milliseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple, NewType

MAX_ID_CHARS: Final = 255
"""Longest identifier (characters) accepted in ``id``, ``account``, ``zone``, ``entityuuid``,
``Domain`` and the offering/template keys (contract section 2; CloudStack uses 36-character
UUIDs). Longer ones are rejected (``field_too_long``), which bounds every key and forwarded
event the worker sends."""


class Category(StrEnum):
    """Event category, inferred from the keys of the JSON value (contract section 1)."""

    RESOURCE_STATE = "resource_state"
    ASYNC_JOB = "async_job"
    ALERT = "alert"
    ACTION = "action"
    USAGE = "usage"
    UNKNOWN = "unknown"
    INVALID = "invalid"
    """Not decodable at all (not UTF-8, not JSON, not an object): no category applies."""


class RejectReason(StrEnum):
    """Why a record was rejected. Values are stable: they appear in rejects and metrics."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_EVENT_TIME = "missing_event_time"
    INVALID_EVENT_TIME = "invalid_event_time"
    MISSING_RESOURCE_ID = "missing_resource_id"
    MISSING_ACCOUNT = "missing_account"
    INVALID_FIELD = "invalid_field"
    TOO_LARGE = "too_large"
    FIELD_TOO_LONG = "field_too_long"


Lane = NewType("Lane", str)
"""One ordered input sub-stream, ``topic/partition``: its records arrive in offset order. The
text form is the one persisted in state offsets and carried in ticks; build it with
:func:`lane_of` and read its partition with :func:`partition_of` (its topic with
:func:`topic_of`), nowhere else."""


def lane_of(topic: str, partition: int) -> Lane:
    """The lane of ``partition`` of ``topic``."""
    return Lane(f"{topic}/{partition}")


_LANES: dict[tuple[str, int], Lane] = {}
"""(topic, partition) -> lane text, so that a record's lane is looked up, not formatted."""


def _lane(topic: str, partition: int) -> Lane:
    """The lane of ``(topic, partition)``, remembered (a few thousand at most)."""
    lane = _LANES.get((topic, partition))
    if lane is None:
        if len(_LANES) >= 4096:
            _LANES.clear()
        lane = _LANES[(topic, partition)] = lane_of(topic, partition)
    return lane


def partition_of(lane: Lane) -> int:
    """The partition number of ``lane`` (the text after the last ``/``)."""
    return int(lane.rpartition("/")[2])


def topic_of(lane: Lane) -> str:
    """The topic of ``lane`` (the text before the last ``/``; topic names hold no ``/``)."""
    return lane.rpartition("/")[0]


class Source(NamedTuple):
    """Where a record came from: Kafka coordinates, or a file name and line index for replay."""

    topic: str
    partition: int
    offset: int

    @property
    def lane(self) -> Lane:
        """The ordered sub-stream this record belongs to (``topic/partition``)."""
        lane = _LANES.get(self[:2])  # (topic, partition)
        return _lane(self[0], self[1]) if lane is None else lane


class UsageEvent(NamedTuple):
    """A usage event of a metered type: acts on the intervals of ``resource_id``."""

    event_type: str
    account_id: str
    resource_id: str
    zone_id: str | None
    time_ms: int

    @property
    def category(self) -> Category:
        """Always :attr:`Category.USAGE`."""
        return Category.USAGE


class AccountDeleted(NamedTuple):
    """A successful, completed ``ACCOUNT.DELETE``: closes every open interval of the account."""

    account_id: str
    time_ms: int

    @property
    def category(self) -> Category:
        """Always :attr:`Category.ACTION`."""
        return Category.ACTION


class AccountCreated(NamedTuple):
    """``ACCOUNT.CREATE`` with a ``Domain`` key: sets ``domain_id`` for the account."""

    account_id: str
    domain_id: str
    time_ms: int

    @property
    def category(self) -> Category:
        """Always :attr:`Category.ACTION`."""
        return Category.ACTION


class Enrichment(NamedTuple):
    """Offering/template keys of a non-failed action event, for the entity ``entity_id``.

    ``service_offering_id`` and ``template_id`` apply to the entity's RUNNING_VM and
    ALLOCATED_VM intervals, ``disk_offering_id`` to its VOLUME intervals; None = not given.
    """

    entity_id: str
    time_ms: int
    service_offering_id: str | None
    template_id: str | None
    disk_offering_id: str | None

    @property
    def category(self) -> Category:
        """Always :attr:`Category.ACTION`."""
        return Category.ACTION


@dataclass(frozen=True, slots=True)
class Ignored:
    """Well formed, not metered; ``kind`` says why (e.g. ``alert``, ``usage:NET.IP6ASSIGN``)."""

    category: Category
    kind: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bad input. ``detail`` is a short human explanation; the raw bytes are kept by callers."""

    reason: RejectReason
    detail: str
    category: Category = Category.INVALID


Decoded = UsageEvent | AccountDeleted | AccountCreated | Enrichment | Ignored | Rejected
"""The result of decoding one record value."""

Meterable = UsageEvent | AccountDeleted | AccountCreated | Enrichment
"""Decoded values that change metering state."""
