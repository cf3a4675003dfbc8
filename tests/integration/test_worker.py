"""The streaming worker on a real broker and real RocksDB equals ``metering replay``."""

from __future__ import annotations

import datetime as dt
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.eventtime import format_event_time
from storage.dataset import read_dataset
from storage.replay import ReplayOptions, run_replay
from tests.integration.kafkautil import consume, dump_kcat, produce, usage_rows
from tests.integration.workerproc import WorkerProc
from tests.tracegen import START_MS, build_trace

HOURS = 5.0
SENTINEL_MS = START_MS + int((HOURS + 1.5) * 3_600_000)  # a half hour past a boundary


def sentinel(partition: int) -> bytes:
    """An orphan VM.STOP that moves a lane's watermark past the trace (no usage).

    Produced twice per lane: a step of more than ``max_watermark_jump`` takes effect once a
    second record confirms it (contract rule 4b).
    """
    return orjson.dumps({
        "eventDateTime": format_event_time(SENTINEL_MS), "event": "VM.STOP",
        "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{partition}",
        "account": "sentinel", "zone": "zone-1"})


def replay_rows(kcat_lines: list[bytes], tmp: Path) -> dict[str, dict[str, Any]]:
    """Replay a kcat dump; rows by interval_id with timestamps as epoch ms (like the topic)."""
    trace = tmp / "dump.jsonl"
    trace.write_bytes(b"\n".join(kcat_lines) + b"\n")
    run_replay(ReplayOptions(inputs=[str(trace)], output=tmp / "replay"))
    return dataset_rows(tmp / "replay")


def dataset_rows(directory: Path) -> dict[str, dict[str, Any]]:
    """A Parquet dataset's rows by interval_id, timestamps as epoch ms (like the topic)."""
    rows = {}
    for row in read_dataset(directory).to_pylist():
        row.pop("usage_date")
        for k in ("start", "end", "period_start"):
            value: dt.datetime = row[k]
            row[k] = int(value.timestamp() * 1000)
        rows[row["interval_id"]] = row
    return rows


