"""Lane clocks: event-time progress of an engine's source lanes (contract rules 4b and 8).

A *lane* is one ordered input sub-stream (``topic/partition``, :data:`metering.events.Lane`).
:class:`Lanes` keeps a :class:`LaneClock` per lane and derives the two instants the engine
acts on:

* :attr:`Lanes.settled`: every lane has passed it (the minimum of the lane watermarks, as in
  Flink); held closes ending there can be emitted;
* :attr:`Lanes.cut_boundary`: periods ending at or before it are complete (``settled`` minus
  the allowed lateness, floored to the period grid); None lateness: never (replay).

A record moves its lane's watermark by at most ``max_watermark_jump_ms``; a larger advance
waits for confirmation (:mod:`metering.watermarks`). A tick's report moves it by confirmed
progress and, for a lane idle long enough, by idle time (:meth:`Lanes.report`).

All instants are UTC epoch milliseconds; wall-clock times are passed in by callers.
"""

from __future__ import annotations

from dataclasses import dataclass

from metering.events import Lane, lane_of
from metering.periods import PeriodGrid
from metering.watermarks import NEVER, Suspect, confirmed, idle_watermark, step


@dataclass(slots=True)
class LaneClock:
    """Event-time progress of one source lane.

    ``max_event_ms`` is the newest confirmed event time (contract rule 4b: see
    :mod:`metering.watermarks`); ``arrival_wall_ms`` the wall-clock time (UTC ms) of the
    lane's last record or reported ``idle_from`` (informational; idle advance uses only the
    current tick's report); ``watermark`` the effective watermark, which idle advance may
    move beyond ``max_event_ms``; ``suspect`` the lane's one unconfirmed (event time UTC ms,
    offset) more than ``max_watermark_jump_ms`` ahead of it, or None; ``last_offset`` the
    highest record offset of the lane observed (a record at or below it is read again, after
    a crash or a rebalance, and moves nothing: rule 6).
    """

    max_event_ms: int = NEVER
    arrival_wall_ms: int | None = None
    watermark: int = NEVER
    suspect: Suspect | None = None
    last_offset: int = -1


