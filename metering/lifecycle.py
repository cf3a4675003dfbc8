"""The per-resource lifecycle state machine (contract sections 3 and 4).

State is kept per *entity* (the resource UUID in the usage event's ``id``): one
:class:`EntityState` holds the open interval of each usage type (and zone, for TEMPLATE and
ISO) and account of that resource (rule 4a: an event of one account never touches another
account's interval of the same resource id), the offering/template attributes learnt from
action events, the closes of what was not open that an earlier open may still claim (rule
3), and the last applied record offset per source lane (for redelivery, rule 6).

The functions here do no I/O, read no clock and never raise on data. They take ownership of
the state they are given and return it (updated in place for speed) with the intervals to
emit. Instants are UTC epoch milliseconds; intervals are half-open ``[start, end)``.

Determinism: an emitted row depends only on the input records, not on when it is emitted.
Records of one resource arrive through several source lanes (CloudStack keys its usage and
action events differently), so a close may be applied before an action event of another lane
that precedes it in event time (for instance ``VM.UPGRADE``'s new offering). A closed
interval is therefore *held* (:class:`Held`) until every lane has passed its end (the
``settled`` instant the engine passes in), and only then built and emitted by
:func:`release`, with whatever attributes and deletions event time says.
Pieces that end at a period boundary while the resource stays open are always
``final=false, close_reason="period"`` with the opening record as lineage, whether a tick
(streaming), a later event or the end of a replay emits them; attributes are looked up by
event time (the latest change at or before the piece's last millisecond).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from metering.events import Enrichment, Source, UsageEvent
from metering.intervals import (
    MS_PER_HOUR,
    SCHEMA_VERSION,
    CloseReason,
    UsageInterval,
    id_prefix,
    interval_id,
    resource_key,
)
from metering.periods import PeriodGrid
from metering.usage_types import CLOSE, NAMES, OPEN, TRANSITIONS, ZONE_KEYED, UsageType

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


@dataclass(frozen=True, slots=True)
class Transition:
    """Result of one step: the new state, the intervals to emit, and what happened.

    ``notes`` name the contract rules that applied, for metrics: ``duplicate`` (rule 6),
    ``reopen_ignored`` and ``stale_open`` (rule 2), ``orphan_close_remembered``,
    ``orphan_close_applied`` and ``orphan_close`` (rule 3: a remembered close that expired,
    was dropped, or was a repeat no open can claim), ``zero_length`` (rule 4).
    """

    state: EntityState
    intervals: tuple[UsageInterval, ...]
    notes: tuple[str, ...]


DomainLookup = Callable[[str], str | None]
DeletionLookup = Callable[[str], "tuple[int, Source] | None"]
"""account id -> (deletion time UTC ms, the ACCOUNT.DELETE record) or None."""


def _never_deleted(_account: str) -> tuple[int, Source] | None:
    return None


def _attr(changes: list[tuple[int, int, str]], kind: int, cutoff: int) -> str | None:
    value: str | None = None
    for t, k, v in changes:
        if t > cutoff:
            break
        if k == kind:
            value = v
    return value


def _attrs(
    state: EntityState, usage_type: int, a: int, b: int
) -> tuple[str | None, str | None]:
    """(offering_id, template_id) for piece ``[a, b)`` of ``usage_type``."""
    if not state.changes:
        return None, None
    cutoff = b - 1 if b > a else a
    if usage_type == UsageType.RUNNING_VM or usage_type == UsageType.ALLOCATED_VM:
        return (
            _attr(state.changes, SERVICE_OFFERING, cutoff),
            _attr(state.changes, TEMPLATE, cutoff),
        )
    if usage_type == UsageType.VOLUME:
        return _attr(state.changes, DISK_OFFERING, cutoff), None
    return None, None


_new_row = tuple.__new__


def _emit(
    state: EntityState,
    key: SlotKey,
    slot: Slot,
    resource_id: str,
    start: int,
    end: int,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    last_final: bool,
    last_reason: str,
    last_src: Source,
    out: list[UsageInterval],
) -> None:
    """Append the pieces of ``[start, end)`` split at period boundaries to ``out``.

    Every piece but the last ends on a boundary: ``final=false``, ``close_reason="period"``,
    lineage = the opening record. The last piece gets ``last_final``/``last_reason``/
    ``last_src`` unless it too ends on a boundary without being final (then ``period``).
    ``end == start`` gives one zero-length piece (only meaningful when ``last_final``).
    """
    usage_type = key[0]
    name = NAMES[usage_type]
    rkey = resource_key(usage_type, resource_id, slot.zone_id)
    account = slot.account_id
    prefix = id_prefix(usage_type, account, rkey)
    domain = domain_of(account)
    zone = slot.zone_id
    opened = slot.opened_by
    changes = state.changes
    step = grid.fixed_step
    a = start
    period_start, boundary = grid.bounds(a)
    while True:
        b = boundary if boundary < end else end
        last = b == end
        if last:
            final = last_final
            reason = last_reason if (final or b != boundary) else CloseReason.PERIOD
            src = last_src if (final or b != boundary) else opened
        else:
            final, reason, src = False, CloseReason.PERIOD, opened
        offering = template = None
        if changes:
            offering, template = _attrs(state, usage_type, a, b)
        duration = b - a
        out.append(
            _new_row(
                UsageInterval,
                (
                    f"{prefix}{a:016x}" if duration
                    else interval_id(usage_type, account, rkey, a, True),
                    account, domain, zone,
                    usage_type, name, resource_id, offering, template, a, b, duration,
                    duration / MS_PER_HOUR, period_start, final, reason, src.topic,
                    src.partition, src.offset, SCHEMA_VERSION,
                ),
            )
        )
        if last:
            return
        a = period_start = b
        boundary = b + step if step else grid.next_boundary(b)


def _cut_slot(
    state: EntityState,
    key: SlotKey,
    slot: Slot,
    resource_id: str,
    upto: int,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    last_reason: str,
    out: list[UsageInterval],
) -> None:
    """Emit the still-open slot's pieces up to ``upto`` (not a close); move its start."""
    if upto <= slot.start:
        return
    _emit(state, key, slot, resource_id, slot.start, upto, grid, domain_of, False,
          last_reason, slot.opened_by, out)
    slot.start = upto
    state.ends[key] = upto
    state.empty_ends.discard(key)


