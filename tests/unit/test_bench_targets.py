"""``make bench`` arithmetic: throughput windows, ceilings, payload sizes and the targets.

No Kafka here: the figures are built by hand and the rules that turn them into table
lines are checked (a wrong rule would print a wrong met/missed).
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from bench import ceiling
from bench.__main__ import targets
from bench.common import Results
from bench.streaming import CatchUp, median_run, spread


def test_rate_runs_from_the_first_commit_to_caught_up() -> None:
    run = CatchUp(seconds=25.0, startup_s=5.0, committed_at_startup=10_000, records=210_000)
    assert run.window == (200_000, 20.0)
    assert run.rate == 200_000 / 20.0
    assert run.start_rate == 210_000 / 25.0


def test_rate_falls_back_to_start_when_the_first_commit_came_late() -> None:
    late = CatchUp(seconds=10.0, startup_s=9.5, committed_at_startup=190_000, records=200_000)
    assert late.window == (200_000, 10.0)
    assert late.rate == 200_000 / 10.0
    never = CatchUp(seconds=10.0, startup_s=None, committed_at_startup=0, records=200_000)
    assert never.rate == 20_000.0


def test_median_run_and_spread() -> None:
    runs = [CatchUp(10.0, None, 0, records=n) for n in (30_000, 10_000, 20_000)]
    assert median_run(runs).records == 20_000
    assert spread(runs) == "3 runs: 1,000-3,000/s (±50 %)"
    assert spread(runs[:1]) == "1 run"


def test_runs_are_repeated_to_an_odd_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two long runs would make the median the slower one: a ratio of medians (two
    workers against one) would favour the side with two runs; a third is run."""
    from bench import streaming

    made: list[bool] = []

    def fake_run(prep: Any, period: str, n: int = 1, output: bool = False) -> CatchUp:
        made.append(output)
        return CatchUp(30.0, None, 0, records=1_000_000)  # 30 s each: 2 pass MIN_TOTAL_S

    monkeypatch.setattr(streaming, "run_workers", fake_run)
    assert len(streaming.repeated(cast(Any, None), "day")) == 3
    assert made == [True, False, False]  # the output is measured once
    monkeypatch.setattr(streaming, "MAX_RUNS", 2)
    assert len(streaming.repeated(cast(Any, None), "day")) == 2  # the cap wins


def test_ceiling_rate_is_input_records_over_read_plus_write() -> None:
    c = ceiling.Ceiling("confluent-kafka", records=200_000, read_s=1.0, written=985_000,
                        write_s=4.0)
    assert c.seconds == 5.0
    assert c.rate == 40_000.0


def test_ceiling_read_time_leaves_out_start_up_like_the_workers_rate() -> None:
    # 200 000 records; the first batch (10 000) came 0.6 s after the start, the last 1.0 s
    # later: 190 000 records in 1.0 s, so all 200 000 take 200 000 / 190 000 s.
    assert ceiling.steady_seconds(200_000, 10_000, 0.6, 1.6) == 200_000 / 190_000
    # Everything in the first batch: the time from it to the end.
    assert ceiling.steady_seconds(5_000, 5_000, 0.6, 0.7) == 0.7 - 0.6


def test_payload_has_the_mean_key_and_value_sizes() -> None:
    out = ceiling.Output(records=1000, key_bytes=36_400, value_bytes=656_400, partitions=4)
    keys, value = ceiling._payload(out)
    assert len(value) == 656
    assert {len(k) for k in keys} == {36}
    assert len(set(keys)) == 3000
    none_keys, _ = ceiling._payload(ceiling.Output(10, 0, 6560, 4))
    assert none_keys == []



def test_targets_compare_with_the_ceiling_of_the_same_run() -> None:
    r = Results()
    r.metrics.update(worker_hour_rate=6_000.0, ceiling_hour_rate=10_000.0,
                     aiokafka_hour_rate=8_000.0, worker_day_rate=49_999.0,
                     ceiling_day_rate=90_000.0)
    got = {t.name: t for t in targets(r)}
    hourly = got["streaming, hourly periods (output-heavy)"]
    assert hourly.met is True
    assert hourly.ratio == "60.0 %"
    assert hourly.reference == ("confluent-kafka 10,000 records/s "
                                "(aiokafka 8,000 records/s)")
    daily = got["streaming, daily periods (input-heavy)"]
    assert daily.met is False
    assert daily.ratio == "55.6 %"
    r.metrics["ceiling_hour_rate"] = 12_001.0
    assert {t.name: t for t in targets(r)}[
        "streaming, hourly periods (output-heavy)"].met is False


def test_latency_targets_need_keeping_up() -> None:
    r = Results()
    r.metrics.update({
        "latency_1000_kept_up": 1.0, "latency_1000_p50": 0.2, "latency_1000_p99": 0.9,
        "latency_1000_offered": 999.0, "latency_1000_processed_rate": 990.0,
        "latency_2000_kept_up": 1.0, "latency_2000_p50": 0.3, "latency_2000_p99": 0.99,
        "latency_2000_offered": 2000.0, "latency_2000_processed_rate": 1990.0,
        "latency_10000_kept_up": 0.0, "latency_10000_p50": 20.0, "latency_10000_p99": 30.0,
        "latency_10000_offered": 9_990.0, "latency_10000_processed_rate": 5_000.0,
    })
    got = {t.name: t for t in targets(r)}
    assert got["latency at 1 000 records/s"].status == "reported"
    assert got["latency at 2 000 records/s"].met is True
    ten = got["latency at 10 000 records/s"]
    assert ten.met is False
    assert ten.measured.startswith("falls behind (committed 5,000 records/s)")
    assert ten.ratio == "50 % committed"
    r.metrics["latency_2000_kept_up"] = 0.0  # a low p99 does not count while falling behind
    assert {t.name: t for t in targets(r)}["latency at 2 000 records/s"].met is False


def test_scale_out_target() -> None:
    r = Results()
    r.metrics.update(scale_out_one_rate=1_000.0, scale_out_two_rate=1_750.0,
                     scale_out_ratio=1.75)
    t = {t.name: t for t in targets(r)}["scale-out, 2 worker processes (daily periods)"]
    assert t.met is True
    assert (t.measured, t.reference, t.ratio) == ("1,750 records/s",
                                                 "1 worker 1,000 records/s", "1.75x")
    assert {t.name: t.met for t in targets(Results())}[
        "scale-out, 2 worker processes (daily periods)"] is None
