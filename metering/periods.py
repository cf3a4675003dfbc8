"""Aggregation periods: hour or day boundaries in any IANA time zone.

A :class:`PeriodGrid` answers "which period holds this instant" and "where does it end".
Boundaries are local midnights (``day``) or local whole hours (``hour``) of the grid's time
zone, expressed as UTC epoch milliseconds; periods are half-open ``[start, end)``. Daylight
saving transitions give 23- or 25-hour days, and hour periods follow the local clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Period = Literal["hour", "day"]
PERIODS: Final[tuple[Period, ...]] = ("hour", "day")
_HOUR: Final = 3_600_000
_DAY: Final = 86_400_000
PERIOD_MS: Final[dict[Period, int]] = {"hour": _HOUR, "day": _DAY}
"""Nominal length of each period in ms (a local day across a DST change is an hour longer
or shorter: :class:`PeriodGrid` cuts the real boundaries)."""


def as_period(name: str) -> Period:
    """``name`` as a :data:`Period` (``hour`` or ``day``); ValueError if it is neither."""
    for period in PERIODS:
        if name == period:
            return period
    raise ValueError(f"period must be one of {PERIODS}, not {name!r}")


def load_timezone(name: str) -> dt.tzinfo:
    """An IANA time zone by name (``UTC``, ``Europe/Berlin``); ValueError if unknown."""
    if name.upper() in {"UTC", "Z", "ETC/UTC", "GMT"}:
        return dt.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or "
                         "Europe/Berlin)") from None


@dataclass(frozen=True)
class PeriodGrid:
    """Period boundaries of one length (``hour`` or ``day``) in one time zone."""

    period: Period = "hour"
    timezone: str = "UTC"
    _tz: dt.tzinfo = field(init=False, repr=False, compare=False)
    _fixed: int | None = field(init=False, repr=False, compare=False)
    _cache: dict[int, tuple[int, int]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    step_ms: int = field(init=False, repr=False, compare=False, default=0)
    """:attr:`fixed_step`, kept as a plain attribute (read once per emitted interval)."""

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"period must be one of {PERIODS}, not {self.period!r}")
        tz = load_timezone(self.timezone)
        object.__setattr__(self, "_tz", tz)
        # Fast path: zones without DST and whole-hour (hour grid) or zero (day grid) offsets.
        fixed: int | None = None
        if tz is dt.UTC:
            fixed = 0
        object.__setattr__(self, "_fixed", fixed)
        object.__setattr__(self, "step_ms", 0 if fixed is None else
                           PERIOD_MS[self.period])

    @property
    def fixed_step(self) -> int:
        """Period length in ms when every period has the same length (UTC), else 0."""
        return self.step_ms

    def _is_boundary_slow(self, ms: int) -> bool:
        """True if the local calendar day (or hour) starts at ``ms``, a UTC quarter-hour."""
        local = dt.datetime.fromtimestamp(ms / 1000, self._tz)
        before = dt.datetime.fromtimestamp((ms - 900_000) / 1000, self._tz)
        if self.period == "day":
            return local.date() != before.date()
        if local.minute == 0 and local.second == 0:
            return True  # a whole local hour, also the repeated one when clocks go back
        return (local.date(), local.hour) != (before.date(), before.hour)  # clocks jumped

    def _bounds_slow(self, ms: int) -> tuple[int, int]:
        # Every UTC offset in the tz database is a multiple of 15 minutes, so boundaries sit
        # on UTC quarter-hours: walk quarter-hours from the instant until the local clock
        # shows a whole hour (hour grid) or midnight (day grid). Robust across DST changes.
        quarter = 900_000
        limit = 30 * 24 * 4  # a month of quarter-hours: far more than any real period
        start = ms - ms % quarter
        for _ in range(limit):
            if self._is_boundary_slow(start):
                break
            start -= quarter
        end = ms - ms % quarter + quarter
        for _ in range(limit):
            if self._is_boundary_slow(end):
                break
            end += quarter
        return start, end

    def bounds(self, ms: int) -> tuple[int, int]:
        """``(start, end)`` in UTC ms of the period holding instant ``ms``; start <= ms < end."""
        fixed = self._fixed
        if fixed is not None:
            step = self.step_ms
            start = ms - (ms - fixed) % step
            return start, start + step
        key = ms // 900_000
        hit = self._cache.get(key)
        if hit is None or not (hit[0] <= ms < hit[1]):
            hit = self._bounds_slow(ms)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def floor(self, ms: int) -> int:
        """Start (UTC ms) of the period holding ``ms``."""
        return self.bounds(ms)[0]

    def next_boundary(self, ms: int) -> int:
        """The first boundary strictly after ``ms`` (the end of its period), UTC ms."""
        return self.bounds(ms)[1]

    def local_date(self, ms: int) -> str:
        """``YYYY-MM-DD`` of instant ``ms`` in the grid's time zone (for ``usage_date``)."""
        return dt.datetime.fromtimestamp(ms / 1000, self._tz).date().isoformat()
