"""The metering engine: batches of decoded records in, usage intervals out.

:class:`Engine` composes four parts, each with one job:

* :class:`~metering.engine.lanes.Lanes`: event-time progress per source lane, the settled
  instant and the period cut boundary (rules 4b, 8);
* :class:`~metering.engine.accounts.Accounts`: account domains and deletions (rules 5, 7)
  and the index of open intervals;
* :class:`~metering.engine.settling.Settling`: closes held until every lane passed them;
* :func:`metering.lifecycle.step`: the per-resource state machine (rules 1-4a, 6), a pure
  step over the state, the record and an immutable :class:`~metering.lifecycle.Context`.

Replay and the worker drive it the same way: :meth:`Engine.apply` per batch of records,
:meth:`Engine.report` + :meth:`Engine.advance` per tick (streaming),
:meth:`Engine.finish_steps` at the end of a replay (:meth:`Engine.finish`: the same in one
call). Each returns (or yields) an :class:`Applied`: the rows to emit, in order, and the
keys of the states it changed (the worker writes each once per batch).

All instants are UTC epoch milliseconds; the engine never reads a clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from typing import Final

from metering.engine.accounts import Accounts
from metering.engine.lanes import Lanes
from metering.engine.policy import Applied, Policy, Record
from metering.engine.settling import Settling
from metering.events import (
    AccountCreated,
    AccountDeleted,
    Decoded,
    Enrichment,
    Ignored,
    Lane,
    Rejected,
    Source,
    UsageEvent,
)
from metering.intervals import CloseReason, UsageInterval
from metering.lifecycle import Context, Note, cut, is_duplicate, prune_changes, release, step
from metering.states import FOREVER, AccountState, EntityState, Held
from metering.watermarks import NEVER

_DUPLICATE: Final = Note.DUPLICATE
FINISH_STEP_ROWS: Final = 100_000
"""Rows of one step of :meth:`Engine.finish_steps` (about: whole resources per step). With
the horizon a year past the bench trace (5.4 million rows) the replay's engine process
peaked at 202 MB (1 985 MB when the cut was one list)."""
_new: Final = tuple.__new__
"""Builds a NamedTuple (:class:`Context`, :class:`Applied`) from all its fields without the
generated ``__new__``'s Python frame: the settled instant moves with almost every record."""


