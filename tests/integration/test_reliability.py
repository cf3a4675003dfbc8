"""Crashes, scale-out with a rebalance, and a broker restart lose and double-count nothing.

Each test runs a simulated cloud through real workers on a real broker and checks the usage
topic after deduplication by ``interval_id`` against ``metering replay`` of the same records
(the uninterrupted result) and against the simulator's truth, exactly. Every repeat must be
identical to the first copy. ``METERING_RELIABILITY=full`` (``make test-reliability``) runs
the issue's sizes; the default sizes keep ``make test`` short. Figures (duplicates, recovery
times) are printed and recorded as test properties.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.localkafka import LocalKafka
from tests.integration.reliability import (
    FULL,
    Cloud,
    Snapshot,
    committed_progress,
    explain_loss,
    read_usage_settled,
    simulated_cloud,
    snapshot,
    wait_progress,
    wait_resumed,
)
from tests.integration.reliability import assert_exact as exact
from tests.integration.workerproc import WorkerProc

pytestmark = pytest.mark.reliability

WORKER_ENV = {"METERING_IDLE_ADVANCE": "100000"}
"""No wall-clock advance: the result depends on the records only (the sentinels close it)."""


@pytest.fixture
def procs() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for w in started:
        w.kill()


def _worker(bootstrap: str, app: str, topic: str, data: Path, procs: list[WorkerProc],
            **extra: str) -> WorkerProc:
    w = WorkerProc(bootstrap, app, topic, data, extra={**WORKER_ENV, **extra})
    procs.append(w)
    return w.start()


def _finish(bootstrap: str, w: WorkerProc, cloud: Cloud, deadline_s: float,
            snapshots: list[Snapshot] | None = None,
            procs: list[WorkerProc] | None = None) -> int:
    out, state = read_usage_settled(bootstrap, w.app_id, cloud.topic, w.usage_topic,
                                    set(cloud.expected), cloud.final_ms, deadline_s)
    lost = sorted(set(cloud.expected) - set(out.rows))
    missing = len(lost)
    if missing:
        progress = committed_progress(bootstrap, w.app_id, cloud.topic)
        fields = ("account_id", "resource_id", "usage_type_name", "start", "end",
                  "close_reason", "final", "source_partition", "source_offset")
        sample = "\n".join(str({k: cloud.expected[i][k] for k in fields}) for i in lost[:8])
        resources = {cloud.expected[i]["resource_id"] for i in lost[:8]}
        theirs = sorted((r for r in out.rows.values() if r["resource_id"] in resources),
                        key=lambda r: (r["resource_id"], r["start"]))
        sample += "\nthe worker's rows of these resources:\n" + "\n".join(
            str({k: r[k] for k in fields}) for r in theirs[-12:])
        report = ""
        if snapshots is not None:
            logs = [p.grep("restored from RocksDB", "Highwater", "revoked", "assigned",
                           "WARNING", "ERROR", "Restoring", "Recovery complete")
                    for p in procs or [w]]
            now = snapshot(bootstrap, w.app_id, cloud.topic, "at the verdict")
            report = explain_loss(bootstrap, w.app_id, [cloud.expected[i] for i in lost],
                                  [*snapshots, now], logs)
        raise AssertionError(
            f"{report}\n{sample}\n"
            f"{missing} of {len(cloud.expected)} intervals missing; worker {state.how}; "
            f"input committed {progress}/{cloud.records}"
            f"; worker alive: {w.process is not None and w.process.poll() is None}\n"
            f"{w.grep('lane progress', 'revoked', 'assigned', 'WARNING', 'ERROR')}\n"
            f"{w.metrics('metering_event_time_lag', 'metering_open_resources')}\n"
            f"{w.tail(40)}")
    exact(out, cloud)
    return out.duplicates


@pytest.mark.parametrize("disk", ["kept", "lost"])
def test_crash_loop_kill9_five_times_loses_and_doubles_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str],
    procs: list[WorkerProc], record_property: Callable[[str, object], None], disk: str,
) -> None:
    """kill -9 at 5 seeded points; the restarted worker keeps its RocksDB directory
    (``kept``: a process crash) or starts with an empty one (``lost``: the machine is
    replaced; state comes back from the changelog topics). Each kill waits for the input
    progress target and for the previous restart to have committed a batch; the verdict
    waits until the worker settled (:func:`read_usage_settled`), not for a wall-clock time.
    On a loss the failure names the layer that lost it (:func:`explain_loss`)."""
    accounts, days = (1340, 9.4) if FULL else (50, 3)  # ~300 000 / ~6 700 records
    cloud = simulated_cloud(kafka_bootstrap, unique_name("cscrash"), tmp_path, accounts, days,
                            seed=2026)
    app, data = unique_name("crash"), tmp_path / "crash-data"
    rng = random.Random(5)
    targets = sorted(rng.sample(range(cloud.records // 20, cloud.records * 19 // 20), 5))
    recoveries: list[float] = []
    snapshots: list[Snapshot] = []
    w = _worker(kafka_bootstrap, app, cloud.topic, data, procs)
    for target in targets:
        wait_progress(kafka_bootstrap, app, cloud.topic, target, w, deadline_s=600)
        w.kill()
        killed = time.monotonic()
        snapshots.append(snapshot(kafka_bootstrap, app, cloud.topic, f"kill {len(snapshots)}"))
        if disk == "lost":
            data = tmp_path / f"crash-data-{len(snapshots)}-{target}"
        w = _worker(kafka_bootstrap, app, cloud.topic, data, procs)
        # every kill hits a worker that restored its state and committed a batch, however
        # fast the input hop ran ahead (it commits the whole reduced input in seconds)
        resumed = wait_resumed(kafka_bootstrap, app, cloud.topic, snapshots[-1], w, 600)
        recoveries.append(resumed - killed)
    dups = _finish(kafka_bootstrap, w, cloud, deadline_s=900 if FULL else 400,
                   snapshots=snapshots, procs=procs)
    w.stop()
    figures = {"records": cloud.records, "intervals": len(cloud.expected), "crashes": 5,
               "duplicates": dups, "duplicates_per_crash": dups / 5,
               "recovery_s_max": round(max(recoveries, default=0.0), 1),
               "recovery_s_mean": round(sum(recoveries) / max(1, len(recoveries)), 1)}
    for k, v in figures.items():
        record_property(k, v)
    print(f"\ncrash loop: {figures}")


def test_scale_out_then_first_worker_killed_gives_the_same_result(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str],
    procs: list[WorkerProc], record_property: Callable[[str, object], None],
) -> None:
    """Worker A alone, worker B joins midway (rebalance), A is killed: B restores A's
    partitions from the changelog topics into its own RocksDB and finishes exactly."""
    accounts, days = (600, 8) if FULL else (40, 3)
    standby = "1" if FULL else "0"
    cloud = simulated_cloud(kafka_bootstrap, unique_name("csscale"), tmp_path, accounts, days,
                            seed=77)
    app = unique_name("scale")
    a = _worker(kafka_bootstrap, app, cloud.topic, tmp_path / "a", procs,
                METERING_STANDBY_REPLICAS=standby)
    wait_progress(kafka_bootstrap, app, cloud.topic, cloud.records // 3, a, 600)
    b = _worker(kafka_bootstrap, app, cloud.topic, tmp_path / "b", procs,
                METERING_STANDBY_REPLICAS=standby)
    b.wait_ready()
    wait_progress(kafka_bootstrap, app, cloud.topic, cloud.records * 2 // 3, b, 600)
    a.kill()
    dups = _finish(kafka_bootstrap, b, cloud, deadline_s=900 if FULL else 240)
    b.stop()
    record_property("duplicates", dups)
    print(f"\nscale-out: {cloud.records} records, {dups} duplicates, standby={standby}")


def test_broker_restart_mid_stream_the_worker_reconnects_and_finishes(
    tmp_path: Path, unique_name: Callable[[str], str], procs: list[WorkerProc],
    record_property: Callable[[str, object], None],
) -> None:
    """A broker of its own, restarted (same ports and data) while the worker runs."""
    broker = LocalKafka()
    broker.start()
    try:
        accounts, days = (500, 6) if FULL else (40, 3)
        cloud = simulated_cloud(broker.bootstrap, unique_name("csbroker"), tmp_path, accounts,
                                days, seed=99)
        app = unique_name("brk")
        w = _worker(broker.bootstrap, app, cloud.topic, tmp_path / "data", procs)
        wait_progress(broker.bootstrap, app, cloud.topic, cloud.records // 3, w, 600)
        down = time.monotonic()
        broker.restart()
        back = time.monotonic() - down
        assert w.process is not None
        assert w.process.poll() is None, f"the worker died with the broker:\n{w.tail()}"
        dups = _finish(broker.bootstrap, w, cloud, deadline_s=900 if FULL else 300)
        assert w.stop() == 0, w.tail()
        record_property("broker_down_s", round(back, 1))
        record_property("duplicates", dups)
        print(f"\nbroker restart: down {back:.1f} s, {dups} duplicates")
    finally:
        broker.stop()
