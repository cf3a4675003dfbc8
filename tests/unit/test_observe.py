"""Operational signals: lag arithmetic, readiness, open-resource counts, the metric catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.catalogue import BY_NAME, LATENCY_BUCKETS, METRICS, markdown_table
from metering.events import Source, UsageEvent
from metering.meter import NEVER, Meter
from metering.observe import consumer_lag, event_time_lag_seconds, readiness
from metering.usage_types import UsageType
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
    meter = Meter()
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
