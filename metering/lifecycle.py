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
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Final, NamedTuple

from metering.events import Enrichment, Source, UsageEvent
from metering.intervals import (
    CloseReason,
    UsageInterval,
    build_period_rows,
    build_row,
    id_prefix,
    interval_id,
    resource_key,
)
from metering.periods import PeriodGrid
from metering.states import (
    BEFORE_ANY,
    DISK_OFFERING,
    FOREVER,
    LEGACY_ACCOUNT,
    MAX_ORPHANS,
    SERVICE_OFFERING,
    TEMPLATE,
    AccountState,
    EntityState,
    Held,
    Orphan,
    Slot,
    SlotKey,
)
from metering.usage_types import CLOSE, OPEN, TRANSITIONS, ZONE_KEYED, UsageType


class Transition(NamedTuple):
    """Result of one step: the new state, the intervals to emit, and what happened.

    ``notes`` name the contract rules that applied, for metrics (:class:`Note`);
    ``held`` are the closes this step held back (already appended to ``state.held``), so
    the caller can schedule their release without comparing states.
    """

    state: EntityState
    intervals: Sequence[UsageInterval]
    notes: Sequence[str]
    held: Sequence[Held] = ()


class Note(StrEnum):
    """What a step did, by contract rule (counted in metrics and the replay summary)."""

    DUPLICATE = "duplicate"
    """A record already applied (same lane, offset not above the last applied: rule 6)."""
    REOPEN_IGNORED = "reopen_ignored"
    """An open of what is already open (rule 2)."""
    STALE_OPEN = "stale_open"
    """An open at or before the key's last close: a retried publish (rule 2)."""
    ORPHAN_CLOSE_REMEMBERED = "orphan_close_remembered"
    """A close of what is not open, remembered for an earlier open (rule 3)."""
    ORPHAN_CLOSE_APPLIED = "orphan_close_applied"
    """A remembered close claimed by an earlier open arriving later (rule 3)."""
    ORPHAN_CLOSE = "orphan_close"
    """A remembered close that expired, was dropped, or can never be claimed (rule 3)."""
    ZERO_LENGTH = "zero_length"
    """A close before the open's start: a zero-length interval (rule 4)."""
    ZERO_LENGTH_REPEAT = "zero_length_repeat"
    """A second zero-length close at one instant: not emitted (rule 9)."""
    AFTER_ACCOUNT_DELETE = "after_account_delete"
    """An event of an account deleted at or before it (rule 5)."""
    ENRICHED = "enriched"
    """Offering/template attributes recorded (rule 7)."""


class Context(NamedTuple):
    """What a step reads besides the state and the event; immutable.

    ``grid`` cuts pieces at period boundaries; ``accounts`` (read only) gives each account's
    domain (rule 7) and deletion (rule 5); closes after ``settled`` (UTC ms: every lane
    has passed it) are held; remembered closes before ``orphan_horizon`` (UTC ms) have
    expired (rule 3); ``record_ms`` is the record's timestamp (UTC ms) for latency metrics,
    kept on what it holds, or None.
    """

    grid: PeriodGrid
    accounts: Mapping[str, AccountState]
    settled: int = FOREVER
    orphan_horizon: int = BEFORE_ANY
    record_ms: int | None = None


def _deletion(accounts: Mapping[str, AccountState], account_id: str
              ) -> tuple[int, Source] | None:
    """(deletion time UTC ms, the ACCOUNT.DELETE record) of a deleted account, else None."""
    account = accounts.get(account_id)
    if account is None or account.deleted_at is None or account.deleted_by is None:
        return None
    return account.deleted_at, account.deleted_by


_OFFERING_KINDS: Final[dict[int, tuple[int, int]]] = {
    UsageType.RUNNING_VM: (SERVICE_OFFERING, TEMPLATE),
    UsageType.ALLOCATED_VM: (SERVICE_OFFERING, TEMPLATE),
    UsageType.VOLUME: (DISK_OFFERING, -1),
}
"""Usage type -> the attributes its rows carry as (offering_id, template_id); -1: none.
Rows of other usage types carry neither."""


