"""Pure rules behind the operational signals: consumer lag, event-time lag and readiness.

The worker and the archive feed these functions with offsets and clocks they read from Kafka
and from the meter; the decisions (what counts as lag, when a process is ready) live here so
they are tested without a broker. Offsets are Kafka offsets; instants are UTC epoch ms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from metering.watermarks import NEVER


def consumer_lag(end: int, committed: int | None, beginning: int) -> int:
    """Records a consumer group still has to commit on one partition.

    ``end`` is the log-end offset (the next offset to be written), ``committed`` the group's
    committed offset (the next record it will read) or None when it never committed, and
    ``beginning`` the earliest offset still in the log. A group without a commit starts at
    the beginning (``auto.offset.reset=earliest``). Never negative: a committed offset past
    a truncated log counts as caught up.
    """
    start = beginning if committed is None or committed < 0 else max(committed, beginning)
    return max(0, end - start)


def event_time_lag_seconds(now_ms: int, watermark_ms: int) -> float | None:
    """Wall clock minus the event-time watermark, in seconds; None before any event.

    May be negative when the management server's clock runs ahead of ours.
    """
    if watermark_ms <= NEVER:
        return None
    return (now_ms - watermark_ms) / 1000.0


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether a process should receive traffic (``/readyz``), and why not."""

    ready: bool
    reasons: tuple[str, ...]


def readiness(
    assigned: bool,
    lags: Mapping[tuple[str, int], int] | None,
    max_lag: int,
) -> Readiness:
    """Ready once the group assigned partitions to us and each lags at most ``max_lag``.

    Args:
        assigned: a rebalance completed and gave this process at least one partition.
        lags: records behind per (topic, partition) of the current assignment, measured
            after that rebalance; None if not measured yet.
        max_lag: the largest acceptable lag per partition, in records.
    """
    if not assigned:
        return Readiness(False, ("no partitions assigned yet (group joining or rebalancing)",))
    if lags is None:
        return Readiness(False, ("consumer lag not measured since the last rebalance",))
    behind = sorted((tp, lag) for tp, lag in lags.items() if lag > max_lag)
    if behind:
        worst = ", ".join(f"{t}[{p}]={lag}" for (t, p), lag in behind[:5])
        return Readiness(False, (f"{len(behind)} partition(s) lag more than {max_lag} records: "
                                 f"{worst}",))
    return Readiness(True, ())


def caught_up(read_to: int | None, end_offset: int | None) -> bool:
    """Whether a reader has processed its input partition up to the log end.

    ``read_to`` is the next offset the reader will process (None: not known yet, e.g. just
    assigned), ``end_offset`` the partition's log-end offset (None: could not be measured).
    A reader that cannot tell is not caught up.
    """
    return read_to is not None and end_offset is not None and read_to >= end_offset
