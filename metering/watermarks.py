"""Event-time progress of one source lane (contract rule 4b, second half, and rule 8).

A lane (``topic/partition``) is read in offset order; its watermark is the newest event time
it has *confirmed*. One record never moves it by more than ``jump_ms``
(``max_watermark_jump``): a record further ahead is held as the lane's single *suspect* and
takes effect only when

* a later record of the same lane also lies beyond the jump: the watermark advances to the
  smaller of the two (two records agree that time moved on; an outlier far ahead of the
  rest of the trace is never confirmed by the records after it), or
* in the streaming worker, the wall clock confirms it: the reader is caught up on the lane
  and the suspect is within ``jump_ms`` of the wall clock (a live stream resuming after a
  quiet period).

"Later" means a higher offset: a redelivered record (the suspect itself, read again after a
crash or a rebalance) confirms nothing. A suspect the confirmed watermark comes within
``jump_ms`` of is dropped (it is no longer an
outlier; the lane's own records move the watermark on). The record itself is always applied
to its own resource; only the watermark is held. The first record of a lane is accepted as
it is (nothing to compare it with).

Idle advance (rule 8) is measured by the caller with a monotonic clock and passed in as a
plain duration: a step of the host's wall clock is not idle time.

These functions are pure: the ``replay`` meter, the worker's per-partition meters and the
worker's ingest agent (which announces lane progress in ticks) all call them. Instants are
UTC epoch milliseconds; durations are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

NEVER = -(2**62)
"""A watermark before any event (UTC ms)."""

Suspect = tuple[int, int]
"""An unconfirmed outlier of a lane: (event time UTC ms, offset of its record)."""


def _still_suspect(watermark: int, suspect: Suspect | None,
                   jump_ms: int) -> Suspect | None:
    """The suspect, unless the watermark passed it or came within ``jump_ms`` of it."""
    if suspect is None or suspect[0] - watermark <= jump_ms:
        return None
    return suspect


def step(watermark: int, suspect: Suspect | None, time_ms: int, offset: int,
         jump_ms: int | None) -> tuple[int, Suspect | None]:
    """Take one record's event time into a lane's progress.

    Args:
        watermark: the lane's confirmed watermark (UTC ms), :data:`NEVER` before any record.
        suspect: the lane's unconfirmed outlier or None.
        time_ms: the record's event time (UTC ms).
        offset: the record's offset in the lane.
        jump_ms: the largest advance one record may make (ms); None: no limit.

    Returns:
        (new watermark, new suspect). The watermark never decreases.
    """
    if jump_ms is None:
        return max(watermark, time_ms), None
    if suspect is not None and offset <= suspect[1]:
        return watermark, suspect  # read again (redelivery): it confirms nothing
    if time_ms <= watermark:
        return watermark, _still_suspect(watermark, suspect, jump_ms)
    if watermark <= NEVER or time_ms - watermark <= jump_ms:
        return time_ms, _still_suspect(time_ms, suspect, jump_ms)
    if suspect is None:
        return watermark, (time_ms, offset)  # beyond the jump: held until confirmed
    if suspect[0] <= time_ms:
        low, high = suspect, (time_ms, offset)
    else:
        low, high = (time_ms, offset), suspect
    if high[0] - low[0] <= jump_ms:  # the two agree: time moved on
        return high[0], None
    return low[0], high  # confirmed up to the smaller; the larger is the new suspect


def confirmed(watermark: int, suspect: Suspect | None, progress_ms: int,
              jump_ms: int | None) -> tuple[int, Suspect | None]:
    """Take progress (UTC ms) that was already confirmed elsewhere (a tick of the reader)."""
    if progress_ms > watermark:
        watermark = progress_ms
    if jump_ms is None:
        return watermark, None
    return watermark, _still_suspect(watermark, suspect, jump_ms)


def confirm_by_wall(watermark: int, suspect: Suspect | None, wall_ms: int,
                    jump_ms: int | None) -> tuple[int, Suspect | None]:
    """Confirm a suspect within ``jump_ms`` of the wall clock (UTC ms).

    Call it only for a lane whose reader is caught up: the suspect is then the newest record
    of a live stream, not an outlier among older records read from a backlog.
    """
    if suspect is None or jump_ms is None or suspect[0] < wall_ms - jump_ms:
        return watermark, suspect
    return max(watermark, suspect[0]), None


def idle_watermark(max_event_ms: int, idle_ms: int, idle_advance_ms: int,
                   wall_ms: int) -> int | None:
    """Where idle advance moves a lane's watermark (UTC ms), or None if it is not idle long.

    ``idle_ms`` is how long (ms, measured with a monotonic clock by the lane's reader) the
    reader has been caught up without a new record; ``max_event_ms`` the lane's confirmed
    newest event time. The watermark follows the time the lane has been idle beyond
    ``idle_advance_ms``, and never passes the wall clock ``wall_ms``.
    """
    if idle_ms <= idle_advance_ms:
        return None
    return min(max_event_ms + idle_ms - idle_advance_ms, wall_ms)


@dataclass(slots=True)
class LaneReader:
    """What the worker's ingest agent knows of one input lane it reads (for ticks).

    ``newest_ms`` is the newest *confirmed* event time (UTC ms) among the lane's forwarded
    and delivered records, -1 before any; ``suspect`` the lane's unconfirmed outlier (never
    announced); ``idle_since_mono_ms`` the monotonic time (ms, the reader's own
    ``time.monotonic``) of the lane's last meterable record or of the last moment the reader
    was behind on it.
    """

    newest_ms: int = -1
    suspect: Suspect | None = None
    idle_since_mono_ms: int = 0
    last_offset: int = -1
    """Highest offset folded in: a record at or below it is read again and moves nothing."""

    def fold(self, records: list[tuple[int, int]],
             jump_ms: int | None) -> tuple[int, Suspect | None]:
        """(confirmed, suspect) after ``records``: (offset, event time UTC ms) in offset
        order."""
        watermark = NEVER if self.newest_ms < 0 else self.newest_ms
        suspect = self.suspect
        last = self.last_offset
        for offset, time_ms in records:
            if offset <= last:
                continue  # read again after a rebalance: it confirms and moves nothing
            last = offset
            watermark, suspect = step(watermark, suspect, time_ms, offset, jump_ms)
        return watermark, suspect

    def delivered(self, watermark: int, suspect: Suspect | None, jump_ms: int | None,
                  mono_ms: int, last_offset: int = -1) -> None:
        """Take a :meth:`fold` result once its records (up to ``last_offset``) are
        delivered; the lane is not idle."""
        self.last_offset = max(self.last_offset, last_offset)
        newest, suspect = confirmed(NEVER if self.newest_ms < 0 else self.newest_ms,
                                    suspect, watermark, jump_ms)
        if newest > self.newest_ms:
            self.newest_ms = newest
        self.suspect = suspect
        self.idle_since_mono_ms = mono_ms

    def recovered(self, records: list[tuple[int, int]], jump_ms: int | None) -> None:
        """Take (offset, event time UTC ms) of records an earlier process delivered (read
        back after an assignment, in offset order): a lower bound of the lane's progress."""
        watermark, suspect = LaneReader().fold(records, jump_ms)
        if watermark < 0:
            return
        newest, self.suspect = confirmed(NEVER if self.newest_ms < 0 else self.newest_ms,
                                         suspect if self.suspect is None else self.suspect,
                                         watermark, jump_ms)
        self.newest_ms = max(self.newest_ms, newest)

    def report(self, caught_up: bool, wall_ms: int, mono_ms: int,
               jump_ms: int | None) -> tuple[int, int]:
        """The lane's entry in a tick: ``(max_event_ms, idle_from_ms)``.

        ``caught_up``: the reader has processed everything up to the lane's end offset (a
        reader that is behind or cannot tell is not idle, and its suspect is an outlier
        among older records, not a live stream resuming). ``idle_from_ms`` is the tick's
        wall clock ``wall_ms`` minus the monotonic idle time, so the meter's ``wall_ms -
        idle_from_ms`` is idle time a step of the host's wall clock cannot inflate.
        """
        if not caught_up:
            self.idle_since_mono_ms = mono_ms
        elif self.suspect is not None:
            newest, self.suspect = confirm_by_wall(self.newest_ms, self.suspect, wall_ms,
                                                   jump_ms)
            self.newest_ms = max(self.newest_ms, newest)
        idle = max(0, mono_ms - self.idle_since_mono_ms)
        return self.newest_ms, wall_ms - idle
