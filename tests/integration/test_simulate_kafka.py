"""``metering simulate --to-kafka`` on a real broker: CloudStack's keys, partitions, order."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson

from agents.cli import main
from metering.eventtime import parse_event_time
from metering.partitioning import partition_for
from tests.integration.kafkautil import consume, end_offsets


def test_kafka_mode_produces_the_records_with_the_buses_keys(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_name("cssim")
    kcat = tmp_path / "same.kcat"
    assert main(["simulate", "--accounts", "4", "--days", "0.5", "--seed", "9",
                 "--to-kafka", kafka_bootstrap, "--topic", topic, "--partitions", "3",
                 "--format", "kcat", "--output", str(kcat), "--no-progress"]) == 0
    expected = [orjson.loads(line) for line in kcat.read_bytes().splitlines()]
    got = consume(kafka_bootstrap, topic, lambda m: len(m) >= len(expected), deadline_s=60)
    assert len(got) == len(expected)
    # Keys are what the bus uses: usage -> id, action -> entityuuid, jobs -> instanceUuid,
    # alerts -> null.
    keys_seen = {"id": 0, "entityuuid": 0, "instanceUuid": 0, "null": 0}
    for m in got:
        try:
            value = orjson.loads(m.value)
        except orjson.JSONDecodeError:
            continue  # a malformed extra (truncated JSON)
        if not isinstance(value, dict):
            continue
        key = m.key.decode() if m.key is not None else None
        if "jobId" in value:
            assert key == value["instanceUuid"]
            keys_seen["instanceUuid"] += 1
        elif "user" in value and "status" in value:
            assert key == value.get("entityuuid")
            keys_seen["entityuuid"] += 1
        elif "subject" in value:
            assert key is None
            keys_seen["null"] += 1
        elif "old-state" not in value and "account" in value and "id" in value:
            assert key == value["id"]
            keys_seen["id"] += 1
        if key is not None:  # aiokafka's default partitioner is Kafka's murmur2
            assert m.partition == partition_for(m.key, 3)
    assert all(keys_seen.values()), keys_seen
    # Same records, same order per partition as the kcat file of the same run.
    by_partition: dict[int, list[bytes]] = {}
    for m in sorted(got, key=lambda m: (m.partition, m.offset)):
        by_partition.setdefault(m.partition, []).append(m.value)
    keyed_expected: dict[int, list[bytes]] = {}
    for env in expected:
        if env["key"] is not None:
            keyed_expected.setdefault(env["partition"], []).append(env["payload"].encode())
    for p, values in keyed_expected.items():
        mine = [v for v in by_partition.get(p, []) if v in set(values)]
        assert mine == values


def test_live_mode_paces_records_with_event_times_now(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("cslive")
    before = time.time() * 1000
    assert main(["simulate", "--accounts", "50", "--to-kafka", kafka_bootstrap,
                 "--topic", topic, "--rate", "200", "--duration", "2",
                 "--malformed", "0"]) == 0
    elapsed = time.time() * 1000 - before
    total = sum(end_offsets(kafka_bootstrap, topic).values())
    assert 300 <= total <= 480, total  # about 200/s for 2 s
    got = consume(kafka_bootstrap, topic, lambda m: len(m) >= total, deadline_s=30)
    assert elapsed >= 1500
    for m in got:
        value = orjson.loads(m.value)
        if "eventDateTime" in value:
            t = parse_event_time(value["eventDateTime"])
            assert t is not None
            assert before - 10_000 <= t <= before + elapsed + 2_000  # "now", give or take skew