def _close_slot(
    state: EntityState,
    key: SlotKey,
    slot: Slot,
    resource_id: str,
    at: int,
    reason: str,
    src: Source,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    out: list[UsageInterval],
    notes: list[str],
    settled: int = FOREVER,
) -> None:
    """Close the slot at ``at``: period pieces, then the final piece (zero-length if early).

    If ``at`` is after ``settled`` the pieces are held (:class:`Held`) instead of emitted.
    """
    start = slot.start
    if at < start:
        notes.append("zero_length")
    end = at if at > start else start
    if end == start:
        # Opened and closed twice at one instant (CloudStack's clock has 1 s resolution; a
        # resize or restart on a period boundary): the first zero-length interval already
        # says it; a second would share its id (rule 9) with different content.
        if key in state.empty_ends and state.ends.get(key) == start:
            notes.append("zero_length_repeat")
            return
        state.empty_ends.add(key)
    else:
        state.empty_ends.discard(key)
    state.ends[key] = end
    if end > settled:
        slot.start = start
        state.held.append(Held(key, slot, end, reason, src))
        return
    _emit(state, key, slot, resource_id, start, end, grid, domain_of, True, reason, src, out)


def prune_changes(state: EntityState, bound: int) -> None:
    """Drop attribute changes that no open, held or future piece can see.

    ``bound`` (UTC ms) is the earliest instant a record still to come may open an interval
    at (the engine's settled watermark); changes are kept from the latest one at or before
    the earliest of ``bound``, the open slots' starts and the held intervals' starts.
    """
    changes = state.changes
    if len(changes) <= 1:
        return
    horizon = bound
    for slot in state.slots.values():
        if slot.start < horizon:
            horizon = slot.start
    for held in state.held:
        if held.slot.start < horizon:
            horizon = held.slot.start
    keep: list[tuple[int, int, str]] = []
    latest_before: dict[int, tuple[int, int, str]] = {}
    for change in changes:
        if change[0] <= horizon:
            latest_before[change[1]] = change
        else:
            keep.append(change)
    state.changes = sorted([*latest_before.values(), *keep], key=lambda c: c[0])


def _is_duplicate(state: EntityState, src: Source) -> bool:
    lane = src.lane
    last = state.offsets.get(lane)
    if last is not None and src.offset <= last:
        return True
    state.offsets[lane] = src.offset
    state.lane = lane
    return False


def _last_end(state: EntityState, key: SlotKey) -> int | None:
    """``ends`` of ``key``, or of its usage type and zone in a version 1 state."""
    ends = state.ends
    end = ends.get(key)
    if end is None and ends:
        end = ends.get((key[0], key[1], LEGACY_ACCOUNT))
    return end


