"""Issue 15, case 2 on the real broker: one outlier event time moves no one else's bill."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from metering.eventtime import format_event_time
from tests.integration.kafkautil import produce
from tests.integration.test_worker import _run_and_compare, worker_factory  # noqa: F401
from tests.integration.workerproc import WorkerProc

PARTITIONS = 4
MONTH_MS = 31 * 24 * 3_600_000


def test_a_snapshot_dated_a_month_ahead_cuts_no_open_resource(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,  # noqa: F811
) -> None:
    """A simulated cloud with one ``SNAPSHOT.CREATE`` dated a month after the rest, in the
    middle of partition 0. Before: its time became the lane's watermark, every partition cut
    every open resource hourly up to it (stops read afterwards closed nothing) and the usage
    was far above the truth. Now the worker holds it (no later record and no wall clock
    confirms it), equals replay of the same records, and every other resource equals the
    simulator's truth."""
    from agents.cli import main as cli
    from metering.simulate.truth import totals_from_intervals, truth_totals

    trace, truth_file = tmp_path / "trace.jsonl", tmp_path / "truth.json"
    assert cli(["simulate", "--accounts", "6", "--days", "0.75", "--seed", "21",
                "--format", "kcat", "--partitions", str(PARTITIONS), "--output", str(trace),
                "--truth", str(truth_file), "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    end = truth["until_ms"]
    lanes: list[list[tuple[bytes | None, bytes]]] = [[] for _ in range(PARTITIONS)]
    for line in trace.read_bytes().splitlines():
        envelope = orjson.loads(line)
        key = envelope["key"]
        lanes[envelope["partition"]].append(
            (None if key is None else key.encode(), envelope["payload"].encode()))
    snapshot_id = "00000000-0000-4000-8000-00000000beef"
    outlier = orjson.dumps({
        "eventDateTime": format_event_time(end + MONTH_MS), "event": "SNAPSHOT.CREATE",
        "resource": "org.apache.cloudstack.storage.snapshot.SnapshotObject",
        "id": snapshot_id, "account": next(iter(truth["accounts"])), "zone": "z"})
    middle = len(lanes[0]) // 2
    lanes[0].insert(middle, (None, outlier))
    # two sentinels per lane move every watermark 1.5 h past the end (the second confirms
    # the step of the first, rule 4b): every period up to the end completes
    for p, records in enumerate(lanes):
        sentinel = orjson.dumps({
            "eventDateTime": format_event_time(end + 5_400_000), "event": "VM.STOP",
            "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{p}",
            "account": "sentinel", "zone": "z"})
        records += [(None, sentinel)] * 2
    topic = topic_factory(partitions=PARTITIONS, prefix="csoutlier")
    for p, records in enumerate(lanes):
        produce(kafka_bootstrap, topic, records, partition=p)

    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000")
    rows = _run_and_compare(kafka_bootstrap, topic, worker, tmp_path)
    assert all(r["end"] <= end + 5_400_000 for r in rows.values())  # nothing cut beyond
    before_end = [dict(r, duration_ms=min(r["end"], end) - r["start"])
                  for r in rows.values() if r["start"] < end and r["resource_id"] != snapshot_id]
    assert totals_from_intervals(before_end) == truth_totals(truth)
    worker.stop()
