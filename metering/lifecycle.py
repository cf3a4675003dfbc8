"""The per-resource lifecycle state machine (contract sections 3 and 4).

State is kept per *entity* (the resource UUID in the usage event's ``id``): one
:class:`EntityState` holds the open interval of each usage type (and zone, for TEMPLATE and
ISO) of that resource, the offering/template attributes learnt from action events, and the
last applied record offset per source lane (for redelivery, rule 6).

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

SlotKey = tuple[int, str]
"""(usage type, zone key); the zone key is ``""`` unless the type is TEMPLATE or ISO."""


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
class EntityState:
    """Everything metering remembers about one resource.

    Attributes:
        slots: open intervals by (usage type, zone key).
        changes: attribute changes ``(time_ms, attribute, value)`` sorted by time, where
            attribute is :data:`SERVICE_OFFERING`, :data:`TEMPLATE` or :data:`DISK_OFFERING`.
        offsets: last applied record offset per source lane (``topic/partition``).
        ends: end (UTC ms) of the last interval emitted per slot key, so a reopen never
            overlaps what was already emitted.
        empty_ends: slot keys whose last emitted interval was zero-length (at ``ends``):
            a second zero-length close at that instant would repeat its ``interval_id``
            with other content, so it is not emitted (counted ``zero_length_repeat``).
        lane: the lane of the last applied record; its watermark cuts this entity's periods.
        held: closed intervals waiting until every lane has passed their end (in close
            order); their attributes are looked up when they are released.
    """

    slots: dict[SlotKey, Slot] = field(default_factory=dict)
    changes: list[tuple[int, int, str]] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    ends: dict[SlotKey, int] = field(default_factory=dict)
    lane: str = ""
    empty_ends: set[SlotKey] = field(default_factory=set)
    held: list[Held] = field(default_factory=list)

    def accounts(self) -> set[str]:
        """Accounts owning at least one open interval of this entity."""
        return {s.account_id for s in self.slots.values()}


@dataclass(frozen=True, slots=True)
class Transition:
    """Result of one step: the new state, the intervals to emit, and what happened.

    ``notes`` name the contract rules that applied, for metrics: ``duplicate`` (rule 6),
    ``reopen_ignored`` (rule 2), ``orphan_close`` (rule 3), ``zero_length`` (rule 4).
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
    prefix = id_prefix(usage_type, rkey)
    account = slot.account_id
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
                    f"{prefix}{a:016x}" if duration else interval_id(usage_type, rkey, a, True),
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


def apply_usage(
    state: EntityState | None,
    event: UsageEvent,
    src: Source,
    grid: PeriodGrid,
    domain_of: DomainLookup,
    deleted_of: DeletionLookup = _never_deleted,
    settled: int = FOREVER,
) -> Transition:
    """Apply one usage event of a metered type to its resource's state (table, rules 1-4, 6).

    ``state`` is the resource's state or None for a resource never seen. A record already
    applied (same lane, offset not above the last applied one) changes nothing. An event of
    an account deleted at or before the event's time changes nothing (CloudStack publishes
    nothing for a deleted account; such an event can only be a straggler). Intervals
    closed after ``settled`` (UTC ms) are held for :func:`release` instead of returned.
    """
    if state is None:
        state = EntityState()
    if _is_duplicate(state, src):
        return Transition(state, (), ("duplicate",))
    deletion = deleted_of(event.account_id)
    if deletion is not None and event.time_ms >= deletion[0]:
        return Transition(state, (), ("after_account_delete",))
    out: list[UsageInterval] = []
    notes: list[str] = []
    t = event.time_ms
    rid = event.resource_id
    for usage_type, action in TRANSITIONS[event.event_type]:
        zoned = usage_type in ZONE_KEYED
        key: SlotKey = (usage_type, (event.zone_id or "") if zoned else "")
        if action == OPEN:
            if key in state.slots:
                notes.append("reopen_ignored")
                continue
            start = max(t, state.ends.get(key, t))
            state.slots[key] = Slot(event.account_id, event.zone_id, start, src)
            continue
        if zoned and action == CLOSE and event.zone_id is None:
            keys = [k for k in state.slots if k[0] == usage_type]  # every zone (contract §3)
        else:
            keys = [key] if key in state.slots else []
        if not keys:
            if action == CLOSE:
                notes.append("orphan_close")
                continue
            start = max(t, state.ends.get(key, t))  # SPLIT with nothing open: opens
            state.slots[key] = Slot(event.account_id, event.zone_id, start, src)
            continue
        for k in keys:
            slot = state.slots.pop(k)
            _close_slot(state, k, slot, rid, t, event.event_type, src, grid, domain_of, out,
                        notes, settled)
            if action != CLOSE:  # SPLIT: reopen with the event's attributes
                start = max(t, state.ends.get(k, t))
                state.slots[k] = Slot(event.account_id, event.zone_id, start, src)
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