def _attrs(changes: list[tuple[int, int, str]], kinds: tuple[int, int], a: int, b: int
           ) -> tuple[str | None, str | None]:
    """(offering_id, template_id) of piece ``[a, b)``: the latest ``changes`` of the two
    ``kinds`` (:data:`_OFFERING_KINDS`) at or before the piece's last millisecond."""
    cutoff = b - 1 if b > a else a
    offering_kind, template_kind = kinds
    offering: str | None = None
    template: str | None = None
    for t, k, v in changes:
        if t > cutoff:
            break
        if k == offering_kind:
            offering = v
        elif k == template_kind:
            template = v
    return offering, template


def _emit(
    state: EntityState,
    key: SlotKey,
    slot: Slot,
    resource_id: str,
    start: int,
    end: int,
    ctx: Context,
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
    Attributes are looked up per piece (:func:`_attrs`).
    """
    usage_type = key[0]
    account = slot.account_id
    zone = slot.zone_id
    rkey = resource_key(usage_type, resource_id, zone)
    facts = ctx.accounts.get(account)
    domain = None if facts is None else facts.domain_id
    changes = state.changes
    kinds = _OFFERING_KINDS.get(usage_type) if changes else None
    grid = ctx.grid
    period_start, boundary = grid.bounds(start)
    offering = template = None
    if end <= boundary:  # one piece, the last: a close within one period (the usual one)
        if kinds is not None:
            offering, template = _attrs(changes, kinds, start, end)
        if last_final or end != boundary:
            reason, src = last_reason, last_src
        else:
            reason, src = CloseReason.PERIOD, slot.opened_by
        out.append(build_row(
            f"{id_prefix(usage_type, account, rkey)}{start:016x}" if end > start
            else interval_id(usage_type, account, rkey, start, True),
            account, domain, zone, usage_type, resource_id, offering, template, start, end,
            period_start, last_final, reason, src))
        return
    prefix = id_prefix(usage_type, account, rkey)
    opened = slot.opened_by
    if kinds is not None:
        offering, template = _attrs(changes, kinds, start, boundary)
    out.append(build_row(  # the first piece, up to the first boundary
        f"{prefix}{start:016x}", account, domain, zone, usage_type, resource_id, offering,
        template, start, boundary, period_start, False, CloseReason.PERIOD, opened))
    last_start = grid.floor(end)  # ends on a boundary and not final: a whole period too
    if last_start == end and last_final:  # ... and final: the period before is the last
        last_start = grid.floor(end - 1)
    _whole_periods((prefix, account, domain, zone, usage_type, resource_id, opened),
                   changes, kinds, boundary, last_start, grid, out)
    if last_start < end:
        if kinds is not None:
            offering, template = _attrs(changes, kinds, last_start, end)
        out.append(build_row(
            f"{prefix}{last_start:016x}", account, domain, zone, usage_type, resource_id,
            offering, template, last_start, end, last_start, last_final, last_reason,
            last_src))


_RowParts = tuple[str, str, str | None, str | None, int, str, Source]
"""(id prefix, account, domain, zone, usage type, resource, opening record): what the rows
of one open interval share."""


def _whole_periods(parts: _RowParts, changes: list[tuple[int, int, str]],
                   kinds: tuple[int, int] | None, start: int, end: int, grid: PeriodGrid,
                   out: list[UsageInterval]) -> None:
    """Append the pieces of the whole periods from ``start`` to ``end`` (UTC ms, both
    period boundaries): ``final=false``, ``close_reason="period"``, lineage the opening
    record, attributes per piece. On a fixed grid, runs of pieces with the same attributes
    are built at once (:func:`build_period_rows`)."""
    prefix, account, domain, zone, usage_type, resource_id, opened = parts
    step = grid.step_ms
    offering = template = None
    a = start
    if not step:  # periods of varying length (a time zone with DST): piece by piece
        while a < end:
            b = grid.next_boundary(a)
            if kinds is not None:
                offering, template = _attrs(changes, kinds, a, b)
            out.append(build_row(
                f"{prefix}{a:016x}", account, domain, zone, usage_type, resource_id,
                offering, template, a, b, a, False, CloseReason.PERIOD, opened))
            a = b
        return
    while a < end:
        run_end = end
        if kinds is not None:
            offering, template = _attrs(changes, kinds, a, a + step)
            cutoff = a + step - 1  # the attributes hold until a change after this
            for change in changes:
                t = change[0]
                if t > cutoff:
                    if t < end:  # the pieces that end at or before it keep them
                        run_end = a + (t - a) // step * step
                    break
        build_period_rows(out, prefix, account, domain, zone, usage_type, resource_id,
                          offering, template, a, run_end, step, opened)
        a = run_end


def _cut_slot(
    state: EntityState,
    key: SlotKey,
    slot: Slot,
    resource_id: str,
    upto: int,
    ctx: Context,
    last_reason: str,
    out: list[UsageInterval],
) -> None:
    """Emit the still-open slot's pieces up to ``upto`` (not a close); move its start."""
    if upto <= slot.start:
        return
    _emit(state, key, slot, resource_id, slot.start, upto, ctx, False, last_reason,
          slot.opened_by, out)
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
    ctx: Context,
    out: list[UsageInterval],
    notes: list[str],
    held: list[Held] | None = None,
) -> None:
    """Close the slot at ``at``: period pieces, then the final piece (zero-length if early).

    If ``at`` is after ``ctx.settled`` and ``held`` is given, the close is held
    (:class:`Held`, appended to ``state.held`` and to ``held``) instead of emitted.
    """
    start = slot.start
    if at < start:
        notes.append(Note.ZERO_LENGTH)
    end = at if at > start else start
    if end == start:
        # Opened and closed twice at one instant (CloudStack's clock has 1 s resolution; a
        # resize or restart on a period boundary): the first zero-length interval already
        # says it; a second would share its id (rule 9) with different content.
        if key in state.empty_ends and state.ends.get(key) == start:
            notes.append(Note.ZERO_LENGTH_REPEAT)
            return
        state.empty_ends.add(key)
    else:
        state.empty_ends.discard(key)
    state.ends[key] = end
    if held is not None and end > ctx.settled:
        h = Held(key, slot, end, reason, src, ctx.record_ms)
        state.held.append(h)
        held.append(h)
        return
    _emit(state, key, slot, resource_id, start, end, ctx, True, reason, src, out)