def _expire_orphans(state: EntityState, horizon: int, notes: list[str]) -> None:
    kept = [o for o in state.orphans if o.end >= horizon]
    notes.extend(["orphan_close"] * (len(state.orphans) - len(kept)))
    state.orphans = kept


def _remember(state: EntityState, key: SlotKey, at: int, reason: str, src: Source,
              every_zone: bool, notes: list[str]) -> None:
    """Remember a close of what is not open (rule 3), unless no open could ever claim it."""
    last = None if every_zone else _last_end(state, key)
    if last is not None and at <= last:
        notes.append("orphan_close")  # a repeat: an open before it would be stale
        return
    orphans = state.orphans
    orphans.append(Orphan(key, at, reason, src, every_zone))
    notes.append("orphan_close_remembered")
    same = [i for i, o in enumerate(orphans) if o.key[0] == key[0] and o.key[2] == key[2]]
    if len(same) > MAX_ORPHANS:
        del orphans[min(same, key=lambda i: orphans[i].end)]
        notes.append("orphan_close")


def _claim(state: EntityState, key: SlotKey, at: int) -> Orphan | None:
    """The earliest remembered close after ``at`` for ``key`` (used up unless for every
    zone), or None."""
    orphans = state.orphans
    fits = [i for i, o in enumerate(orphans)
            if o.end > at and o.key[0] == key[0] and o.key[2] == key[2]
            and (o.every_zone or o.key[1] == key[1])]
    if not fits:
        return None
    best = min(fits, key=lambda i: (orphans[i].end, orphans[i].every_zone))
    orphan = orphans[best]
    if not orphan.every_zone:
        del orphans[best]
    return orphan


def apply_usage(
    state: EntityState | None,
    event: UsageEvent,
    src: Source,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    deleted_of: DeletionLookup = _never_deleted,
    settled: int = FOREVER,
    orphan_horizon: int = BEFORE_ANY,
) -> Transition:
    """Apply one usage event of a metered type to its resource's state (table, rules 1-4a, 6).

    ``state`` is the resource's state or None for a resource never seen. A record already
    applied (same lane, offset not above the last applied one) changes nothing. An event of
    an account deleted at or before the event's time changes nothing (CloudStack publishes
    nothing for a deleted account; such an event can only be a straggler). Intervals
    closed after ``settled`` (UTC ms) are held for :func:`release` instead of returned.

    Opens (and splits with nothing open) at or before the key's last close are stale
    (rule 2). A close of what is not open is remembered (rule 3); an open with nothing open
    claims the earliest remembered close after it and closes there at once (through the
    normal close path, held like any close). Remembered closes before ``orphan_horizon``
    (UTC ms: the engine's settled watermark minus ``orphan_close_ttl``) have expired.
    """
    if state is None:
        state = EntityState()
    if _is_duplicate(state, src):
        return Transition(state, (), ("duplicate",))
    notes: list[str] = []
    if state.orphans and orphan_horizon > BEFORE_ANY:
        _expire_orphans(state, orphan_horizon, notes)
    deletion = deleted_of(event.account_id)
    if deletion is not None and event.time_ms >= deletion[0]:
        notes.append("after_account_delete")
        return Transition(state, (), tuple(notes))
    out: list[UsageInterval] = []
    t = event.time_ms
    rid = event.resource_id
    account = event.account_id
    slots = state.slots
    for usage_type, action in TRANSITIONS[event.event_type]:
        zoned = usage_type in ZONE_KEYED
        key: SlotKey = (usage_type, (event.zone_id or "") if zoned else "", account)
        if action == OPEN or (action != CLOSE and key not in slots):
            if key in slots:
                notes.append("reopen_ignored")
                continue
            last = _last_end(state, key)
            if last is not None and t <= last:
                notes.append("stale_open")  # a retried publish or late duplicate (rule 2)
                continue
            slot = Slot(account, event.zone_id, t, src)
            orphan = _claim(state, key, t) if state.orphans else None
            if orphan is None:
                slots[key] = slot
                continue
            notes.append("orphan_close_applied")
            end, reason, by = orphan.end, orphan.reason, orphan.src
            if deletion is not None and deletion[0] < end:  # rule 5: not past the deletion
                end, reason, by = deletion[0], CloseReason.ACCOUNT_DELETE, deletion[1]
            _close_slot(state, key, slot, rid, end, reason, by, grid, domain_of, out, notes,
                        settled)
            continue
        if zoned and action == CLOSE and event.zone_id is None:  # every zone (contract §3)
            keys = [k for k in slots if k[0] == usage_type and k[2] == account]
            if not keys:
                _remember(state, key, t, event.event_type, src, True, notes)
                continue
        elif key in slots:
            keys = [key]
        else:  # a CLOSE of what is not open
            _remember(state, key, t, event.event_type, src, False, notes)
            continue
        for k in keys:
            slot = slots.pop(k)
            _close_slot(state, k, slot, rid, t, event.event_type, src, grid, domain_of, out,
                        notes, settled)
            if action != CLOSE:  # SPLIT: reopen with the event's attributes
                start = max(t, state.ends.get(k, t))
                slots[k] = Slot(account, event.zone_id, start, src)
    return Transition(state, tuple(out), tuple(notes))


