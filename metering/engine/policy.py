"""The engine's vocabulary: its policy, the records it takes and what each call returns.

Instants are UTC epoch milliseconds; durations are milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from metering.events import Decoded, Source
from metering.intervals import UsageInterval
from metering.periods import PeriodGrid


@dataclass(frozen=True)
class Policy:
    """How the engine cuts periods.

    Attributes:
        grid: aggregation periods (hour/day in a time zone).
        lateness_ms: a period is complete once the watermark passes its end plus this.
            None: periods are only cut when an interval closes or at :meth:`Engine.finish`
            (batch replay: the whole input is known, so no event is ever late).
        idle_advance_ms: once a lane's reader has been caught up without new records for
            this much wall-clock time, the lane's watermark moves on with the wall clock
            (None: never; replay uses None). See :meth:`Lanes.report`.
        wait_for_inputs: close no period until a report named every input lane (the
            streaming worker: records of some lanes can reach a partition before any record
            of another lane, which must still hold the watermark back).
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


class Record(NamedTuple):
    """One decoded input record: its value, where it came from, the wall-clock time (UTC
    ms) it was forwarded and its Kafka timestamp (UTC ms, for latency metrics), if known."""

    value: Decoded
    source: Source
    wall_ms: int | None = None
    record_ms: int | None = None


class Applied(NamedTuple):
    """What one call did: rows to emit (in order) and the keys of the changed states."""

    rows: list[UsageInterval]
    entities: set[str]
    accounts: set[str]
