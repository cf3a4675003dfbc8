"""Shared pieces of the reliability tests: a simulated cloud on a topic with its truth, the
expected intervals (replay of the same records), progress of the worker's group, and the
usage topic read back and deduplicated by ``interval_id``.

Sizes: ``METERING_RELIABILITY=full`` (``make test-reliability``) uses the issue's sizes
(a 300 000-record trace); otherwise a reduced trace keeps ``make test`` short.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from metering.eventtime import format_event_time
from tests.integration.kafkautil import consume, dump_kcat, produce

FULL = os.environ.get("METERING_RELIABILITY") == "full"
PARTITIONS = 4


@dataclass
class Cloud:
    """A simulated cloud produced to ``topic`` (plus two sentinels per partition)."""

    topic: str
    records: int
    truth: dict[str, Any]
    expected: dict[str, dict[str, Any]]
    """interval_id -> row, from ``metering replay`` of the topic's records (no crash)."""


def simulated_cloud(bootstrap: str, topic: str, tmp: Path, accounts: int, days: float,
                    seed: int) -> Cloud:
    """Simulate to ``topic``; add sentinels that move every lane past the horizon; replay."""
    from agents.cli import main as cli
    from tests.integration.test_worker import replay_rows

    truth_file = tmp / f"truth-{topic}.json"
    assert cli(["simulate", "--accounts", str(accounts), "--days", str(days), "--seed",
                str(seed), "--to-kafka", bootstrap, "--topic", topic, "--partitions",
                str(PARTITIONS), "--truth", str(truth_file), "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    end = truth["until_ms"]
    for p in range(PARTITIONS):  # 1.5 h past the end: every period completes
        produce(bootstrap, topic, [(None, orjson.dumps({
            "eventDateTime": format_event_time(end + 5_400_000), "event": "VM.STOP",
            "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{p}",
            "account": "sentinel", "zone": "z"}))] * 2, partition=p)
    dump = dump_kcat(bootstrap, topic, deadline_s=120)
    work = tmp / f"replay-{topic}"
    work.mkdir()
    return Cloud(topic, len(dump), truth, replay_rows(dump, work))


def committed_progress(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` the consumer ``group`` has committed (sum over partitions)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            got = await admin.list_consumer_group_offsets(group, partitions=tps)
            return sum(max(0, meta.offset) for meta in got.values() if meta is not None)
        finally:
            await admin.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), 20))
    except Exception:  # group not there yet, broker restarting: no progress known
        return 0


@dataclass
class Output:
    """The usage topic read back."""

    messages: int
    rows: dict[str, dict[str, Any]]
    """interval_id -> row (after checking that every repeat is identical)."""

    @property
    def duplicates(self) -> int:
        return self.messages - len(self.rows)


def read_usage(bootstrap: str, usage_topic: str, expected: set[str],
               deadline_s: float) -> Output:
    """Consume the usage topic until it holds every expected id; check repeats are equal."""
    remaining = set(expected)
    read = [0]

    def done(msgs: list[Any]) -> bool:  # looks only at new messages (1.4 million at full size)
        for m in msgs[read[0]:]:
            remaining.discard(orjson.loads(m.value)["interval_id"])
        read[0] = len(msgs)
        return not remaining

    got = consume(bootstrap, usage_topic, done, deadline_s=deadline_s)
    rows: dict[str, dict[str, Any]] = {}
    for m in got:
        row = orjson.loads(m.value)
        seen = rows.setdefault(row["interval_id"], row)
        assert seen == row, f"a repeat of {row['interval_id']} differs:\n{seen}\n{row}"
    return Output(len(got), rows)


def assert_exact(out: Output, cloud: Cloud) -> None:
    """Deduplicated usage == replay of the same records, and == the simulator's truth."""
    from metering.simulate.truth import totals_from_intervals, truth_totals

    missing = set(cloud.expected) - set(out.rows)
    extra = set(out.rows) - set(cloud.expected)
    assert not missing, f"{len(missing)} intervals lost"
    assert not extra, f"{len(extra)} intervals that replay does not produce"
    for interval_id, row in out.rows.items():
        want = cloud.expected[interval_id]
        assert row == want, ({k: (row[k], want[k]) for k in row if row[k] != want.get(k)},
                             {k: row[k] for k in ("account_id", "usage_type_name", "start",
                                                  "end", "close_reason", "source_partition",
                                                  "source_offset")})
    end = cloud.truth["until_ms"]
    before_end = [dict(r, duration_ms=min(r["end"], end) - r["start"])
                  for r in out.rows.values() if r["start"] < end]
    assert totals_from_intervals(before_end) == truth_totals(cloud.truth)


def wait_progress(bootstrap: str, group: str, topic: str, target: int, proc: Any,
                  deadline_s: float) -> float:
    """Poll the group's committed progress until ``target``; return when it got there."""
    end = time.monotonic() + deadline_s
    while True:
        if committed_progress(bootstrap, group, topic) >= target:
            return time.monotonic()
        assert proc.process is not None
        assert proc.process.poll() is None, f"worker exited:\n{proc.tail()}"
        assert time.monotonic() < end, f"no progress to {target} in {deadline_s}s\n{proc.tail()}"
        time.sleep(0.3)  # poll with a deadline


def summary(counter: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items()))
