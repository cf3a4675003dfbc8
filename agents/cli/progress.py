"""One-line progress displays on stderr (the core and storage only report numbers).

:class:`ReplayDisplay` draws :class:`storage.replay.ReplayProgress` reports,
:class:`SimulateDisplay` the simulator's ``(records, simulated time)`` reports. Both redraw
at most twice a second, and only when enabled (by default: when stderr is a terminal).
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING

from metering.eventtime import iso
from metering.periods import PERIOD_MS

if TYPE_CHECKING:
    from storage.replay import HorizonProgress, ReplayProgress

REDRAW_S = 0.5
"""Least seconds between two redraws."""


def want_progress(flag: bool | None, stream: IO[str] | None = None) -> bool:
    """``--progress``/``--no-progress``, or (None) whether ``stream`` (stderr) is a terminal."""
    return (stream or sys.stderr).isatty() if flag is None else flag


class _Line:
    """A throttled one-line display: ``draw`` rewrites it, ``end`` finishes it."""

    def __init__(self, enabled: bool, stream: IO[str] | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.next_at = self.started + REDRAW_S
        self.width = 0
        """Length of the line drawn last (a shorter one is padded over it)."""

    def due(self, force: bool) -> float | None:
        """The elapsed seconds if a redraw is due now (always when ``force``), else None."""
        if not self.enabled:
            return None
        now = time.monotonic()
        if not force and now < self.next_at:
            return None
        self.next_at = now + REDRAW_S
        return now - self.started

    def draw(self, text: str, end: bool) -> None:
        width, self.width = self.width, len(text)
        self.stream.write(f"\r{text.ljust(width)}   ")
        if end:
            self.stream.write("\n")
            self.width = 0
        self.stream.flush()


FAR_HORIZON_MS = 31 * PERIOD_MS["day"]
"""A ``--until`` more than this (ms: 31 days) past the newest event gets a notice: every
resource still open is cut into a piece per period up to it, which is rarely meant."""


class ReplayDisplay(_Line):
    """``replay:  42.0% 1,234,567 records  250,000 rec/s``, then during the horizon cut
    ``replay: 1,234,567 records; horizon 2026-01-01T00:00:00Z: 40% of 12,345 open resources
    cut, 1,234,567 intervals``; a callback for ``run_replay``.

    Whether or not the line is drawn, a ``--until`` more than :data:`FAR_HORIZON_MS` past
    the newest event gets a notice on ``notices`` (stderr) as the cut starts, so the user
    can stop a horizon they did not mean (``period_ms``: the period length in ms, for the
    estimate of rows).
    """

    def __init__(self, enabled: bool, stream: IO[str] | None = None,
                 period_ms: int = PERIOD_MS["day"], notices: IO[str] | None = None) -> None:
        super().__init__(enabled, stream)
        self.period_ms = period_ms
        self.notices = notices or sys.stderr
        self.noticed = False

    def __call__(self, report: ReplayProgress) -> None:
        horizon = report.horizon
        if horizon is not None and not self.noticed:
            self.noticed = True
            self._notice(horizon)
        elapsed = self.due(report.done or report.writing
                           or (horizon is not None and horizon.done))
        if elapsed is None:
            return
        if report.writing:
            self.draw(f"replay: {report.records:,} records; writing the last Parquet parts",
                      False)
            return
        if horizon is not None:
            share = 100 * horizon.cut / horizon.resources if horizon.resources else 100.0
            at = "" if horizon.until_ms is None else f" {iso(horizon.until_ms)}"
            self.draw(f"replay: {report.records:,} records; horizon{at}: {share:5.1f}% of "
                      f"{horizon.resources:,} open resources cut, {horizon.rows:,} intervals",
                      horizon.done)
            return
        rate = report.records / max(elapsed, 1e-9)
        total = report.total_bytes
        pct = f" {100 * report.bytes_read / total:5.1f}%" if total else ""
        self.draw(f"replay:{pct} {report.records:,} records  {rate:,.0f} rec/s", report.done)

    def _notice(self, horizon: HorizonProgress) -> None:
        """The far-horizon notice, if the horizon is that far past the newest event."""
        until, newest = horizon.until_ms, horizon.newest_ms
        if until is None or newest is None or until - newest <= FAR_HORIZON_MS:
            return
        days = (until - newest) / PERIOD_MS["day"]
        rows = horizon.intervals * -(-(until - newest) // self.period_ms)
        if self.enabled:  # the notice on a line of its own
            self.stream.write("\n")
            self.width = 0
        self.notices.write(
            f"metering replay: note: --until {iso(until)} is {days:,.0f} days past the newest "
            f"event ({iso(newest)}): each of the {horizon.intervals:,} intervals still open "
            f"(of {horizon.resources:,} resources) gets a row per period up to it (about "
            f"{rows:,} rows). If that is not what you meant, stop with Ctrl-C and give an "
            "earlier --until.\n")
        self.notices.flush()


class SimulateDisplay(_Line):
    """``simulate:  42.0%  sim time 2025-03-01T12:00Z  1,234 records  900 rec/s``; a
    callback for ``metering.simulate.run.write_records``."""

    def __init__(self, enabled: bool, start_ms: int, until_ms: int, label: str = "simulate",
                 stream: IO[str] | None = None) -> None:
        super().__init__(enabled, stream)
        self.start_ms, self.until_ms = start_ms, until_ms
        self.label = label

    def __call__(self, records: int, sim_ms: int, done: bool = False) -> None:
        elapsed = self.due(done)
        if elapsed is None:
            return
        span = max(1, self.until_ms - self.start_ms)
        pct = min(100.0, 100.0 * (sim_ms - self.start_ms) / span)
        rate = records / max(elapsed, 1e-9)
        self.draw(f"{self.label}: {pct:5.1f}%  sim time {iso(sim_ms)[:16]}Z  "
                  f"{records:,} records  {rate:,.0f} rec/s", done)
