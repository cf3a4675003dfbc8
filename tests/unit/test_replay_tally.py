"""The summary's intervals and hours by usage type, counted from the written parts with
Arrow, are exactly those of adding ``duration_ms / 3 600 000`` row by row in file order
(floating-point sums depend on the order of the additions)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.usage_types import NAMES
from storage.replay import ReplaySummary, by_usage_type, tally

TYPES = sorted(NAMES)[:4]
durations = st.one_of(st.integers(0, 86_400_000), st.integers(0, 2**53 - 1),
                      st.integers(1, 1000))
parts = st.lists(st.lists(st.tuples(st.sampled_from(TYPES), durations), min_size=1,
                          max_size=60), min_size=1, max_size=4)


def table(rows: list[tuple[int, int]]) -> pa.Table:
    return pa.table({"usage_type": pa.array([t for t, _ in rows], pa.int32()),
                     "duration_ms": pa.array([d for _, d in rows], pa.int64())})


@given(parts)
def test_counts_and_hours_are_the_row_by_row_sums(files: list[list[tuple[int, int]]]) -> None:
    want = ReplaySummary()
    for rows in files:
        for t, d in rows:
            want.intervals[NAMES[t]] += 1
            want.hours[NAMES[t]] += d / 3_600_000
    got = ReplaySummary()
    for n, rows in enumerate(files):
        tally(got, f"f{n}", by_usage_type(table(rows)))
    assert got.intervals == want.intervals
    assert dict(got.hours) == dict(want.hours)  # equal floats, not close ones


def test_a_null_is_a_writer_bug_named_by_its_file() -> None:
    rows = pa.table({"usage_type": pa.array([TYPES[0], None], pa.int32()),
                     "duration_ms": pa.array([1, 2], pa.int64())})
    with pytest.raises(AssertionError, match="null usage_type/duration_ms in part-7"):
        tally(ReplaySummary(), "part-7", by_usage_type(rows))
