"""What metering remembers: the per-resource and per-account state (contract sections 3-6).

:class:`EntityState` is one resource's state (its open intervals per (usage type, zone key,
account), attribute changes, closes still to settle or claim, last applied offsets per
lane); :class:`AccountState` one account's (domain, deletion, last applied offsets).
Both are plain mutable values: :mod:`metering.lifecycle` steps them, :mod:`metering.codec`
encodes them for RocksDB and changelogs. Instants are UTC epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from metering.events import Source

SERVICE_OFFERING: Final = 0
TEMPLATE: Final = 1
DISK_OFFERING: Final = 2

FOREVER: Final = 2**62
"""A ``settled`` instant after every event: closed intervals are emitted at once."""
BEFORE_ANY: Final = -(2**62)
"""An instant before every event: no remembered close has expired."""
MAX_ORPHANS: Final = 16
"""Remembered closes kept per (usage type, account) of one resource; the earliest goes
first (counted ``orphan_close``), so hostile input cannot grow one state without bound."""
LEGACY_ACCOUNT: Final = ""
"""The account of an ``ends`` entry decoded from a version 1 state, which kept ``ends`` per
(usage type, zone key) for every account: it applies to a key of any account that has no
entry of its own (never a real account: usage events without an account are rejected)."""

SlotKey = tuple[int, str, str]
"""(usage type, zone key, account); the zone key is ``""`` unless the type is TEMPLATE or
ISO."""


@dataclass(slots=True)
class Slot:
    """An open interval. ``start`` is where its not-yet-emitted remainder begins (UTC ms)."""

    account_id: str
    zone_id: str | None
    start: int
    opened_by: Source


@dataclass(slots=True)
class Held:
    """A closed interval ``[slot.start, end)`` not yet emitted (see :func:`release`).

    ``reason`` and ``src`` are the closing event type and record (UTC ms for ``end``);
    ``record_ms`` the closing record's timestamp (UTC ms) if known, for latency metrics.
    """

    key: SlotKey
    slot: Slot
    end: int
    reason: str
    src: Source
    record_ms: int | None = None


@dataclass(slots=True)
class Orphan:
    """A close of what was not open, remembered for an earlier open arriving later (rule 3).

    ``end`` is the close's event time (UTC ms), ``reason`` its event type, ``src`` its
    record. ``every_zone`` marks a TEMPLATE/ISO delete without zone (``key`` then has zone
    key ``""``): it closes whichever zone an earlier open arrives for and is not used up.
    """

    key: SlotKey
    end: int
    reason: str
    src: Source
    every_zone: bool = False


@dataclass(slots=True)
class EntityState:
    """Everything metering remembers about one resource.

    Attributes:
        slots: open intervals by (usage type, zone key, account).
        changes: attribute changes ``(time_ms, attribute, value)`` sorted by time, where
            attribute is :data:`SERVICE_OFFERING`, :data:`TEMPLATE` or :data:`DISK_OFFERING`.
        offsets: last applied record offset per source lane (``topic/partition``).
        ends: end (UTC ms) of the last interval emitted per slot key, so a reopen never
            overlaps what was already emitted; once the slot is closed, its *last close*: an
            open at or before it is stale (rule 2).
        empty_ends: slot keys whose last emitted interval was zero-length (at ``ends``):
            a second zero-length close at that instant would repeat its ``interval_id``
            with other content, so it is not emitted (counted ``zero_length_repeat``).
        lane: the lane of the last applied record; its watermark cuts this entity's periods.
        held: closed intervals waiting until every lane has passed their end (in close
            order); their attributes are looked up when they are released.
        orphans: closes of what was not open, in arrival order, until an earlier open claims
            them or they expire (rule 3).
    """

    slots: dict[SlotKey, Slot] = field(default_factory=dict)
    changes: list[tuple[int, int, str]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    ends: dict[SlotKey, int] = field(default_factory=dict)
    lane: str = ""
    empty_ends: set[SlotKey] = field(default_factory=set)
    held: list[Held] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)

    def accounts(self) -> set[str]:
        """Accounts owning at least one open interval of this entity."""
        return {s.account_id for s in self.slots.values()}


@dataclass(slots=True)
class AccountState:
    """What metering remembers about an account.

    ``domain_id`` comes from ``ACCOUNT.CREATE`` (rule 7); ``deleted_at`` (UTC ms) and
    ``deleted_by`` from a completed ``ACCOUNT.DELETE`` (rule 5); ``offsets`` are the last
    applied account records per lane (redelivery, rule 6).
    """

    domain_id: str | None = None
    deleted_at: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    deleted_by: Source | None = None