class Engine:
    """Per-partition metering engine over mutable mappings of entity and account states.

    Args:
        policy: period grid, lateness, idle advance, rule 3 and 4b limits.
        entities: resource UUID -> :class:`~metering.states.EntityState`.
        accounts: account UUID -> :class:`~metering.states.AccountState`.
    """

    def __init__(self, policy: Policy | None = None,
                 entities: MutableMapping[str, EntityState] | None = None,
                 accounts: MutableMapping[str, AccountState] | None = None) -> None:
        self.policy = p = policy or Policy()
        self.entities: MutableMapping[str, EntityState] = {} if entities is None else entities
        self.accounts = Accounts({} if accounts is None else accounts)
        self.lanes = Lanes(p.grid, p.lateness_ms, p.max_watermark_jump_ms, p.idle_advance_ms,
                           p.wait_for_inputs)
        self.settling = Settling()
        self.stats: Counter[str] = Counter()
        """Outcomes by :class:`~metering.lifecycle.Note` and record kind (metrics)."""
        self.closed_record_ms: list[int] = []
        """Timestamps (UTC ms) of the records that closed the final pieces emitted since the
        caller last cleared it (latency metrics)."""
        self.advanced_to = NEVER
        self._cut_queue: list[str] = []
        self._changed: set[str] = set()
        self._last_ctx: Context | None = None

    def _ctx(self, record_ms: int | None = None) -> Context:
        """The step context at the current settled instant (reused while it holds)."""
        ctx = self._last_ctx
        settled = self.lanes.settled
        if ctx is not None and ctx.settled == settled and ctx.record_ms == record_ms:
            return ctx
        return self._new_ctx(settled, record_ms)

    def _new_ctx(self, settled: int, record_ms: int | None) -> Context:
        """A new step context at ``settled`` (UTC ms), kept for reuse."""
        horizon = NEVER if settled <= NEVER else settled - self.policy.orphan_close_ttl_ms
        ctx = self._last_ctx = _new(Context, (self.policy.grid, self.accounts.store, settled,
                                              horizon, record_ms))
        return ctx

    def _prune(self, state: EntityState, settled: int) -> None:
        """Prune ``state``'s attribute changes nothing can see any more once every lane
        passed ``settled`` (UTC ms), if two could be of one attribute."""
        changes = state.changes
        # two changes can only be pruned if they are of one attribute (the usual two, a VM's
        # offering and template, are not): prune_changes would find nothing to drop
        if len(changes) > 1 and (len(changes) > 2 or changes[0][1] == changes[1][1]):
            bound = settled
            if self.policy.lateness_ms is not None and bound > NEVER:
                bound -= self.policy.lateness_ms  # a record this late may still open a piece
            if changes[1][0] <= bound:
                prune_changes(state, bound)

    def _store(self, entity_id: str, state: EntityState, settled: int,
               slots_changed: bool = True) -> None:
        """Keep ``state`` (:meth:`_prune` d at ``settled``, UTC ms) and index its open slots
        unless ``slots_changed`` is False."""
        if len(state.changes) > 1:
            self._prune(state, settled)
        self.entities[entity_id] = state
        self._changed.add(entity_id)
        if slots_changed:
            self.accounts.touched[entity_id] = state

    def _cut(self, entity_id: str, state: EntityState, upto: int, ctx: Context,
             reason: str, out: list[UsageInterval], store: bool = False) -> None:
        """Cut ``state`` at ``upto``; store it if rows came out (or always, with ``store``)."""
        rows = cut(state, entity_id, upto, ctx, reason)
        if rows or store:
            out.extend(rows)
            self._store(entity_id, state, self.lanes.settled)

    def apply(self, records: Iterable[Record]) -> Applied:
        """Apply records in order; rows include held closes of other resources they settled."""
        out: list[UsageInterval] = []
        self._changed = changed = set[str]()
        accounts: set[str] = set()
        lanes, heap, resource = self.lanes, self.settling.heap, self._resource
        applied = duplicates = 0
        for value, src, wall_ms, record_ms in records:
            if isinstance(value, UsageEvent):
                if resource(value.resource_id, value, src, wall_ms, record_ms, out):
                    applied += 1
                else:
                    duplicates += 1
            elif isinstance(value, Enrichment):
                resource(value.entity_id, value, src, wall_ms, record_ms, out)
            elif isinstance(value, AccountCreated | AccountDeleted):
                accounts.add(value.account_id)
                self._account(value, src, out)
                lanes.observe(src.lane, value.time_ms, wall_ms, src.offset)
            else:
                self._skipped(value)
                continue
            if heap and heap[0][0] <= lanes.settled:  # held closes this record settled
                out.extend(self._release(lanes.settled))
        if applied:
            self.stats["applied"] += applied
        if duplicates:
            self.stats["duplicate_record"] += duplicates
        self.accounts.bound()
        return Applied(out, changed, accounts)

    def _resource(self, entity_id: str, value: UsageEvent | Enrichment, src: Source,
                  wall_ms: int | None, record_ms: int | None, out: list[UsageInterval]
                  ) -> bool:
        """Step one resource's state with ``value``, store it and take the record's event
        time into its lane; its rows (and its closes that the record itself settled) go to
        ``out``. False if the record was applied already (rule 6)."""
        lanes = self.lanes
        settled = lanes.settled
        ctx = self._last_ctx
        if ctx is None or ctx.settled != settled or ctx.record_ms != record_ms:
            ctx = self._new_ctx(settled, record_ms)
        state = self.entities.get(entity_id)
        if (state is not None and state.slots and lanes.cut_boundary > NEVER
                and not is_duplicate(state, src)):
            out.extend(cut(state, entity_id, lanes.cut_boundary, ctx))  # lazy period cut
        lane = src.lane
        state, rows, notes, held = step(state, value, src, ctx, lane)
        if notes:
            stats = self.stats
            for note in notes:
                stats[note] += 1
        if rows:
            out.extend(rows)
            if record_ms is not None:
                self.closed_record_ms.extend(record_ms for row in rows if row.final)
        if len(state.changes) > 1:  # stored: what _store does, without the call
            self._prune(state, settled)
        self.entities[entity_id] = state
        self._changed.add(entity_id)
        self.accounts.touched[entity_id] = state
        lanes.observe(lane, value.time_ms, wall_ms, src.offset)
        if held:
            self._hold(entity_id, state, held, ctx, out)
        return _DUPLICATE not in notes

    def _hold(self, entity_id: str, state: EntityState, held: Sequence[Held], ctx: Context,
              out: list[UsageInterval]) -> None:
        """Schedule the closes a step held; release them at once if the record that closed
        them also settled them and no other held close is due (the usual case in replay):
        what :meth:`_release` would do next, without the heap."""
        settled = self.lanes.settled
        heap = self.settling.heap
        if not (heap and heap[0][0] <= settled):
            for h in held:
                if h.end > settled:
                    break
            else:
                self._release_one(entity_id, state, settled, ctx, out)
                return
        for h in held:
            self.settling.hold(h.end, entity_id)

    def _skipped(self, value: Ignored | Rejected) -> None:
        if isinstance(value, Ignored):
            self.stats[f"ignored:{value.kind}"] += 1
        else:
            self.stats[f"rejected:{value.reason.value}"] += 1

    def _account(self, ev: AccountCreated | AccountDeleted, src: Source,
                 out: list[UsageInterval]) -> None:
        if type(ev) is AccountCreated:
            new = self.accounts.created(ev, src)
            self.stats["account_created" if new else "duplicate"] += 1
            return
        assert type(ev) is AccountDeleted
        if not self.accounts.deleted(ev, src):
            self.stats["duplicate"] += 1
            return
        self.stats["account_deleted"] += 1
        # Deferred (rule 5 by event time): the account's intervals close at the deletion time
        # once the watermark passes it, so resource events of other lanes still in flight and
        # older than the deletion are applied first. A deletion that arrives after the
        # watermark already passed it closes at once.
        boundary = self.lanes.cut_boundary
        if boundary >= ev.time_ms:
            ctx = self._ctx()
            for entity_id in self.accounts.open_of(ev.account_id):
                state = self.entities.get(entity_id)
                if state is not None:
                    self._cut(entity_id, state, boundary, ctx, CloseReason.PERIOD, out, True)

    def _release(self, settled: int) -> list[UsageInterval]:
        """Emit the held intervals ending at or before ``settled`` (UTC ms)."""
        out: list[UsageInterval] = []
        ctx = self._ctx()
        for entity_id in self.settling.pop_due(settled):
            state = self.entities.get(entity_id)
            if state is None or not state.held:
                continue  # a stale entry: released already
            self._release_one(entity_id, state, settled, ctx, out)
        return out

    def _release_one(self, entity_id: str, state: EntityState, settled: int, ctx: Context,
                     out: list[UsageInterval]) -> None:
        """Emit ``state``'s held intervals ending at or before ``settled`` (UTC ms)."""
        for h in state.held:
            if h.end <= settled and h.record_ms is not None:
                self.closed_record_ms.append(h.record_ms)
        rows = release(state, entity_id, settled, ctx)
        if rows or not state.held:
            out.extend(rows)
            self._store(entity_id, state, self.lanes.settled, slots_changed=False)

    def process(self, value: Decoded, src: Source, wall_ms: int | None = None,
                record_ms: int | None = None) -> list[UsageInterval]:
        """:meth:`apply` of one record; its rows."""
        return self.apply((Record(value, src, wall_ms, record_ms),)).rows

    def report(self, lanes: dict[Lane, tuple[int, int]], inputs: dict[str, int] | None = None,
               wall_ms: int | None = None) -> None:
        """Take a tick's lane progress (see :meth:`Lanes.report`)."""
        self.lanes.report(lanes, inputs, wall_ms)

    def advance(self, limit: int | None = None) -> Applied:
        """Emit settled held intervals and completed periods of open entities (rule 8).

        Called after each tick (:meth:`report`). Work is proportional to the open entities,
        and only when a period completed. With ``limit``, one call cuts at most that many
        open entities; while :attr:`cutting` is true the caller sends the rows, stores the
        states and calls again. Rows do not depend on the chunking: an entity a record
        touches meanwhile is cut first (lazily).
        """
        self._changed = changed = set[str]()
        lanes = self.lanes
        out = self._release(lanes.settled) if self.settling.due(lanes.settled) else []
        if lanes.cut_boundary > self.advanced_to:
            self.advanced_to = lanes.cut_boundary
            self.accounts.sync()
            self._cut_queue = sorted(self.accounts.open, reverse=True)
        queue, boundary = self._cut_queue, self.advanced_to
        ctx = self._ctx()
        for _ in range(len(queue) if limit is None else min(limit, len(queue))):
            entity_id = queue.pop()
            state = self.entities.get(entity_id)
            if state is not None and state.slots and min(
                    s.start for s in state.slots.values()) < boundary:
                self._cut(entity_id, state, boundary, ctx, CloseReason.PERIOD, out)
        self.accounts.bound()
        return Applied(out, changed, set())

    @property
    def cutting(self) -> bool:
        """True while a period cut started by :meth:`advance` has entities left to cut."""
        return bool(self._cut_queue)

    def finish(self, until_ms: int | None = None) -> Applied:
        """Cut every open interval at the replay horizon (rule 10), in one call: the rows and
        changed keys of every step of :meth:`finish_steps`, in order."""
        rows: list[UsageInterval] = []
        changed: set[str] = set()
        for applied in self.finish_steps(until_ms, max_rows=None):
            rows += applied.rows
            changed |= applied.entities
        return Applied(rows, changed, set())

    def finish_steps(self, until_ms: int | None = None,
                     max_rows: int | None = FINISH_STEP_ROWS) -> Iterator[Applied]:
        """Cut every open interval at the replay horizon (rule 10), a step at a time.

        With ``until_ms`` (UTC ms) the horizon is that instant (``close_reason="until"``
        unless it is a period boundary); without it, the last period boundary at or before
        the newest event time any lane confirmed (an unconfirmed outlier, rule 4b, does not
        move it). Open intervals stay open in the state.

        Each step holds the rows of whole resources, in resource order: a step ends after
        the resource that brought its rows to ``max_rows`` or more (None: one step), so
        memory stays bounded however far the horizon lies beyond the input (every open
        resource gets a row per period up to it). The steps' rows, concatenated, do not
        depend on ``max_rows``. At least one step is yielded; the caller takes each step's
        rows before asking for the next.
        """
        self._changed = changed = set[str]()
        out = self._release(FOREVER)  # the whole input is known: nothing is in flight
        if until_ms is not None:
            horizon, reason = until_ms, CloseReason.UNTIL
        else:
            newest = self.lanes.newest()
            if newest == NEVER:
                yield Applied(out, changed, set())
                return
            horizon, reason = self.policy.grid.floor(newest), CloseReason.PERIOD
        ctx = self._ctx()
        self.accounts.sync()
        for entity_id in sorted(self.accounts.open):
            state = self.entities.get(entity_id)
            if state is not None and state.slots:
                self._cut(entity_id, state, horizon, ctx, reason, out)
                if max_rows is not None and len(out) >= max_rows:
                    self.accounts.bound()
                    yield Applied(out, changed, set())
                    self._changed = changed = set[str]()
                    out = []
        self.accounts.bound()
        yield Applied(out, changed, set())

    def rebuild_index(self, items: Iterable[tuple[str, EntityState]]) -> None:
        """Rebuild the open-interval index and the held heap from stored states (restore)."""
        self.accounts.clear_index()
        self.settling.clear()
        for entity_id, state in items:
            self.accounts.index(entity_id, tuple(state.slots))
            for h in state.held:
                self.settling.hold(h.end, entity_id)

    # Read-only views for metrics and tests.
    @property
    def open_entities(self) -> dict[str, tuple[tuple[int, str, str], ...]]:
        """Resources with open intervals -> the keys of their open slots."""
        self.accounts.sync()
        return self.accounts.open

    @property
    def open_counts(self) -> Counter[int]:
        """Open intervals per usage type (a copy)."""
        self.accounts.sync()
        return Counter(self.accounts.open_counts)

    @property
    def newest_ms(self) -> int:
        """The newest event time (UTC ms) any lane confirmed; NEVER if none (an unconfirmed
        outlier, rule 4b, is not counted)."""
        return self.lanes.newest()

    def low_watermark(self) -> int:
        """The engine's watermark (UTC ms): the minimum over its lanes; NEVER if none."""
        return self.lanes.low_watermark()

    def watermark(self, lane: Lane) -> int:
        """Effective watermark (UTC ms) of a lane; NEVER if it has seen nothing."""
        return self.lanes.watermark(lane)
