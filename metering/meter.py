"""The metering engine: decoded records in, usage intervals out.

:class:`Meter` folds decoded records over per-entity state kept in a mapping (a dict for
``replay``, a Faust/RocksDB-backed table in the streaming worker) and emits intervals. It owns
what spans entities:

* **watermarks** per source lane (``topic/partition``): the newest confirmed event time
  (one record moves it by at most ``max_watermark_jump_ms``; a larger advance waits for
  confirmation, see :mod:`metering.watermarks`), advanced by idle time when the lane's
  reader reports it caught up and idle longer than ``idle_advance_ms`` (streaming only);
* **settling**: an interval closed by an event is held until every lane's watermark has
  passed its end (so action events of other lanes before it are applied, whatever order the
  lanes arrive in), then emitted (see :func:`metering.lifecycle.release`);
* **period cutting** (rule 8): an open interval's pieces are emitted once its lane's
  watermark has passed a period end plus ``lateness_ms``: lazily whenever the entity is
  touched, and eagerly for every open entity by :meth:`Meter.advance` (streaming ticks);
* **accounts**: the domain of each account (rule 7) and account deletion (rule 5), with an
  in-memory index of which entities have open intervals per account;
* counters of outcomes for metrics and summaries.

All instants are UTC epoch milliseconds. Wall-clock times are passed in by callers; the
engine never reads a clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from heapq import heappop, heappush

from metering.events import (
    AccountCreated,
    AccountDeleted,
    Decoded,
    Enrichment,
    Ignored,
    Rejected,
    Source,
    UsageEvent,
)
from metering.intervals import CloseReason, UsageInterval
from metering.lifecycle import (
    FOREVER,
    EntityState,
    Transition,
    apply_enrichment,
    apply_usage,
    cut,
    prune_changes,
    release,
)
from metering.periods import PeriodGrid
from metering.watermarks import NEVER as NEVER
from metering.watermarks import Suspect, confirmed, idle_watermark, step


@dataclass(slots=True)
class AccountState:
    """What metering remembers about an account.

    ``domain_id`` comes from ``ACCOUNT.CREATE``; ``deleted_at`` (UTC ms) and ``deleted_by``
    from a completed ``ACCOUNT.DELETE``; ``offsets`` are the last applied account records
    per lane (redelivery, rule 6).
    """

    domain_id: str | None = None
    deleted_at: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    deleted_by: Source | None = None


@dataclass(slots=True)
class LaneClock:
    """Event-time progress of one source lane.

    ``max_event_ms`` is the newest confirmed event time (contract rule 4b: see
    :mod:`metering.watermarks`); ``arrival_wall_ms`` the wall-clock time (UTC ms) of the
    lane's last record or reported ``idle_from`` (informational; idle advance uses only the
    current tick's report, see :meth:`Meter.observe_lanes`); ``watermark`` the effective
    watermark, which idle advance may move beyond ``max_event_ms``; ``suspect`` the lane's
    one unconfirmed (event time UTC ms, offset) more than ``max_watermark_jump_ms`` ahead of
    it, or None; ``last_offset`` the highest record offset of the lane observed (a record at
    or below it is read again, after a crash or a rebalance, and moves nothing: rule 6).
    """

    max_event_ms: int = NEVER
    arrival_wall_ms: int | None = None
    watermark: int = NEVER
    suspect: Suspect | None = None
    last_offset: int = -1


@dataclass(frozen=True)
class MeterPolicy:
    """How the engine cuts periods.

    Attributes:
        grid: aggregation periods (hour/day in a time zone).
        lateness_ms: a period is complete once the watermark passes its end plus this.
            None: periods are only cut when an interval closes or at :meth:`Meter.finish`
            (batch replay: the whole input is known, so no event is ever late).
        idle_advance_ms: once a lane's reader has been caught up without new records for
            this much wall-clock time, the lane's watermark moves on with the wall clock
            (None: never; replay uses None). See :meth:`Meter.observe_lanes`.
        wait_for_inputs: close no period until :meth:`Meter.observe_lanes` named every
            input lane (the streaming worker: records of some lanes can reach a partition
            before any record of another lane, which must still hold the watermark back).
        orphan_close_ttl_ms: event time (ms) a close of what is not open is remembered for
            an earlier open arriving later (contract rule 3).
        max_watermark_jump_ms: a lane's watermark advance larger than this (ms) waits for
            confirmation (contract rule 4b); None: no limit.
    """

    grid: PeriodGrid = field(default_factory=PeriodGrid)
    lateness_ms: int | None = 60_000
    idle_advance_ms: int | None = None
    wait_for_inputs: bool = False
    orphan_close_ttl_ms: int = 86_400_000
    max_watermark_jump_ms: int | None = 3_600_000


class Meter:
    """Per-partition metering engine over a mutable mapping of entity states.

    Args:
        policy: period grid, lateness and idle advance.
        entities: resource UUID -> :class:`EntityState` (any MutableMapping).
        accounts: account UUID -> :class:`AccountState`.
    """

    def __init__(
        self,
        policy: MeterPolicy | None = None,
        entities: MutableMapping[str, EntityState] | None = None,
        accounts: MutableMapping[str, AccountState] | None = None,
    ) -> None:
        self.policy = policy or MeterPolicy()
        self.grid = self.policy.grid
        self.entities: MutableMapping[str, EntityState] = {} if entities is None else entities
        self.accounts: MutableMapping[str, AccountState] = {} if accounts is None else accounts
        self.lanes: dict[str, LaneClock] = {}
        self.open_by_account: dict[str, set[str]] = {}
        self.open_entities: dict[str, tuple[int, ...]] = {}
        """Entities with open intervals -> the usage types of their open slots."""
        self.open_counts: Counter[int] = Counter()
        """Open slots per usage type (kept with :attr:`open_entities`; for metrics)."""
        self.inputs_known = not self.policy.wait_for_inputs
        """False until the set of input lanes is known (see ``wait_for_inputs``)."""
        self.cut_boundary = NEVER
        """Periods ending at or before this instant are complete (min over lanes)."""
        self.settled = NEVER
        """Every lane has passed this instant (UTC ms): held intervals ending here go out."""
        self._held: list[tuple[int, str]] = []
        """Heap of (end of a held interval, entity id); entries may be stale."""
        self.closed_record_ms: list[int] = []
        """Record timestamps (UTC ms) of the records that closed the intervals emitted since
        the caller last cleared it, one per emitted final piece (for latency metrics)."""
        self.advanced_to = NEVER
        self._cut_queue: list[str] = []
        """Open entities still to cut at :attr:`advanced_to` (sorted, last first)."""
        self.stats: Counter[str] = Counter()
        self.dirty: set[str] = set()
        self.dirty_accounts: set[str] = set()
        self._domain_cache: dict[str, str | None] = {}

    # ------------------------------------------------------------------ index maintenance

    def rebuild_index(self, items: Iterable[tuple[str, EntityState]]) -> None:
        """Rebuild the open-interval indexes from stored states (after a restore)."""
        self.open_by_account.clear()
        self.open_entities.clear()
        self.open_counts.clear()
        self._held.clear()
        for entity_id, state in items:
            self._index(entity_id, state, set())
            for held in state.held:
                heappush(self._held, (held.end, entity_id))

    def _index(self, entity_id: str, state: EntityState, before: set[str]) -> None:
        after = state.accounts() if state.slots else set()
        for account in before - after:
            members = self.open_by_account.get(account)
            if members is not None:
                members.discard(entity_id)
                if not members:
                    del self.open_by_account[account]
        for account in after - before:
            self.open_by_account.setdefault(account, set()).add(entity_id)
        types = tuple(key[0] for key in state.slots)
        old = self.open_entities.get(entity_id, ())
        if types != old:
            counts = self.open_counts
            for usage_type in old:
                counts[usage_type] -= 1
            for usage_type in types:
                counts[usage_type] += 1
        if types:
            self.open_entities[entity_id] = types
        else:
            self.open_entities.pop(entity_id, None)

    def restore_progress(self, lanes: dict[str, LaneClock], cut_boundary: int,
                         advanced_to: int) -> None:
        """Restore saved lane clocks and cut positions (UTC ms) after a restart."""
        self.lanes.update(lanes)
        self.cut_boundary = max(self.cut_boundary, cut_boundary)
        self.advanced_to = max(self.advanced_to, advanced_to)
        self._recompute_cut()

    def domain_of(self, account_id: str) -> str | None:
        """Domain UUID of an account, from ``ACCOUNT.CREATE`` (rule 7), or None."""
        account = self.accounts.get(account_id)
        return None if account is None else account.domain_id

    def deleted_of(self, account_id: str) -> tuple[int, Source] | None:
        """(deletion time UTC ms, ACCOUNT.DELETE record) of a deleted account, else None."""
        account = self.accounts.get(account_id)
        if account is None or account.deleted_at is None or account.deleted_by is None:
            return None
        return account.deleted_at, account.deleted_by

    # ------------------------------------------------------------------ watermarks

    def _lane(self, lane: str) -> LaneClock:
        clock = self.lanes.get(lane)
        if clock is None:
            clock = self.lanes[lane] = LaneClock()
        return clock

    def _set_watermark(self, clock: LaneClock, watermark: int) -> None:
        if watermark <= clock.watermark:
            return
        clock.watermark = watermark
        if clock.suspect is not None:  # passed, or no longer an outlier: forgotten
            clock.suspect = confirmed(watermark, clock.suspect, watermark,
                                      self.policy.max_watermark_jump_ms)[1]
        self._recompute_cut()

    def _recompute_cut(self) -> None:
        if not self.inputs_known or not self.lanes:
            return
        # The engine's watermark is the minimum over its lanes (as in Flink): an account-wide
        # event on one lane (ACCOUNT.DELETE/CREATE) is never late for resources on another.
        low = min(c.watermark for c in self.lanes.values())
        if low > self.settled:
            self.settled = low
        lateness = self.policy.lateness_ms
        if lateness is None:
            return
        limit = low - lateness - 1  # periods ending before this are complete
        if limit > NEVER // 2:
            boundary = self.grid.floor(limit)
            if boundary > self.cut_boundary:
                self.cut_boundary = boundary

    def _observe(self, lane: str, time_ms: int, wall_ms: int | None, offset: int) -> None:
        clock = self._lane(lane)
        if wall_ms is not None:
            clock.arrival_wall_ms = wall_ms
        if offset <= clock.last_offset:
            return  # read again: its first reading already moved what it could (rule 6)
        clock.last_offset = offset
        if time_ms <= clock.max_event_ms:
            return
        if time_ms <= clock.watermark:  # behind an idle advance: nothing to confirm
            clock.max_event_ms = time_ms
            return
        # Rule 4b: one record moves the watermark by at most max_watermark_jump; further
        # ahead it waits for a second record (the record itself was applied already).
        watermark, clock.suspect = step(clock.watermark, clock.suspect, time_ms, offset,
                                        self.policy.max_watermark_jump_ms)
        if watermark > clock.watermark:
            clock.max_event_ms = max(clock.max_event_ms, watermark)
            self._set_watermark(clock, watermark)

    def low_watermark(self) -> int:
        """The engine's watermark (UTC ms): the minimum over its lanes; :data:`NEVER` if none."""
        return min((c.watermark for c in self.lanes.values()), default=NEVER)

    def watermark(self, lane: str) -> int:
        """Effective watermark (UTC ms) of a lane; :data:`NEVER` if it has seen nothing."""
        clock = self.lanes.get(lane)
        return NEVER if clock is None else clock.watermark

    # ------------------------------------------------------------------ processing

    def _touch_cut(self, entity_id: str, state: EntityState, out: list[UsageInterval]) -> None:
        if self.cut_boundary > NEVER and state.slots:
            out.extend(cut(state, entity_id, self.cut_boundary, self.grid, self.domain_of,
                           deleted_of=self.deleted_of))

    def _store(self, entity_id: str, state: EntityState, before: set[str]) -> None:
        if len(state.changes) > 1:
            bound = self.settled
            if self.policy.lateness_ms is not None and bound > NEVER:
                bound -= self.policy.lateness_ms  # a record this late may still open a piece
            prune_changes(state, bound)
        self.entities[entity_id] = state
        self.dirty.add(entity_id)
        self._index(entity_id, state, before)

    def _count(self, tr: Transition) -> None:
        for note in tr.notes:
            self.stats[note] += 1

    def process(
        self, value: Decoded, src: Source, wall_ms: int | None = None,
        record_ms: int | None = None,
    ) -> list[UsageInterval]:
        """Apply one decoded record from ``src``; return the intervals it completes.

        ``wall_ms`` is the wall-clock time (UTC ms) the record was forwarded, or None;
        ``record_ms`` the record's timestamp (UTC ms) for latency metrics, or None.
        The result may include held intervals of other entities that this record settled.
        Ignored and rejected values only update counters.
        """
        if isinstance(value, UsageEvent):
            out = self._usage(value, src, wall_ms, record_ms)
        elif isinstance(value, Enrichment):
            out = self._enrich(value, src, wall_ms)
        elif isinstance(value, AccountDeleted):
            out = self._account_deleted(value, src, wall_ms)
        elif isinstance(value, AccountCreated):
            self._account_created(value, src, wall_ms)
            out = []
        else:
            if isinstance(value, Ignored):
                self.stats[f"ignored:{value.kind}"] += 1
            elif isinstance(value, Rejected):
                self.stats[f"rejected:{value.reason.value}"] += 1
            return []
        held = self._held
        if held and held[0][0] <= self.settled:
            out.extend(self._release(self.settled))
        return out

    def _release(self, settled: int) -> list[UsageInterval]:
        """Emit the held intervals ending at or before ``settled`` (UTC ms)."""
        out: list[UsageInterval] = []
        held = self._held
        while held and held[0][0] <= settled:
            _, entity_id = heappop(held)
            state = self.entities.get(entity_id)
            if state is None or not state.held:
                continue  # a stale entry: released already
            for h in state.held:
                if h.end <= settled and h.record_ms is not None:
                    self.closed_record_ms.append(h.record_ms)
            rows = release(state, entity_id, settled, self.grid, self.domain_of,
                           self.deleted_of)
            if rows or not state.held:
                out.extend(rows)
                self._store(entity_id, state, state.accounts() if state.slots else set())
        return out

    def _orphan_horizon(self) -> int:
        """Remembered closes (rule 3) before this instant (UTC ms) have expired: the settled
        watermark minus ``orphan_close_ttl_ms``."""
        if self.settled <= NEVER:
            return NEVER
        return self.settled - self.policy.orphan_close_ttl_ms

    def _usage(self, ev: UsageEvent, src: Source, wall_ms: int | None,
               record_ms: int | None = None) -> list[UsageInterval]:
        entity_id = ev.resource_id
        state = self.entities.get(entity_id)
        out: list[UsageInterval] = []
        before: set[str] = set()
        held = 0
        if state is not None:
            before = state.accounts() if state.slots else set()
            held = len(state.held)
            if src.offset > state.offsets.get(src.lane, -1):
                self._touch_cut(entity_id, state, out)
        tr = apply_usage(state, ev, src, self.grid, self.domain_of, self.deleted_of,
                         self.settled, self._orphan_horizon())
        self._count(tr)
        out.extend(tr.intervals)
        if record_ms is not None:
            self.closed_record_ms.extend(record_ms for row in tr.intervals if row.final)
        if len(tr.state.held) > held:
            for h in tr.state.held[held:]:
                h.record_ms = record_ms
                heappush(self._held, (h.end, entity_id))
        self._store(entity_id, tr.state, before)
        self._observe(src.lane, ev.time_ms, wall_ms, src.offset)
        self.stats["applied" if "duplicate" not in tr.notes else "duplicate_record"] += 1
        return out

    def _enrich(self, ev: Enrichment, src: Source, wall_ms: int | None) -> list[UsageInterval]:
        entity_id = ev.entity_id
        state = self.entities.get(entity_id)
        out: list[UsageInterval] = []
        before: set[str] = set()
        if state is not None:
            before = state.accounts() if state.slots else set()
            if src.offset > state.offsets.get(src.lane, -1):
                self._touch_cut(entity_id, state, out)
        tr = apply_enrichment(state, ev, src)
        self._count(tr)
        self._store(entity_id, tr.state, before)
        self._observe(src.lane, ev.time_ms, wall_ms, src.offset)
        return out

    def _account_record_is_new(self, account: AccountState, src: Source) -> bool:
        last = account.offsets.get(src.lane)
        if last is not None and src.offset <= last:
            self.stats["duplicate"] += 1
            return False
        account.offsets[src.lane] = src.offset
        return True

    def _account_created(self, ev: AccountCreated, src: Source, wall_ms: int | None) -> None:
        account = self.accounts.get(ev.account_id) or AccountState()
        if self._account_record_is_new(account, src):
            account.domain_id = ev.domain_id
            self.stats["account_created"] += 1
        self.accounts[ev.account_id] = account
        self.dirty_accounts.add(ev.account_id)
        self._observe(src.lane, ev.time_ms, wall_ms, src.offset)

    def _account_deleted(
        self, ev: AccountDeleted, src: Source, wall_ms: int | None
    ) -> list[UsageInterval]:
        account = self.accounts.get(ev.account_id) or AccountState()
        out: list[UsageInterval] = []
        if self._account_record_is_new(account, src):
            if account.deleted_at is None or ev.time_ms < account.deleted_at:
                account.deleted_at = ev.time_ms
                account.deleted_by = src
            self.stats["account_deleted"] += 1
            self.accounts[ev.account_id] = account
            # Deferred (rule 5 by event time): the account's intervals close at the deletion
            # time once the watermark passes it, so resource events of other lanes that are
            # still in flight and older than the deletion are applied first. A deletion that
            # arrives after the watermark already passed it closes at once.
            if self.cut_boundary >= ev.time_ms:
                for entity_id in sorted(self.open_by_account.get(ev.account_id, ())):
                    state = self.entities.get(entity_id)
                    if state is None:
                        continue
                    before = state.accounts()
                    out.extend(cut(state, entity_id, self.cut_boundary, self.grid,
                                   self.domain_of, deleted_of=self.deleted_of))
                    self._store(entity_id, state, before)
        self.accounts[ev.account_id] = account
        self.dirty_accounts.add(ev.account_id)
        self._observe(src.lane, ev.time_ms, wall_ms, src.offset)
        return out

    # ------------------------------------------------------------------ time passing

    def observe_lanes(self, lanes: dict[str, tuple[int, int]],
                      inputs: dict[str, int] | None = None, wall_ms: int | None = None) -> None:
        """Take lane progress reported by a forwarder's tick (``max_event_ms, idle_from_ms``).

        In the streaming worker one lane's records are spread over several partitions; ticks
        carry the lane's watermark to all of them, so every partition cuts periods exactly
        where ``replay`` over the same lane would. ``inputs`` (input topic -> partition
        count) names every lane, also those no forwarder has reported yet: such a lane is
        registered with no progress and holds the watermark back (an input partition that
        is read later than the others, e.g. after a restart or by another worker, must not
        find its periods already closed).

        The reported ``max_event_ms`` is progress the reader confirmed (rule 4b: an outlier
        it holds is not announced); this engine's own suspect of the lane is dropped once
        the reported progress comes within ``max_watermark_jump_ms`` of it.

        Idle advance (``idle_advance_ms``, with ``wall_ms`` the tick's wall clock, UTC ms):
        a lane is idle only as its reader says so, within one tick: ``wall_ms -
        idle_from_ms`` is how long the reader has been caught up on the lane with no new
        meterable record, measured by the reader with a monotonic clock (so a step of the
        host's wall clock is no idle time; a reader that is behind, paused or restarting
        keeps ``idle_from_ms`` at its wall clock). An idle lane's watermark moves on to
        ``max_event + idle - idle_advance``, never beyond ``wall_ms`` (one tick thus moves
        it by at most the monotonic time since the reader's previous report); an idle lane
        that never had data (``max_event_ms < 0``) follows the slowest lane that has.
        Idleness is never inferred from an old report: a lane nobody reports holds back.
        """
        for topic, count in (inputs or {}).items():
            for partition in range(count):
                lane = f"{topic}/{partition}"
                if lane not in self.lanes:
                    self.lanes[lane] = LaneClock()
        if inputs and not self.inputs_known:
            self.inputs_known = True
            self._recompute_cut()
        for lane, (max_event, idle_from) in lanes.items():
            clock = self._lane(lane)
            if clock.arrival_wall_ms is None or idle_from > clock.arrival_wall_ms:
                clock.arrival_wall_ms = idle_from
            if max_event > clock.max_event_ms and max_event >= 0:
                clock.max_event_ms = max_event
                watermark, clock.suspect = confirmed(
                    clock.watermark, clock.suspect, max_event,
                    self.policy.max_watermark_jump_ms)
                self._set_watermark(clock, watermark)
        limit = self.policy.idle_advance_ms
        if limit is None or wall_ms is None:
            return
        silent: list[LaneClock] = []
        for lane, (_, idle_from) in lanes.items():
            idle = wall_ms - idle_from
            if idle <= limit:
                continue
            clock = self.lanes[lane]
            if clock.max_event_ms <= NEVER:
                silent.append(clock)  # caught up and never delivered anything: empty
            else:
                target = idle_watermark(clock.max_event_ms, idle, limit, wall_ms)
                if target is not None:
                    self._set_watermark(clock, target)
        if silent:
            # An empty input partition follows the slowest lane that has data, so it stops
            # holding back.
            floor = min((c.watermark for c in self.lanes.values()
                         if c.max_event_ms > NEVER), default=NEVER)
            if floor > NEVER:
                for clock in silent:
                    self._set_watermark(clock, floor)

    def advance(self, limit: int | None = None) -> list[UsageInterval]:
        """Emit settled held intervals and completed periods of open entities (rule 8).

        Called after each tick (:meth:`observe_lanes`). Work is proportional to the open
        entities, and only when a period completed. With ``limit``, one call cuts at most
        that many open entities (the hourly cut of a million open resources in one call
        held every row and decoded state in memory at once); while :attr:`cutting` is true
        the caller sends the rows, stores the states and calls again. Rows do not depend on
        the chunking: an entity a record touches meanwhile is cut first (lazily).
        """
        out: list[UsageInterval] = []
        if self._held and self._held[0][0] <= self.settled:
            out.extend(self._release(self.settled))
        if self.cut_boundary > self.advanced_to:
            self.advanced_to = self.cut_boundary
            self._cut_queue = sorted(self.open_entities, reverse=True)
        queue = self._cut_queue
        boundary = self.advanced_to
        budget = len(queue) if limit is None else limit
        while queue and budget > 0:
            budget -= 1
            entity_id = queue.pop()
            state = self.entities.get(entity_id)
            if state is None or not state.slots:
                continue
            if min(s.start for s in state.slots.values()) >= boundary:
                continue
            before = state.accounts()
            emitted = cut(state, entity_id, boundary, self.grid, self.domain_of,
                          deleted_of=self.deleted_of)
            if emitted:
                out.extend(emitted)
                self._store(entity_id, state, before)
        return out

    @property
    def cutting(self) -> bool:
        """True while a period cut started by :meth:`advance` has entities left to cut."""
        return bool(self._cut_queue)

    def finish(self, until_ms: int | None = None) -> list[UsageInterval]:
        """Cut every open interval at the replay horizon (rule 10).

        With ``until_ms`` the horizon is that instant (``close_reason="until"`` unless it is a
        period boundary); without it, the last period boundary at or before the newest event
        time any lane confirmed (an unconfirmed outlier, rule 4b, does not move it). Open
        intervals stay open in the state.
        """
        if until_ms is not None:
            horizon, reason = until_ms, CloseReason.UNTIL
        else:
            newest = max((c.max_event_ms for c in self.lanes.values()), default=NEVER)
            if newest == NEVER:
                return self._release(FOREVER)
            horizon, reason = self.grid.floor(newest), CloseReason.PERIOD
        out = self._release(FOREVER)  # the whole input is known: nothing is in flight
        for entity_id in sorted(self.open_entities):
            state = self.entities.get(entity_id)
            if state is None or not state.slots:
                continue
            before = state.accounts()
            emitted = cut(state, entity_id, horizon, self.grid, self.domain_of, reason,
                          self.deleted_of)
            if emitted:
                out.extend(emitted)
                self._store(entity_id, state, before)
        return out