def _kind_repeats(changes: list[tuple[int, int, str]], until: int) -> bool:
    """True if one attribute changed twice at or before ``until`` (UTC ms)."""
    kinds = 0
    for change in changes:
        if change[0] > until:
            return False
        bit = 1 << change[1]
        if kinds & bit:
            return True
        kinds |= bit
    return False


def prune_changes(state: EntityState, bound: int) -> None:
    """Drop attribute changes that no open, held or future piece can see.

    ``bound`` (UTC ms) is the earliest instant a record still to come may open an interval
    at (the engine's settled watermark); changes are kept from the latest one at or before
    the earliest of ``bound``, the open slots' starts and the held intervals' starts.
    """
    changes = state.changes
    if len(changes) <= 1 or changes[1][0] > bound:
        return  # fewer than two changes by the bound (nor by the horizon, before it)
    horizon = bound
    for slot in state.slots.values():
        if slot.start < horizon:
            horizon = slot.start
    for held in state.held:
        if held.slot.start < horizon:
            horizon = held.slot.start
    if changes[1][0] > horizon or not _kind_repeats(changes, horizon):
        return  # no attribute changed twice by the horizon: nothing to drop
    keep: list[tuple[int, int, str]] = []
    latest_before: dict[int, tuple[int, int, str]] = {}
    for change in changes:
        if change[0] <= horizon:
            latest_before[change[1]] = change
        else:
            keep.append(change)
    state.changes = sorted([*latest_before.values(), *keep], key=lambda c: c[0])


def is_duplicate(state: EntityState, src: Source) -> bool:
    """True if ``src`` was applied to ``state`` already (same lane, offset not above the
    last applied one: rule 6). Reads only."""
    last = state.offsets.get(src.lane)
    return last is not None and src.offset <= last


def _mark_applied(state: EntityState, src: Source, lane: str | None = None) -> bool:
    """Record ``src`` (of ``lane``, ``src.lane`` if None) as applied; False if it was
    applied already (rule 6: see :func:`is_duplicate`)."""
    if lane is None:
        lane = src.lane
    offsets = state.offsets
    last = offsets.get(lane)
    if last is not None and src.offset <= last:
        return False
    state.lane = lane
    offsets[lane] = src.offset
    return True


