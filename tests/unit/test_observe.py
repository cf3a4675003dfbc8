"""Operational signals: lag arithmetic, readiness, open-resource counts, the metric catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.catalogue import BY_NAME, LATENCY_BUCKETS, METRICS, markdown_table
from metering.engine import NEVER, Engine, Policy
from metering.events import Source, UsageEvent
from metering.intervals import UsageInterval
from metering.observe import caught_up, consumer_lag, event_time_lag_seconds, readiness
from metering.usage_types import UsageType
from metering.watermarks import LaneReader
from metering.wire import Routed, decode_wire, encode_routed

README = Path(__file__).parents[2] / "README.md"


@pytest.mark.parametrize(("end", "committed", "beginning", "lag"), [
    (100, 100, 0, 0),        # caught up
    (100, 40, 0, 60),
    (100, None, 0, 100),     # never committed: reads from the beginning
    (100, -1, 30, 70),       # -1 is Kafka's "no offset"
    (100, 10, 30, 70),       # committed offset deleted by retention: from the beginning
    (100, 120, 0, 0),        # committed past a truncated log: not negative
    (0, None, 0, 0),         # empty partition
])
def test_consumer_lag(end: int, committed: int | None, beginning: int, lag: int) -> None:
    assert consumer_lag(end, committed, beginning) == lag


@given(st.integers(0, 10**12), st.one_of(st.none(), st.integers(-1, 10**12)),
       st.integers(0, 10**12))
def test_consumer_lag_is_bounded(end: int, committed: int | None, beginning: int) -> None:
    lag = consumer_lag(end, committed, beginning)
    assert 0 <= lag <= max(0, end - beginning)


def test_event_time_lag() -> None:
    assert event_time_lag_seconds(10_000, NEVER) is None
    assert event_time_lag_seconds(10_000, 4_000) == 6.0
    assert event_time_lag_seconds(4_000, 10_000) == -6.0  # server clock ahead of ours


def test_readiness_needs_an_assignment_a_measurement_and_small_lag() -> None:
    assert not readiness(False, None, 10).ready
    not_measured = readiness(True, None, 10)
    assert not not_measured.ready
    assert "not measured" in not_measured.reasons[0]
    behind = readiness(True, {("cs", 0): 5, ("cs", 1): 11}, 10)
    assert not behind.ready
    assert "cs[1]=11" in behind.reasons[0]
    assert "cs[0]" not in behind.reasons[0]
    assert readiness(True, {("cs", 0): 10, ("cs", 1): 0}, 10).ready


def _usage(event: str, rid: str, t: int) -> UsageEvent:
    return UsageEvent(event, "acct-1", rid, "zone-1", t)


def test_open_counts_follow_opens_and_closes() -> None:
    meter = Engine()
    src = Source("cs", 0, 0)
    meter.process(_usage("VM.CREATE", "vm-1", 1_000), src)
    meter.process(_usage("VM.START", "vm-1", 2_000), src._replace(offset=1))
    meter.process(_usage("VOLUME.CREATE", "vol-1", 2_000), src._replace(offset=2))
    assert meter.open_counts[UsageType.ALLOCATED_VM] == 1
    assert meter.open_counts[UsageType.RUNNING_VM] == 1
    assert meter.open_counts[UsageType.VOLUME] == 1
    meter.process(_usage("VM.STOP", "vm-1", 3_000), src._replace(offset=3))
    assert meter.open_counts[UsageType.RUNNING_VM] == 0
    meter.process(_usage("VM.DESTROY", "vm-1", 4_000), src._replace(offset=4))
    assert meter.open_counts[UsageType.ALLOCATED_VM] == 0
    assert set(meter.open_entities) == {"vol-1"}
    assert sum(meter.open_counts.values()) == 1
    assert meter.low_watermark() == 4_000


def test_routed_records_carry_the_source_timestamp_and_old_ones_still_decode() -> None:
    ev, src = _usage("VM.START", "vm-1", 2_000), Source("cs", 3, 42)
    assert decode_wire(encode_routed(ev, src, 5_000, 4_500)) == Routed(ev, src, 5_000, 4_500)
    assert decode_wire(encode_routed(ev, src, 5_000)) == Routed(ev, src, 5_000, None)


def test_catalogue_follows_prometheus_conventions() -> None:
    assert len(BY_NAME) == len(METRICS)
    for m in METRICS:
        assert re.fullmatch(r"metering_[a-z_]+", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert not {"account_id", "resource_id", "account", "resource"} & set(m.labels)
        assert m.help
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)


def test_readme_lists_every_metric_as_in_the_catalogue() -> None:
    assert markdown_table() in README.read_text(), (
        "README metric table is stale: paste agents.catalogue.markdown_table()")


HOUR_MS = 3_600_000
T = 1_740_787_200_000  # 2025-03-01T00:00:00Z


def _lane2_usage(inputs: dict[str, int] | None) -> list[UsageInterval]:
    # lane 2 steps 2 h in one record: no jump limit here (rule 4b is tested on its own)
    meter = Engine(Policy(lateness_ms=0, max_watermark_jump_ms=None))
    meter.report({"cs/0": (T + 5 * HOUR_MS, T), "cs/1": (T + 5 * HOUR_MS, T)},
                        inputs, T)
    rows = meter.advance().rows
    rows += meter.process(_usage("VM.START", "vm-2", T + 60_000), Source("cs", 2, 0), T)
    rows += meter.process(_usage("VM.STOP", "vm-2", T + 2 * HOUR_MS), Source("cs", 2, 1), T)
    return rows


def test_an_input_partition_nobody_reported_yet_holds_period_closing_back() -> None:
    """Lanes 0 and 1 far ahead must not close the periods of lane 2, whose records were not
    forwarded yet (seen after restarts: lane 2's usage was cut before its closing events
    arrived, and the closes became zero-length). Ticks name every input partition."""
    rows = _lane2_usage({"cs": 3})
    assert sum(r.duration_ms for r in rows) == 2 * HOUR_MS - 60_000
    assert rows[-1].close_reason == "VM.STOP"
    unnamed = _lane2_usage(None)  # without the partition count lane 2 is overlooked
    assert sum(r.duration_ms for r in unnamed) != 2 * HOUR_MS - 60_000


def test_an_empty_lane_its_reader_reports_idle_follows_the_slowest_lane() -> None:
    meter = Engine(Policy(lateness_ms=0, idle_advance_ms=10_000))
    meter.process(_usage("VM.START", "vm-0", T + 60_000), Source("cs", 0, 0), T)
    meter.report({"cs/0": (T + 3 * HOUR_MS, T + 50_000)}, {"cs": 2}, T + 50_000)
    assert meter.advance().rows == []  # cs/1 registered, nobody reported it: held back
    meter.report({"cs/1": (-1, T + 50_000)}, {"cs": 2}, T + 55_000)
    assert meter.advance().rows == []  # caught up and empty for 5 s only: held back
    meter.report({"cs/1": (-1, T + 50_000)}, {"cs": 2}, T + 70_000)
    rows = meter.advance().rows  # 20 s > idle_advance: cs/1 follows cs/0
    assert [r.end for r in rows if r.resource_id == "vm-0"][:1] == [T + HOUR_MS]


def test_idleness_comes_only_from_the_current_report_of_the_lane_reader() -> None:
    """After a restart the meter reads ticks of the old process (a lane reported at wall T)
    and then of the new one, which does not report that lane until it reads it again: the
    gap is not idleness (a wrong advance released held closes before action events of the
    lane were applied, and repeats differed in offering_id)."""
    meter = Engine(Policy(lateness_ms=0, idle_advance_ms=30_000))
    meter.report({"cs/0": (T + HOUR_MS, T), "cs/1": (T + 10_000, T)}, {"cs": 2}, T)
    assert meter.watermark("cs/1") == T + 10_000
    meter.report({"cs/0": (T + HOUR_MS, T + 600_000)}, {"cs": 2}, T + 600_000)
    assert meter.watermark("cs/1") == T + 10_000  # not reported: no advance, however old
    meter.report({"cs/1": (T + 10_000, T + 601_000)}, {"cs": 2}, T + 601_000)
    assert meter.watermark("cs/1") == T + 10_000  # reported, but behind: not idle
    meter.report({"cs/1": (T + 10_000, T + 601_000)}, {"cs": 2}, T + 641_000)
    assert meter.watermark("cs/1") == T + 20_000  # caught up for 40 s: advanced by 10 s


def test_a_reader_is_idle_only_when_caught_up() -> None:
    """A reader's idle time (in a tick: wall clock minus ``idle_from``) grows only while it
    is caught up; behind, or unable to tell, it restarts at the tick (monotonic ms)."""
    cases = [((None, 10), 99), ((10, None), 99), ((7, 10), 99), ((10, 10), 5)]
    for (read_to, end), since in cases:
        reader = LaneReader(newest_ms=1, idle_since_mono_ms=5)
        up = caught_up(read_to, end)
        assert reader.report(up, 1_000, 99, None) == (1, 1_000 - (99 - since))


def test_ticks_carry_the_input_partition_counts_and_old_ticks_decode() -> None:
    from metering.wire import Tick, encode_tick

    tick = decode_wire(encode_tick(5, {"cs/0": (1, 2)}, {"cs": 4}))
    assert tick == Tick(5, {"cs/0": (1, 2)}, {"cs": 4})
    assert decode_wire(b'[0, 5, {"cs/0": [1, 2]}]') == Tick(5, {"cs/0": (1, 2)}, {})


def test_records_before_the_first_tick_close_no_period() -> None:
    """A partition may receive lane 0's records before any of lane 1's and before the first
    tick: lane 1's usage must not be cut meanwhile (worker and replay then agree)."""
    meter = Engine(Policy(lateness_ms=0, wait_for_inputs=True, max_watermark_jump_ms=None))
    rows = meter.process(_usage("VM.START", "vm-1", T + 60_000), Source("cs", 1, 0), T)
    rows += meter.process(_usage("VM.START", "vm-0", T + 5 * HOUR_MS), Source("cs", 0, 0), T)
    assert meter.lanes.cut_boundary == NEVER
    rows += meter.process(_usage("VM.STOP", "vm-1", T + 2 * HOUR_MS), Source("cs", 1, 1), T)
    assert rows == []  # closed, but held: the set of lanes is not known yet
    meter.report({}, {"cs": 2}, T)  # the first tick: now lanes 0 and 1 are known
    assert meter.lanes.inputs_known
    assert meter.lanes.cut_boundary == T + HOUR_MS  # lane 1 at T + 2 h holds the rest back
    rows += meter.advance().rows
    mine = [r for r in rows if r.resource_id == "vm-1"]
    assert sum(r.duration_ms for r in mine) == 2 * HOUR_MS - 60_000
    assert mine[-1].close_reason == "VM.STOP"
