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

if TYPE_CHECKING:
    from storage.replay import ReplayProgress

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
        self.stream.write(f"\r{text}   ")
        if end:
            self.stream.write("\n")
        self.stream.flush()


class ReplayDisplay(_Line):
    """``replay:  42.0% 1,234,567 records  250,000 rec/s``; a callback for ``run_replay``."""

    def __call__(self, report: ReplayProgress) -> None:
        elapsed = self.due(report.done)
        if elapsed is None:
            return
        rate = report.records / max(elapsed, 1e-9)
        total = report.total_bytes
        pct = f" {100 * report.bytes_read / total:5.1f}%" if total else ""
        self.draw(f"replay:{pct} {report.records:,} records  {rate:,.0f} rec/s", report.done)


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