def _last_end(state: EntityState, key: SlotKey) -> int | None:
    """``ends`` of ``key``, or of its usage type and zone in a version 1 state."""
    ends = state.ends
    end = ends.get(key)
    if end is None and ends:
        end = ends.get((key[0], key[1], LEGACY_ACCOUNT))
    return end


def _expire_orphans(state: EntityState, horizon: int, notes: list[str]) -> None:
    kept = [o for o in state.orphans if o.end >= horizon]
    notes.extend([Note.ORPHAN_CLOSE] * (len(state.orphans) - len(kept)))
    state.orphans = kept


def _remember(state: EntityState, key: SlotKey, at: int, reason: str, src: Source,
              every_zone: bool, notes: list[str]) -> None:
    """Remember a close of what is not open (rule 3), unless no open could ever claim it."""
    last = None if every_zone else _last_end(state, key)
    if last is not None and at <= last:
        notes.append(Note.ORPHAN_CLOSE)  # a repeat: an open before it would be stale
        return
    orphans = state.orphans
    orphans.append(Orphan(key, at, reason, src, every_zone))
    notes.append(Note.ORPHAN_CLOSE_REMEMBERED)
    same = [i for i, o in enumerate(orphans) if o.key[0] == key[0] and o.key[2] == key[2]]
    if len(same) > MAX_ORPHANS:
        del orphans[min(same, key=lambda i: orphans[i].end)]
        notes.append(Note.ORPHAN_CLOSE)


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


_new: Final = tuple.__new__
"""Builds a NamedTuple from a tuple of all its fields without the generated ``__new__``'s
Python frame (the per-record path)."""
_DUPLICATE: Final = (Note.DUPLICATE,)
_ENRICHED: Final = (Note.ENRICHED,)


def step(state: EntityState | None, event: UsageEvent | Enrichment, src: Source,
         ctx: Context, lane: str | None = None) -> Transition:
    """Apply one record of a resource to its state: the lifecycle's one entry point.

    ``state`` is the resource's state or None for a resource never seen; the step takes
    ownership of it (updated in place for speed) and returns it in the :class:`Transition`
    with the intervals to emit, the rules that applied and the closes it held. It reads
    nothing but its arguments: the same inputs give the same transition. ``lane`` is
    ``src.lane`` if the caller has it at hand.
    """
    if isinstance(event, UsageEvent):
        return apply_usage(state, event, src, ctx, lane)
    return apply_enrichment(state, event, src, lane)


