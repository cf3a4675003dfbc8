"""Parsing CloudStack's ``eventDateTime`` into UTC epoch milliseconds.

CloudStack formats event times with Java's ``SimpleDateFormat("yyyy-MM-dd HH:mm:ss Z")`` in the
management server's default time zone, e.g. ``2025-03-14 10:22:31 +0530``. The result here is
always an integer count of milliseconds since 1970-01-01T00:00:00Z (UTC), so every instant
in the core is timezone-aware by construction.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_MS_PER_DAY = 86_400_000


@lru_cache(maxsize=8192)
def _day_ms(date_text: str) -> int | None:
    """UTC ms of midnight of ``YYYY-MM-DD``, or None if it is not a real calendar date."""
    if len(date_text) != 10 or date_text[4] != "-" or date_text[7] != "-":
        return None
    y, m, d = date_text[0:4], date_text[5:7], date_text[8:10]
    if not (date_text.isascii() and y.isdigit() and m.isdigit() and d.isdigit()):
        return None
    try:
        day = dt.date(int(y), int(m), int(d))
    except ValueError:
        return None
    return (day.toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY


@lru_cache(maxsize=1024)
def _offset_ms(zone: str) -> int | None:
    """Milliseconds to subtract to reach UTC for ``+HHMM``/``-HHMM``, or None if malformed."""
    if len(zone) != 5 or zone[0] not in "+-":
        return None
    hh, mm = zone[1:3], zone[3:5]
    if not (hh.isdigit() and mm.isdigit() and hh.isascii() and mm.isascii()):
        return None
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        return None
    off = (h * 60 + m) * 60_000
    return off if zone[0] == "+" else -off


_TWO_DIGITS: dict[str, int] = {f"{n:02d}": n for n in range(60)}
"""``"00"``-``"59"`` -> int: minutes and seconds validated and converted by one lookup."""

_minutes: dict[str, int] = {}
"""``"yyyy-MM-dd HH:mm"`` -> epoch ms of that local minute, as if it were UTC (valid ones)."""
_seconds: dict[str, int] = {}
"""``":ss +hhmm"`` -> ms to add to the local minute to reach UTC (valid ones)."""
_CACHE_SIZE = 65_536


def parse_event_time(text: object) -> int | None:
    """Parse ``yyyy-MM-dd HH:mm:ss Z`` into UTC epoch milliseconds.

    Returns None for anything that is not exactly that format or not a real instant
    (``2025-02-30``, year 0, hour 25, offset ``+2500``, a number instead of a string, ...).
    Bad input is a value, never an exception, for any string. The result may be negative
    (an instant before 1970, e.g. ``0001-01-01 00:30:00 +1400``, which lies in year 0 in
    UTC): callers that need an instant within the contract's bounds check it (rule 4b,
    :func:`metering.decode.decode`).

    Events cluster in time, so the text is cut in two and each half parsed once and cached:
    the local minute (``yyyy-MM-dd HH:mm``; one per minute) and the seconds with the offset
    (``:ss +hhmm``; 60 per time zone). A time is then two dictionary lookups and a sum.
    """
    if type(text) is not str or len(text) != 25:
        return None
    head = text[:16]
    minute = _minutes.get(head)
    if minute is None:
        minute = _parse_minute(head)
        if minute is None:
            return None
        if len(_minutes) >= _CACHE_SIZE:
            _minutes.clear()
        _minutes[head] = minute
    tail = text[16:]
    second = _seconds.get(tail)
    if second is None:
        second = _parse_second(tail)
        if second is None:
            return None
        if len(_seconds) >= _CACHE_SIZE:
            _seconds.clear()
        _seconds[tail] = second
    return minute + second


def _parse_minute(head: str) -> int | None:
    """``"yyyy-MM-dd HH:mm"`` -> epoch ms of that wall-clock minute read as UTC, or None."""
    if head[10] != " " or head[13] != ":":
        return None
    day = _day_ms(head[0:10])
    if day is None:
        return None
    hh = head[11:13]
    if not (hh.isdigit() and hh.isascii()):
        return None
    h = int(hh)
    minute = _TWO_DIGITS.get(head[14:16])
    if h > 23 or minute is None:
        return None
    return day + h * 3_600_000 + minute * 60_000


def _parse_second(tail: str) -> int | None:
    """``":ss +hhmm"`` -> the seconds in ms minus the offset (UTC = local - offset), or None."""
    if tail[0] != ":" or tail[3] != " ":
        return None
    second = _TWO_DIGITS.get(tail[1:3])
    off = _offset_ms(tail[4:9])
    if second is None or off is None:
        return None
    return second * 1000 - off


def format_event_time(ms: int, offset_minutes: int = 0) -> str:
    """Format UTC epoch ms the way CloudStack does, in a fixed UTC offset (minutes east)."""
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S %z")


def ms_to_datetime(ms: int) -> dt.datetime:
    """UTC epoch milliseconds -> aware ``datetime`` in UTC."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def datetime_to_ms(value: dt.datetime) -> int:
    """Aware ``datetime`` -> UTC epoch milliseconds; naive datetimes are a bug and raise."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: metering only handles aware datetimes")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def parse_iso_instant(text: str) -> int:
    """Parse an ISO 8601 instant with an offset or ``Z`` (``2025-03-11T00:00:00Z``) into ms.

    Raises ValueError with a readable message for a bad or zone-less value (for CLI options).
    """
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"not an ISO 8601 instant: {text!r} (expected e.g. 2025-03-11T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z or an offset such as +00:00")
    return datetime_to_ms(value)


def iso(ms: int) -> str:
    """UTC epoch ms -> ``2025-03-11T00:00:00Z`` (milliseconds shown only when non-zero)."""
    value = ms_to_datetime(ms)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if ms % 1000:
        text += f".{ms % 1000:03d}"
    return text + "Z"
