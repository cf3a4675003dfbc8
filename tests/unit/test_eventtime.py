"""``eventDateTime`` parsing: exact format, real instants only, UTC milliseconds."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.eventtime import format_event_time, parse_event_time


def reference(text: str) -> int | None:
    """Independent oracle: the standard library's strptime on the same format."""
    if len(text) != 25 or not text.isascii():
        return None
    if not all(text[i].isdigit() for i in (*range(0, 4), 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)):
        return None
    if text[20] not in "+-" or not text[21:25].isdigit():
        return None
    if int(text[21:23]) > 23 or int(text[23:25]) > 59:
        return None
    try:
        parsed = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None
    return int(parsed.timestamp()) * 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-14 10:22:31 +0530", 1741927951000),
        ("2025-03-14 04:52:31 +0000", 1741927951000),
        ("2025-03-13 21:52:31 -0700", 1741927951000),
        ("2024-02-29 23:59:59 +0000", 1709251199000),
    ],
)
def test_parses_to_utc_ms(text: str, expected: int) -> None:
    assert parse_event_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2025-02-30 10:00:00 +0000",  # no such day
        "2025-03-14 24:00:00 +0000",  # hour 24
        "2025-03-14 10:60:00 +0000",  # minute 60
        "2025-03-14 10:00:60 +0000",  # second 60
        "2025-03-14 10:00:00 +2500",  # offset hour 25
        "2025-03-14 10:00:00 +0560",  # offset minute 60
        "2025-03-14 10:00:00 0530",  # no sign
        "2025-03-14T10:00:00 +0000",  # ISO separator
        "2025-03-14 10:00:00+00:00",  # ISO offset
        "2025-03-14 10:0a:00 +0000",
        "2025-03-14 10:00:0 +00000",
        "2025-03-14 1:00:00 +00000",
        "",
        "２０２５-03-14 10:00:00 +0000",  # non-ASCII digits
        None,
        1741927951000,
    ],
)
def test_rejects_what_is_not_exactly_the_format(text: object) -> None:
    assert parse_event_time(text) is None


@given(st.integers(min_value=0, max_value=4_102_444_800_000), st.integers(-720, 840))
def test_round_trips_cloudstack_format(ms: int, offset_minutes: int) -> None:
    whole = ms - ms % 1000  # the format has second precision
    assert parse_event_time(format_event_time(whole, offset_minutes)) == whole


@given(st.text(alphabet="0123456789 -:+a", min_size=25, max_size=25))
def test_agrees_with_strptime_on_near_miss_strings(text: str) -> None:
    assert parse_event_time(text) == reference(text)


# Hypothesis bounds datetimes with naive values; they are only wall-clock fields here, rendered
# with an explicit offset below.
_WALL_MIN = dt.datetime(1970, 1, 2)  # noqa: DTZ001
_WALL_MAX = dt.datetime(2099, 12, 30)  # noqa: DTZ001


@given(
    st.datetimes(min_value=_WALL_MIN, max_value=_WALL_MAX),
    st.sampled_from(["+0000", "+0530", "-0700", "+1400", "-1200", "+2359"]),
)
def test_agrees_with_strptime_on_valid_strings(when: dt.datetime, zone: str) -> None:
    text = when.strftime("%Y-%m-%d %H:%M:%S ") + zone
    assert parse_event_time(text) == reference(text)
