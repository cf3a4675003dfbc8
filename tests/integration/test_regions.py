"""Regions on a real broker (issue 19 item 5): two input topics, each with its region, give
region-labelled intervals equal to ``replay`` of the two topics' dumps with their regions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.dataset import read_dataset
from storage.replay import ReplayOptions, run_replay
from tests.integration.kafkautil import dump_kcat, produce
from tests.integration.test_worker import HOURS, sentinel, worker_equals
from tests.integration.test_worker import worker_factory as worker_factory  # the fixture
from tests.integration.workerproc import WorkerProc
from tests.tracegen import build_trace

pytestmark = pytest.mark.kafka

PARTITIONS = 2
"""Partitions of each region's input topic."""


def replay_regions(dumps: list[tuple[list[bytes], str]], tmp: Path) -> dict[str, dict[str, Any]]:
    """Replay kcat dumps, each with its region; rows by interval_id, instants as epoch ms."""
    names, regions = [], []
    for i, (lines, region) in enumerate(dumps):
        path = tmp / f"dump-{i}.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        names.append(str(path))
        regions.append(region)
    run_replay(ReplayOptions(inputs=names, output=tmp / "replay",
                             regions=list[str | None](regions)))
    rows = {}
    for row in read_dataset(tmp / "replay").to_pylist():
        row.pop("usage_date")
        for k in ("start", "end", "period_start"):
            value: dt.datetime = row[k]
            row[k] = int(value.timestamp() * 1000)
        rows[row["interval_id"]] = row
    return rows


def test_two_regions_give_labelled_intervals_equal_to_replay_with_regions(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
) -> None:
    """The same accounts in two regions (CloudStack syncs accounts between regions): two
    topics, one worker; each account's usage in each region is its own set of intervals."""
    topics = {"region-a": topic_factory(partitions=PARTITIONS, prefix="cs-region-a"),
              "region-b": topic_factory(partitions=PARTITIONS, prefix="cs-region-b")}
    traces = {"region-a": build_trace(seed=21, hours=HOURS),
              "region-b": build_trace(seed=21, hours=HOURS, vms=3)}  # same account ids
    for region, topic in topics.items():
        produce(kafka_bootstrap, topic, traces[region])
        for p in range(PARTITIONS):
            produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)
    expected = replay_regions(
        [(dump_kcat(kafka_bootstrap, topic), region) for region, topic in topics.items()],
        tmp_path)
    by_region = {r: {i for i, row in expected.items() if row["region"] == r} for r in topics}
    assert all(by_region.values()), "both regions must produce usage"
    accounts = {r: {expected[i]["account_id"] for i in ids} for r, ids in by_region.items()}
    assert accounts["region-a"] & accounts["region-b"], "an account with usage in both"

    w = worker_factory("unused-input-topic",
                       METERING_INPUT_TOPICS=",".join(f"{t}={r}" for r, t in topics.items()),
                       METERING_IDLE_ADVANCE="100000")
    rows = worker_equals(kafka_bootstrap, w, expected)
    assert {row["region"] for row in rows.values()} == set(topics)
    assert all(row["source_topic"] == topics[row["region"]] for row in rows.values())
    assert w.stop() == 0, w.tail()
