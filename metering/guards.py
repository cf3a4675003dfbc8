"""Decisions the worker takes about the world it runs in (pure; the agents do the I/O).

* :func:`partition_problems`: the configured ``partitions`` against the real partition
  counts of the topics that must have exactly that many (the internal events topic and the
  state tables' changelogs). Kafka cannot shrink a topic, and growing one remaps keys away
  from their state, so a mismatch is refused at start-up, never worked around.
* :class:`Grid` and :func:`grid_decision`: the period grid (period + IANA time zone) the
  existing state was built with against the configured one. Period cuts, ``period_start``
  and ``interval_id`` all derive from the grid; changing it under existing state yields ids
  that match neither the old nor the new grid's replay, so it is refused unless forced.
* :func:`liveness_problems`: why a running worker cannot make progress (an output topic
  missing, the broker unreachable, deliveries unacknowledged), for ``/readyz``.

Times are seconds (floats) measured by the caller on a monotonic clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import orjson


def partition_problems(configured: int, actual: Mapping[str, int]) -> list[str]:
    """One line per existing topic whose partition count differs from ``configured``.

    ``actual`` maps each *existing* topic that must have ``configured`` partitions to its
    real partition count (missing topics are left out: the worker creates them).
    """
    return [f"topic {topic!r} has {count} partitions, but partitions={configured} is "
            "configured" for topic, count in sorted(actual.items()) if count != configured]


def partition_refusal(configured: int, actual: Mapping[str, int]) -> str:
    """The start-up refusal for :func:`partition_problems` (what exists, what to do)."""
    problems = partition_problems(configured, actual)
    counts = sorted(set(actual.values()))
    existing = counts[0] if len(counts) == 1 else None
    fix = (f"start with --partitions {existing} (METERING_PARTITIONS={existing}), the count "
           "the existing state was built with" if existing is not None else
           "the existing topics disagree among themselves; restore a consistent set")
    return ("the partition count does not match the existing topics:\n  - "
            + "\n  - ".join(problems)
            + "\nKafka cannot shrink a topic, and growing the internal topic or the changelogs"
            " moves resources away from their state. Either " + fix + ", or change the count"
            " with a new app id and events topic replaying the input (README, Operations:"
            " changing the number of partitions).")


@dataclass(frozen=True)
class Grid:
    """The period grid of the state: ``period`` (hour or day) in IANA ``timezone``."""

    period: str
    timezone: str

    def __str__(self) -> str:
        return f"period={self.period} timezone={self.timezone}"

    def encode(self) -> bytes:
        """The record value stored with the state (JSON, version 1)."""
        return orjson.dumps({"v": 1, "period": self.period, "timezone": self.timezone})

    @staticmethod
    def decode(raw: bytes) -> Grid | None:
        """The grid of a stored record, or None if it is not one this version can read."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        period, timezone = data.get("period"), data.get("timezone")
        if not isinstance(period, str) or not isinstance(timezone, str):
            return None
        return Grid(period, timezone)


class GridAction(Enum):
    """What the worker does about the stored grid at start-up."""

    KEEP = "keep"
    """The stored grid equals the configured one: nothing to write."""
    RECORD = "record"
    """Record the configured grid (no state yet, or state from before grids were stored)."""
    FORCE = "force"
    """A different grid, accepted because ``force_period_change`` is set: warn, record it."""
    REFUSE = "refuse"
    """A different grid against existing state: refuse to start."""


@dataclass(frozen=True)
class GridDecision:
    action: GridAction
    message: str


def grid_decision(stored: Grid | None, configured: Grid, state_exists: bool,
                  force: bool, unreadable: bool = False) -> GridDecision:
    """Compare the grid stored with the state to the configured one.

    Args:
        stored: the grid recorded with the state (None: none recorded, or unreadable).
        configured: ``period`` and ``timezone`` of the settings.
        state_exists: the internal topic or a changelog already exists.
        force: ``force_period_change``.
        unreadable: a record exists but this version cannot read it (a newer format).
    """
    if not state_exists:
        return GridDecision(GridAction.RECORD, f"new state: recording {configured}")
    if stored == configured:
        return GridDecision(GridAction.KEEP, f"state built with {configured}")
    if stored is None and not unreadable:
        return GridDecision(GridAction.RECORD, f"state from before grids were recorded: "
                            f"assuming and recording the configured {configured}")
    what = "an unreadable (newer?) grid record" if stored is None else str(stored)
    if force:
        return GridDecision(GridAction.FORCE, (
            f"force_period_change: the existing state was built with {what}, now running "
            f"with {configured}; periods already cut keep their old boundaries and ids, "
            "later ones follow the new grid (replay of the whole input will not match)"))
    return GridDecision(GridAction.REFUSE, (
        f"the existing state was built with {what}, but {configured} is configured. "
        "Periods and interval ids derive from the grid, so a change would emit ids that "
        "match neither grid's replay. Start with the stored period and timezone, or set "
        "force_period_change=true (METERING_FORCE_PERIOD_CHANGE) to accept the change, or "
        "start a new app id replaying the input with the new grid."))


def liveness_problems(*, missing_topics: Iterable[str], broker_error: str | None,
                      broker_down_s: float, oldest_pending_s: float | None,
                      stuck_after_s: float) -> list[str]:
    """Reasons a running worker cannot make progress (empty: none known).

    Args:
        missing_topics: topics the worker writes to that the broker says do not exist.
        broker_error: the last metadata request's error while it keeps failing, else None.
        broker_down_s: seconds the metadata requests have been failing.
        oldest_pending_s: age of the oldest send still waiting for its acknowledgement.
        stuck_after_s: a send waiting longer than this is reported.
    """
    problems: list[str] = []
    if broker_error is not None:
        problems.append(f"broker unreachable for {broker_down_s:.0f} s ({broker_error})")
    for topic in sorted(missing_topics):
        problems.append(f"topic {topic!r} does not exist: sends to it wait; recreate it "
                        "(or restart the worker, which creates it)")
    if oldest_pending_s is not None and oldest_pending_s > stuck_after_s:
        problems.append(f"sends unacknowledged for {oldest_pending_s:.0f} s")
    return problems