class Lanes:
    """The lane clocks of one engine and the instants derived from them.

    Args:
        grid: the period grid (cut boundaries are period boundaries).
        lateness_ms: a period is complete once every lane passed its end plus this (ms);
            None: never by watermark (replay cuts at its end).
        jump_ms: the largest watermark advance one record makes (ms); None: no limit.
        idle_advance_ms: a lane its reader reports caught up and idle longer than this
            (ms) advances with the wall clock; None: never.
        wait_for_inputs: derive nothing until a report named every input lane.
    """

    __slots__ = ("clocks", "cut_boundary", "grid", "idle_advance_ms", "inputs_known",
                 "jump_ms", "lateness_ms", "settled")

    def __init__(self, grid: PeriodGrid, lateness_ms: int | None, jump_ms: int | None,
                 idle_advance_ms: int | None = None, wait_for_inputs: bool = False) -> None:
        self.grid = grid
        self.lateness_ms = lateness_ms
        self.jump_ms = jump_ms
        self.idle_advance_ms = idle_advance_ms
        self.clocks: dict[Lane, LaneClock] = {}
        self.inputs_known = not wait_for_inputs
        """False until the set of input lanes is known (see ``wait_for_inputs``)."""
        self.cut_boundary = NEVER
        """Periods ending at or before this instant (UTC ms) are complete."""
        self.settled = NEVER
        """Every lane has passed this instant (UTC ms)."""

    def clock(self, lane: Lane) -> LaneClock:
        """The clock of ``lane``, created empty if new."""
        clock = self.clocks.get(lane)
        if clock is None:
            clock = self.clocks[lane] = LaneClock()
        return clock

    def watermark(self, lane: Lane) -> int:
        """Effective watermark (UTC ms) of a lane; :data:`NEVER` if it has seen nothing."""
        clock = self.clocks.get(lane)
        return NEVER if clock is None else clock.watermark

    def low_watermark(self) -> int:
        """The minimum watermark over the lanes (UTC ms); :data:`NEVER` if none."""
        return min((c.watermark for c in self.clocks.values()), default=NEVER)

    def newest(self) -> int:
        """The newest event time (UTC ms) any lane confirmed; :data:`NEVER` if none."""
        return max((c.max_event_ms for c in self.clocks.values()), default=NEVER)

    def _set_watermark(self, clock: LaneClock, watermark: int) -> None:
        if watermark <= clock.watermark:
            return
        clock.watermark = watermark
        if clock.suspect is not None:  # passed, or no longer an outlier: forgotten
            clock.suspect = confirmed(watermark, clock.suspect, watermark, self.jump_ms)[1]
        self._derive()

    def _derive(self) -> None:
        if not self.inputs_known or not self.clocks:
            return
        # The engine's watermark is the minimum over its lanes (as in Flink): an account-wide
        # event on one lane (ACCOUNT.DELETE/CREATE) is never late for resources on another.
        clocks = self.clocks
        if len(clocks) == 1:
            low = next(iter(clocks.values())).watermark
        else:
            low = min(c.watermark for c in clocks.values())
        if low > self.settled:
            self.settled = low
        lateness = self.lateness_ms
        if lateness is None:
            return
        limit = low - lateness - 1  # periods ending before this are complete
        if limit > NEVER // 2:
            boundary = self.grid.floor(limit)
            if boundary > self.cut_boundary:
                self.cut_boundary = boundary

    def observe(self, lane: Lane, time_ms: int, wall_ms: int | None, offset: int) -> None:
        """Take one applied record's event time (UTC ms) at ``offset`` of ``lane``."""
        clock = self.clocks.get(lane)
        if clock is None:
            clock = self.clocks[lane] = LaneClock()
        if wall_ms is not None:
            clock.arrival_wall_ms = wall_ms
        if offset <= clock.last_offset:
            return  # read again: its first reading already moved what it could (rule 6)
        clock.last_offset = offset
        if time_ms <= clock.max_event_ms:
            return
        watermark = clock.watermark
        if time_ms <= watermark:  # behind an idle advance: nothing to confirm
            clock.max_event_ms = time_ms
            return
        jump = self.jump_ms
        if clock.suspect is None and (jump is None or watermark <= NEVER
                                      or time_ms - watermark <= jump):
            # the usual record, within the jump of its lane: the lane's watermark moves to
            # its time (what ``step`` and ``_set_watermark`` below give, without the calls)
            clock.max_event_ms = clock.watermark = time_ms
            if self.lateness_ms is None and len(self.clocks) == 1 and self.inputs_known:
                if time_ms > self.settled:  # _derive of the one lane, without lateness
                    self.settled = time_ms
            else:
                self._derive()
            return
        # Rule 4b: one record moves the watermark by at most max_watermark_jump; further
        # ahead it waits for a second record (the record itself was applied already).
        watermark, clock.suspect = step(clock.watermark, clock.suspect, time_ms, offset,
                                        self.jump_ms)
        if watermark > clock.watermark:
            clock.max_event_ms = max(clock.max_event_ms, watermark)
            self._set_watermark(clock, watermark)

    def report(self, lanes: dict[Lane, tuple[int, int]], inputs: dict[str, int] | None = None,
               wall_ms: int | None = None) -> None:
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
                lane = lane_of(topic, partition)
                if lane not in self.clocks:
                    self.clocks[lane] = LaneClock()
        if inputs and not self.inputs_known:
            self.inputs_known = True
            self._derive()
        for lane, (max_event, idle_from) in lanes.items():
            clock = self.clock(lane)
            if clock.arrival_wall_ms is None or idle_from > clock.arrival_wall_ms:
                clock.arrival_wall_ms = idle_from
            if max_event > clock.max_event_ms and max_event >= 0:
                clock.max_event_ms = max_event
                watermark, clock.suspect = confirmed(clock.watermark, clock.suspect,
                                                     max_event, self.jump_ms)
                self._set_watermark(clock, watermark)
        limit = self.idle_advance_ms
        if limit is None or wall_ms is None:
            return
        silent: list[LaneClock] = []
        for lane, (_, idle_from) in lanes.items():
            idle = wall_ms - idle_from
            if idle <= limit:
                continue
            clock = self.clocks[lane]
            if clock.max_event_ms <= NEVER:
                silent.append(clock)  # caught up and never delivered anything: empty
            else:
                target = idle_watermark(clock.max_event_ms, idle, limit, wall_ms)
                if target is not None:
                    self._set_watermark(clock, target)
        if silent:
            # An empty input partition follows the slowest lane that has data, so it stops
            # holding back.
            floor = min((c.watermark for c in self.clocks.values()
                         if c.max_event_ms > NEVER), default=NEVER)
            if floor > NEVER:
                for clock in silent:
                    self._set_watermark(clock, floor)