@pytest.fixture
def worker_factory(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def make(input_topic: str, app_id: str | None = None, **extra: str) -> WorkerProc:
        app = app_id or unique_name("m")
        w = WorkerProc(kafka_bootstrap, app, input_topic, tmp_path / app / "data",
                       extra={k.upper(): v for k, v in extra.items()})
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


def _run_and_compare(
    kafka_bootstrap: str, topic: str, worker: WorkerProc, tmp_path: Path
) -> dict[str, dict[str, Any]]:
    expected = replay_rows(dump_kcat(kafka_bootstrap, topic), tmp_path)
    assert expected, "the trace must produce usage"
    return worker_equals(kafka_bootstrap, worker, expected)


def worker_equals(kafka_bootstrap: str, worker: WorkerProc,
                  expected: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Start ``worker``; its usage rows (by interval_id) once they are exactly ``expected``."""
    worker.start().wait_ready()
    got = consume(
        kafka_bootstrap, worker.usage_topic,
        lambda msgs: {orjson.loads(m.value)["interval_id"] for m in msgs} >= set(expected),
        deadline_s=180,
    )
    rows = usage_rows(got)
    missing = set(expected) - set(rows)
    assert not missing, (f"{len(missing)} of {len(expected)} intervals missing, got {len(rows)}"
                         f"; worker log:\n{worker.tail()}")
    assert set(rows) == set(expected)
    for interval_id, row in rows.items():
        assert row == expected[interval_id]
    return rows


def test_worker_equals_replay_keyed(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
) -> None:
    topic = topic_factory(partitions=4, prefix="cs")
    trace = build_trace(seed=11, hours=HOURS, malformed=5)
    produce(kafka_bootstrap, topic, trace)
    for p in range(4):
        produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000")
    rows = _run_and_compare(kafka_bootstrap, topic, worker, tmp_path)
    assert {r["close_reason"] for r in rows.values()} >= {"period", "VM.STOP",
                                                          "account_delete"}
    scraped = urllib.request.urlopen(
        f"http://127.0.0.1:{worker.web_port}/metrics", timeout=5).read().decode()
    consumed = sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
                   if line.startswith("metering_records_consumed_total{"))
    assert consumed == len(trace) + 8  # every record produced, sentinels included
    assert 'metering_records_rejected_total{reason="invalid_json"} 1.0' in scraped
    assert 'metering_intervals_emitted_total{usage_type="RUNNING_VM"}' in scraped
    rejects = consume(kafka_bootstrap, worker.rejects_topic, lambda m: len(m) >= 5, 60)
    reasons = sorted(orjson.loads(m.value)["reason"] for m in rejects)
    assert reasons == sorted(["invalid_json", "not_an_object", "missing_event_time",
                              "invalid_event_time", "invalid_utf8"])
    assert all(orjson.loads(m.value)["topic"] == topic for m in rejects)
    worker.stop()


def test_null_keyed_single_partition_input_gives_the_same_result(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
) -> None:
    """A relay that drops keys: the worker repartitions by resource id itself."""
    topic = topic_factory(partitions=1, prefix="csnull")
    trace = build_trace(seed=12, hours=HOURS)
    produce(kafka_bootstrap, topic, [(None, v) for _, v in trace])
    produce(kafka_bootstrap, topic, [(None, sentinel(0))] * 2)
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000")
    _run_and_compare(kafka_bootstrap, topic, worker, tmp_path)
    worker.stop()


@pytest.mark.parametrize("how", ["clean", "kill9"])
def test_restart_mid_stream_loses_and_changes_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path, how: str,
) -> None:
    """Stop (SIGTERM) or kill -9 the worker mid-stream, restart it on the same state: after
    deduplication by interval_id the output equals replay; repeats carry equal content."""
    topic = topic_factory(partitions=4, prefix="csrestart")
    trace = build_trace(seed=13, accounts=8, hours=HOURS)
    half = len(trace) // 2
    produce(kafka_bootstrap, topic, trace[:half])
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000", METERING_BATCH_SIZE="20")
    worker.start().wait_ready()
    # let it get partway through (some intervals out), then stop it mid-stream
    consume(kafka_bootstrap, worker.usage_topic, lambda m: len(m) >= 20, deadline_s=120)
    produce(kafka_bootstrap, topic, trace[half:])
    if how == "clean":
        assert worker.stop() == 0, worker.tail()
    else:
        worker.kill()
    for p in range(4):
        produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)
    restarted = WorkerProc(kafka_bootstrap, worker.app_id, topic, worker.data_dir,
                           extra=worker.extra)
    try:
        rows = _run_and_compare(kafka_bootstrap, topic, restarted, tmp_path)
    finally:
        restarted.kill()
    assert rows


def test_idle_partition_does_not_hold_usage_back(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc],
) -> None:
    """A resource opened just before an hour boundary, then silence: with idle advance 2 s
    and no lateness, its piece up to the boundary is emitted within seconds of wall time."""
    topic = topic_factory(partitions=2, prefix="csidle")
    opened = START_MS + 3_600_000 - 3_000  # 3 s before a boundary
    event = orjson.dumps({
        "eventDateTime": format_event_time(opened), "event": "NET.IPASSIGN",
        "resource": "com.cloud.network.dao.IPAddressVO", "id": "ip-idle", "account": "acct-idle",
        "zone": "zone-1"})
    produce(kafka_bootstrap, topic, [(b"ip-idle", event)])
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="2", METERING_LATENESS="0")
    worker.start().wait_ready()
    got = consume(kafka_bootstrap, worker.usage_topic, lambda m: len(m) >= 1, deadline_s=60)
    assert got, f"no interval within 60 s; worker log:\n{worker.tail()}"
    row = orjson.loads(got[0].value)
    assert (row["resource_id"], row["start"], row["end"]) == ("ip-idle", opened,
                                                              START_MS + 3_600_000)
    assert row["close_reason"] == "period"
    assert row["final"] is False
    worker.stop()


def test_simulated_cloud_through_the_worker_equals_replay_and_truth(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
) -> None:
    """A ``metering simulate`` trace (CloudStack's keys) through the worker gives the same
    interval ids and rows as replay of the same records, and per resource the simulator's
    truth (the worker cuts open resources at the last completed period, replay ``--until``
    does the same when given that instant)."""
    from agents.cli import main as cli
    from metering.simulate.truth import totals_from_intervals, truth_totals

    topic = topic_factory(partitions=4, prefix="cssim")
    truth_file = tmp_path / "truth.json"
    assert cli(["simulate", "--accounts", "6", "--days", "0.75", "--seed", "21",
                "--to-kafka", kafka_bootstrap, "--topic", topic, "--truth", str(truth_file),
                "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    # sentinels move every lane's watermark 1.5 h past the end: all periods complete (two
    # per lane: the second confirms the step of the first, rule 4b)
    end = truth["until_ms"]
    for p in range(4):
        produce(kafka_bootstrap, topic, [(None, orjson.dumps({
            "eventDateTime": format_event_time(end + 5_400_000), "event": "VM.STOP",
            "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{p}",
            "account": "sentinel", "zone": "z"}))] * 2, partition=p)
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000")
    rows = _run_and_compare(kafka_bootstrap, topic, worker, tmp_path)
    # until the simulation's end the worker's usage equals the truth (pieces after it are
    # the part of the last hour that the truth cuts at ``until``)
    before_end = [dict(r, duration_ms=min(r["end"], end) - r["start"])
                  for r in rows.values() if r["start"] < end]
    got = {k: v for k, v in totals_from_intervals(before_end).items()}
    want = truth_totals(truth)
    assert got == want
    worker.stop()
