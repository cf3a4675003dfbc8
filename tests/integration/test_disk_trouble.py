"""The archive worker when its Parquet directory cannot be written, then can again.

The tests run as root, so ``chmod`` blocks nothing: the trouble is a regular *file* where a
directory must be (a day partition ``usage_date=2025-03-15``, the checkpoint directory
``_archive``, or the dataset root itself, put there after the worker has taken its
partitions). Every write then fails with ENOTDIR/EEXIST, even for root.

While blocked the archive must retry without acking: ``metering_archive_failing`` is 1,
``metering_archive_write_failures_total`` grows, the group's committed offsets never pass
the checkpoint (what is durable), the log names the directory and the error, and
``/healthz`` says ``failing``. Once the file is removed it must catch up on its own: every
checkpoint at the end offset, failing back to 0, lag 0, and every record of the topic in
the dataset exactly once. The recovery time (unblocking -> fully archived) is printed and
recorded as the test property ``recovery_seconds``; it is dominated by the retry backoff
(0.5 s doubling, at most 30 s) still running when the disk comes back.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import _create_topic
from tests.integration.kafkautil import end_offsets
from tests.integration.test_archive import (
    PARTITIONS,
    checkpoints,
    dataset_ids,
    intervals,
    produce_usage,
    wait_archived,
)
from tests.integration.workerproc import WorkerProc

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Samples:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def lags(samples: Samples, topic: str) -> dict[int, float]:
    return {int(lab["partition"]): v for lab, v in samples.get("metering_consumer_lag_records", [])
            if lab.get("topic") == topic}


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> committed offset of ``group`` (0 when nothing is committed)."""

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            deadline = time.monotonic() + 30
            while True:  # a fresh broker answers "coordinator not available" for a while
                try:
                    got = await admin.list_consumer_group_offsets(group, partitions=tps)
                    break
                except GroupCoordinatorNotAvailableError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)  # poll with a deadline
        finally:
            await admin.close()
        return {tp.partition: max(0, meta.offset) if meta is not None else 0
                for tp, meta in got.items()}

    return asyncio.run(run())


def durable(root: Path, topic: str) -> dict[int, int]:
    """The archive's checkpoints (last durable offset); -1 while they cannot be read (the
    blocked checkpoint directory: nothing can have been checkpointed through it)."""
    try:
        return checkpoints(root, topic)
    except OSError:
        return dict.fromkeys(range(PARTITIONS), -1)


def healthz(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return orjson.loads(resp.read())


def alive(w: WorkerProc) -> None:
    assert w.process is not None
    assert w.process.poll() is None, f"archive exited {w.process.returncode}:\n{w.tail()}"


@pytest.fixture
def archive(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str],
) -> Iterator[WorkerProc]:
    w = WorkerProc(kafka_bootstrap, unique_name("disk"), "unused-input", tmp_path / "data",
                   partitions=PARTITIONS, command="archive",
                   extra={"METERING_ARCHIVE_BATCH_RECORDS": "400",
                          "METERING_METRICS_INTERVAL": "0.5",
                          "METERING_ARCHIVE_FLUSH_SECONDS": "0.3"})
    yield w
    w.kill()