def apply_usage(
    state: EntityState | None, event: UsageEvent, src: Source, ctx: Context,
    lane: str | None = None,
) -> Transition:
    """Apply one usage event of a metered type to its resource's state (table, rules 1-4a, 6).

    A record already applied (same lane, offset not above the last applied one) changes
    nothing. An event of an account deleted at or before the event's time changes nothing
    (CloudStack publishes nothing for a deleted account; such an event can only be a
    straggler). Intervals closed after ``ctx.settled`` (UTC ms) are held for
    :func:`release` instead of returned.

    Opens (and splits with nothing open) at or before the key's last close are stale
    (rule 2). A close of what is not open is remembered (rule 3); an open with nothing open
    claims the earliest remembered close after it and closes there at once (through the
    normal close path, held like any close). Remembered closes before
    ``ctx.orphan_horizon`` (UTC ms: the engine's settled watermark minus
    ``orphan_close_ttl``) have expired.
    """
    if state is None:
        state = EntityState()
    if lane is None:
        lane = src.lane
    offsets = state.offsets
    last = offsets.get(lane)
    if last is not None and src.offset <= last:
        return Transition(state, (), _DUPLICATE)  # applied already (rule 6)
    state.lane = lane
    offsets[lane] = src.offset
    notes: list[str] = []
    if state.orphans and ctx.orphan_horizon > BEFORE_ANY:
        _expire_orphans(state, ctx.orphan_horizon, notes)
    event_type, account, rid, zone, t = event
    facts = ctx.accounts.get(account)  # _deletion(ctx.accounts, account), without the call
    deletion = None
    if facts is not None and facts.deleted_at is not None and facts.deleted_by is not None:
        deletion = facts.deleted_at, facts.deleted_by
    if deletion is not None and t >= deletion[0]:
        notes.append(Note.AFTER_ACCOUNT_DELETE)
        return Transition(state, (), tuple(notes))
    out: list[UsageInterval] = []
    held: list[Held] = []
    slots = state.slots
    for usage_type, action in TRANSITIONS[event_type]:
        zoned = usage_type in ZONE_KEYED
        key: SlotKey = (usage_type, (zone or "") if zoned else "", account)
        if action == OPEN or (action != CLOSE and key not in slots):
            if key in slots:
                notes.append(Note.REOPEN_IGNORED)
                continue
            last = _last_end(state, key) if state.ends else None
            if last is not None and t <= last:
                notes.append(Note.STALE_OPEN)  # a retried publish or late duplicate (rule 2)
                continue
            slot = Slot(account, zone, t, src)
            orphan = _claim(state, key, t) if state.orphans else None
            if orphan is None:
                slots[key] = slot
                continue
            notes.append(Note.ORPHAN_CLOSE_APPLIED)
            end, reason, by = orphan.end, orphan.reason, orphan.src
            if deletion is not None and deletion[0] < end:  # rule 5: not past the deletion
                end, reason, by = deletion[0], CloseReason.ACCOUNT_DELETE, deletion[1]
            _close_slot(state, key, slot, rid, end, reason, by, ctx, out, notes, held)
            continue
        if zoned and action == CLOSE and zone is None:  # every zone (contract §3)
            keys = [k for k in slots if k[0] == usage_type and k[2] == account]
            if not keys:
                _remember(state, key, t, event_type, src, True, notes)
                continue
        elif key in slots:
            keys = [key]
        else:  # a CLOSE of what is not open
            _remember(state, key, t, event_type, src, False, notes)
            continue
        for k in keys:
            slot = slots.pop(k)
            _close_slot(state, k, slot, rid, t, event_type, src, ctx, out, notes, held)
            if action != CLOSE:  # SPLIT: reopen with the event's attributes
                start = max(t, state.ends.get(k, t))
                slots[k] = Slot(account, zone, start, src)
    return _new(Transition, (state, out, notes, held))


def apply_enrichment(
    state: EntityState | None, event: Enrichment, src: Source, lane: str | None = None
) -> Transition:
    """Record offering/template attributes from an action event (rule 7)."""
    if state is None:
        state = EntityState()
    if not _mark_applied(state, src, lane):
        return Transition(state, (), _DUPLICATE)
    t = event.time_ms
    for kind, value in (
        (SERVICE_OFFERING, event.service_offering_id),
        (TEMPLATE, event.template_id),
        (DISK_OFFERING, event.disk_offering_id),
    ):
        if value is not None:
            insort(state.changes, (t, kind, value), key=lambda c: c[0])
    return Transition(state, (), _ENRICHED)


def cut(
    state: EntityState,
    resource_id: str,
    upto: int,
    ctx: Context,
    last_reason: str = CloseReason.PERIOD,
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
        deletion = _deletion(ctx.accounts, slot.account_id)
        if deletion is not None and deletion[0] <= upto:
            del state.slots[key]
            _close_slot(state, key, slot, resource_id, deletion[0], CloseReason.ACCOUNT_DELETE,
                        deletion[1], ctx, out, notes)
        else:
            _cut_slot(state, key, slot, resource_id, upto, ctx, last_reason, out)
    return out


def release(state: EntityState, resource_id: str, settled: int, ctx: Context
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
        deletion = _deletion(ctx.accounts, slot.account_id)
        if deletion is not None and deletion[0] < h.end:
            if deletion[0] > slot.start:  # else opened after the deletion: nothing (rule 5)
                _emit(state, h.key, slot, resource_id, slot.start, deletion[0], ctx, True,
                      CloseReason.ACCOUNT_DELETE, deletion[1], out)
        else:
            _emit(state, h.key, slot, resource_id, slot.start, h.end, ctx, True, h.reason,
                  h.src, out)
    state.held = keep
    return out