def apply_enrichment(
    state: EntityState | None, event: Enrichment, src: Source
) -> Transition:
    """Record offering/template attributes from an action event (rule 7)."""
    if state is None:
        state = EntityState()
    if _is_duplicate(state, src):
        return Transition(state, (), ("duplicate",))
    t = event.time_ms
    for kind, value in (
        (SERVICE_OFFERING, event.service_offering_id),
        (TEMPLATE, event.template_id),
        (DISK_OFFERING, event.disk_offering_id),
    ):
        if value is not None:
            insort(state.changes, (t, kind, value), key=lambda c: c[0])
    return Transition(state, (), ("enriched",))


def close_account(
    state: EntityState,
    resource_id: str,
    account_id: str,
    at: int,
    src: Source,
    grid: PeriodGrid,
    domain_of: DomainLookup,
) -> Transition:
    """Close every open interval of ``account_id`` in this entity at ``at`` now (rule 5).

    The engine normally defers this until the watermark passes ``at`` (see
    :meth:`metering.meter.Meter`); this immediate form is for a deletion that arrives late.
    """
    out: list[UsageInterval] = []
    notes: list[str] = []
    for key in [k for k, s in state.slots.items() if s.account_id == account_id]:
        slot = state.slots.pop(key)
        _close_slot(state, key, slot, resource_id, at, CloseReason.ACCOUNT_DELETE, src, grid,
                    domain_of, out, notes)
    return Transition(state, tuple(out), tuple(notes))


def cut(
    state: EntityState,
    resource_id: str,
    upto: int,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    last_reason: str = CloseReason.PERIOD,
    deleted_of: DeletionLookup = _never_deleted,
) -> list[UsageInterval]:
    """Emit the pieces of every open interval up to ``upto`` without closing it (rule 8, 10).

    Pieces ending on a period boundary are ``close_reason="period"``; a last piece ending
    elsewhere (a replay horizon) gets ``last_reason``. All are ``final=false``. An interval
    whose account was deleted at ``D <= upto`` is instead closed at ``D`` (rule 5).
    """
    out: list[UsageInterval] = []
    notes: list[str] = []
    for key in list(state.slots):
        slot = state.slots[key]
        deletion = deleted_of(slot.account_id)
        if deletion is not None and deletion[0] <= upto:
            del state.slots[key]
            _close_slot(state, key, slot, resource_id, deletion[0], CloseReason.ACCOUNT_DELETE,
                        deletion[1], grid, domain_of, out, notes)
        else:
            _cut_slot(state, key, slot, resource_id, upto, grid, domain_of, last_reason, out)
    return out


def release(
    state: EntityState,
    resource_id: str,
    settled: int,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    deleted_of: DeletionLookup = _never_deleted,
) -> list[UsageInterval]:
    """Emit the held intervals that end at or before ``settled`` (UTC ms), in close order.

    Every lane has passed their end, so every action event before it has been applied:
    the rows are what an in-order run emits. An interval whose account was deleted before
    its end is closed at the deletion instead (rule 5), as :func:`cut` would have.
    """
    out: list[UsageInterval] = []
    keep: list[Held] = []
    for h in state.held:
        if h.end > settled:
            keep.append(h)
            continue
        slot = h.slot
        deletion = deleted_of(slot.account_id)
        if deletion is not None and deletion[0] < h.end:
            if deletion[0] > slot.start:  # else opened after the deletion: nothing (rule 5)
                _emit(state, h.key, slot, resource_id, slot.start, deletion[0], grid,
                      domain_of, True, CloseReason.ACCOUNT_DELETE, deletion[1], out)
        else:
            _emit(state, h.key, slot, resource_id, slot.start, h.end, grid, domain_of, True,
                  h.reason, h.src, out)
    state.held = keep
    return out