@pytest.mark.reliability
@pytest.mark.parametrize("blocked", ["day_partition", "checkpoint_dir", "dataset_root"])
def test_unwritable_archive_retries_without_acking_then_catches_up(
    kafka_bootstrap: str, archive: WorkerProc, blocked: str,
    record_property: Callable[[str, object], None],
) -> None:
    topic = archive.usage_topic
    group = f"{archive.app_id}-archive"
    root = archive.archive_dir
    asyncio.run(_create_topic(kafka_bootstrap, topic, PARTITIONS, {}))
    rows = intervals(3000)  # 3 days: every batch of either partition touches 2025-03-15

    if blocked == "day_partition":
        root.mkdir(parents=True)
        blocker = root / "usage_date=2025-03-15"
    else:
        # The checkpoints live under the root: blocked from the start, the archive could
        # not read them on assignment and exits 70 (see the test below). So block it once
        # the partitions are taken, as a disk that goes bad under a running archive.
        archive.start().wait_ready()
        deadline = time.monotonic() + 60
        while value(scrape(archive.web_port), "metering_assigned_partitions") < PARTITIONS:
            alive(archive)
            assert time.monotonic() < deadline, archive.tail()
            time.sleep(0.2)  # poll with a deadline
        # The archive holds its lock file in the root from start-up (one writer per
        # directory); the directory itself goes bad: moved away (the lock moves with it).
        assert [p.name for p in root.iterdir()] == [".metering-archive.lock"]
        if blocked == "dataset_root":
            root.rename(root.with_name("archive-gone"))
            blocker = root
        else:
            blocker = root / "_archive"
    blocker.write_text("a file where a directory must be\n")

    produced = produce_usage(kafka_bootstrap, topic, rows)
    ends = end_offsets(kafka_bootstrap, topic)
    assert sum(ends.values()) == produced
    if blocked == "day_partition":
        archive.start().wait_ready()

    # Blocked: failing, failures growing, nothing committed past the durable checkpoint.
    deadline = time.monotonic() + 60
    while True:
        alive(archive)
        samples = scrape(archive.web_port)
        cps = durable(root, topic)
        got = committed(kafka_bootstrap, group, topic)
        for p in range(PARTITIONS):
            assert got[p] <= cps[p] + 1, f"committed {got} past checkpoints {cps}"
        if (value(samples, "metering_archive_failing") == 1
                and value(samples, "metering_archive_write_failures_total") >= 3
                and len(lags(samples, topic)) == PARTITIONS):
            break
        assert time.monotonic() < deadline, f"no persistent failure:\n{archive.tail()}"
        time.sleep(0.25)  # poll with a deadline
    failures = value(samples, "metering_archive_write_failures_total")
    cps = durable(root, topic)
    got = committed(kafka_bootstrap, group, topic)
    blocked_lags = lags(samples, topic)
    print(f"\n{blocked}: blocked with {failures:.0f} write failures; checkpoints {cps}, "
          f"committed {got}, lag {blocked_lags}, end offsets {ends}")
    assert all(got[p] <= cps[p] + 1 for p in range(PARTITIONS)), (got, cps)
    assert any(cps[p] < ends[p] - 1 for p in range(PARTITIONS)), "nothing was blocked"
    for p in range(PARTITIONS):  # the lag counts at least every record not yet durable
        assert blocked_lags[p] >= ends[p] - (cps[p] + 1), (blocked_lags, cps, ends)
    if blocked != "day_partition":  # nothing at all can be durable: nothing committed
        assert cps == dict.fromkeys(range(PARTITIONS), -1)
        assert blocked_lags == {p: float(end) for p, end in ends.items()}
        assert value(samples, "metering_archive_last_success_timestamp_seconds") == 0
    health = healthz(archive.web_port)
    assert health["status"] == "failing", health
    log = archive.log_path.read_text(errors="replace") if archive.log_path else ""
    problem = [line for line in log.splitlines() if "archive write of" in line]
    assert problem, archive.tail()
    assert str(blocker) in problem[0] or str(blocker.name) in problem[0], problem[0]
    assert any(err in problem[0] for err in ("Not a directory", "File exists")), problem[0]
    assert "nothing is committed past it" in problem[0]
    assert str(root) in problem[0]  # "fix the disk or permissions of <root>"

    # Unblock: it must catch up by itself.
    blocker.unlink()
    unblocked = time.monotonic()
    wait_archived(archive, ends, deadline_s=60)
    archived_s = time.monotonic() - unblocked
    deadline = time.monotonic() + 60
    while True:
        alive(archive)
        samples = scrape(archive.web_port)
        current = lags(samples, topic)
        if (value(samples, "metering_archive_failing") == 0 and len(current) == PARTITIONS
                and not any(current.values())):
            break
        assert time.monotonic() < deadline, f"not caught up: lag {current}\n{archive.tail()}"
        time.sleep(0.25)  # poll with a deadline
    caught_up_s = time.monotonic() - unblocked
    print(f"{blocked}: recovery {archived_s:.2f} s to every checkpoint at the end offset, "
          f"{caught_up_s:.2f} s to failing=0 and lag 0 (with a {PARTITIONS}-partition topic "
          f"of {produced} records)")
    record_property("recovery_seconds", round(archived_s, 2))
    record_property("recovery_to_lag_zero_seconds", round(caught_up_s, 2))
    assert healthz(archive.web_port)["status"] == "ok"
    assert committed(kafka_bootstrap, group, topic) == ends
    assert value(samples, "metering_archive_last_success_timestamp_seconds") > 0
    assert value(samples, "metering_archive_write_failures_total") >= failures
    assert archive.stop() == 0, archive.tail()

    # Every record of the topic exactly once (the 200 redelivered repeats once more each).
    ids = Counter(dataset_ids(root))
    want = Counter(r.interval_id for r in rows) + Counter(r.interval_id for r in rows[:200])
    assert sum(ids.values()) == produced
    assert ids == want
    leftovers = [p.name for p in root.rglob("*.tmp")]
    assert not leftovers, leftovers


def test_unreadable_archive_at_start_exits_with_the_reason(archive: WorkerProc) -> None:
    """Started with a file where the dataset root must be, the archive cannot take its
    directory's lock: it exits 4 (unwritable output) before consuming anything and says
    why."""
    archive.archive_dir.parent.mkdir(parents=True, exist_ok=True)
    archive.archive_dir.write_text("a file where a directory must be\n")
    archive.start()
    assert archive.process is not None
    try:
        code = archive.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"archive did not exit:\n{archive.tail()}") from None
    assert code == 4, archive.tail()
    log = archive.log_path.read_text(errors="replace") if archive.log_path else ""
    assert "cannot lock the archive directory" in log
    assert str(archive.archive_dir) in log
    assert any(err in log for err in ("Not a directory", "File exists")), log
