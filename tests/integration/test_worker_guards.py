"""Start-up guards and liveness of the worker on a real broker (issue 15, cases 7, 9, 10).

* a restart with fewer or more partitions than the existing internal topic is refused
  (exit 2, a message naming the topic, both counts and the fix) instead of running without
  ticks on some partitions or crashing with ``AssertionError: Unrecognized partition``;
* an unreachable broker at start: a clear message and exit 1 within the documented wait
  (3 x session_timeout), no traceback;
* the usage topic deleted mid-run: ``/readyz`` answers 503 naming it within
  ``REPORT_WITHIN`` seconds, and SIGTERM stops the worker within ``SHUTDOWN_GRACE``;
* a period change against existing state is refused (exit 2, both grids named) and
  accepted with ``force_period_change``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from agents.faustapp import SHUTDOWN_GRACE
from agents.liveness import REPORT_WITHIN
from agents.localkafka import free_port
from tests.integration.conftest import _create_topic
from tests.integration.kafkautil import consume, produce
from tests.integration.workerproc import WorkerProc
from tests.tracegen import build_trace

SESSION_TIMEOUT = 6.0  # WorkerProc's METERING_SESSION_TIMEOUT
LOG_LINES_WHILE_GONE = 400
"""Most log lines from the broker's stop to the worker's exit (~30-45 s). aiokafka logs each
failed connect/metadata update/fetch at ERROR: without agents.logfilter 1 570 lines in a
quiet run, 1 350 to 115 000 in six loaded ones; with it 21 (each of ~10 messages at most
once per 10 s, plus ~30 distinct lines of the stop)."""
BROKER_WAIT = 3 * SESSION_TIMEOUT  # agents.preflight.broker_wait_seconds


@pytest.fixture
def make_worker(tmp_path: Path, unique_name: Callable[[str], str]
                ) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def make(bootstrap: str, app_id: str, input_topic: str, partitions: int = 4,
             **extra: str) -> WorkerProc:
        w = WorkerProc(bootstrap, app_id, input_topic, tmp_path / app_id / "data",
                       partitions=partitions,
                       extra={f"METERING_{k.upper()}": v for k, v in extra.items()})
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


def wait_exit(w: WorkerProc, deadline_s: float) -> tuple[int, float]:
    """(exit code, seconds since start) of a worker expected to exit by itself."""
    assert w.process is not None
    t0 = time.monotonic()
    try:
        code = w.process.wait(timeout=deadline_s)
    except Exception:
        raise AssertionError(f"still running after {deadline_s:.0f} s:\n{w.tail()}") from None
    return code, time.monotonic() - t0


def log_text(w: WorkerProc) -> str:
    assert w.log_path is not None
    return w.log_path.read_text(errors="replace")


def readyz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def wait_ready(w: WorkerProc, deadline_s: float = 90.0) -> None:
    """Until ``/readyz`` answers 200 (partitions assigned: every topic declared)."""
    w.wait_ready(deadline_s)
    end = time.monotonic() + deadline_s
    while readyz(w.web_port)[0] != 200:
        assert w.process is not None
        assert w.process.poll() is None, w.tail()
        assert time.monotonic() < end, f"not ready in {deadline_s} s:\n{w.tail()}"
        time.sleep(0.25)  # poll with a deadline


def test_restart_with_another_partition_count_is_refused(
    kafka_bootstrap: str, make_worker: Callable[..., WorkerProc],
    unique_name: Callable[[str], str],
) -> None:
    app_id, topic = unique_name("parts"), unique_name("csparts")
    asyncio.run(_create_topic(kafka_bootstrap, topic, 2, {}))
    first = make_worker(kafka_bootstrap, app_id, topic, partitions=4)
    first.start()
    wait_ready(first)  # creates the 4-partition internal topic and changelogs
    assert first.stop() == 0
    for n in (2, 8):
        w = make_worker(kafka_bootstrap, app_id, topic, partitions=n)
        w.start()
        code, _ = wait_exit(w, 60)
        text = log_text(w)
        assert code == 2, text[-3000:]
        assert f"topic '{app_id}-events' has 4 partitions, but partitions={n} is configured" \
            in text, text[-3000:]
        assert f"'{app_id}-entities-changelog' has 4 partitions" in text
        assert f"'{app_id}-accounts-changelog' has 4 partitions" in text
        assert "--partitions 4" in text
        assert "Traceback" not in text
        assert "AssertionError" not in text
    again = make_worker(kafka_bootstrap, app_id, topic, partitions=4)
    again.start()
    wait_ready(again)  # the right count still starts
    assert again.stop() == 0


def test_unreachable_broker_at_start_exits_with_a_clear_message(
    make_worker: Callable[..., WorkerProc], unique_name: Callable[[str], str],
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    w = make_worker(nowhere, unique_name("nobroker"), unique_name("cs"))
    w.start()
    code, took = wait_exit(w, BROKER_WAIT + 30)
    text = log_text(w)
    assert code == 1, text
    assert f"broker {nowhere} unreachable after {BROKER_WAIT:.0f} s: check --broker / " \
        "METERING_BROKER and that Kafka is running" in text, text
    assert f"waiting for broker {nowhere}" in text
    assert "Traceback" not in text, text
    assert BROKER_WAIT - 1 <= took <= BROKER_WAIT + 20, took


def test_usage_topic_deleted_mid_run_is_reported_and_sigterm_stops(
    kafka_bootstrap: str, make_worker: Callable[..., WorkerProc],
    unique_name: Callable[[str], str],
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    topic = unique_name("csdel")
    asyncio.run(_create_topic(kafka_bootstrap, topic, 2, {}))
    trace = build_trace(seed=3, hours=6.0)
    half = len(trace) // 2
    produce(kafka_bootstrap, topic, trace[:half])
    w = make_worker(kafka_bootstrap, unique_name("del"), topic, idle_advance="2",
                    metrics_interval="1")
    w.start().wait_ready()
    assert consume(kafka_bootstrap, w.usage_topic, lambda m: len(m) > 0, 60)

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([w.usage_topic])
        finally:
            await admin.close()

    asyncio.run(delete())
    deleted = time.monotonic()
    produce(kafka_bootstrap, topic, trace[half:])  # more intervals to send
    while True:
        status, body = readyz(w.web_port)
        reasons = body.get("reasons", [])
        assert isinstance(reasons, list)
        if status == 503 and any(f"topic '{w.usage_topic}' does not exist" in r
                                 for r in reasons):
            break
        assert time.monotonic() - deleted < REPORT_WITHIN + 5, (status, body, w.tail())
        time.sleep(0.5)  # poll with a deadline
    assert f"cannot make progress: topic '{w.usage_topic}' does not exist" in log_text(w)
    assert w.process is not None
    assert w.process.poll() is None

    os.killpg(w.process.pid, signal.SIGTERM)
    code, took = wait_exit(w, SHUTDOWN_GRACE + 10)
    assert code != 0
    assert took <= SHUTDOWN_GRACE + 5, took


def test_period_change_against_existing_state_is_refused_unless_forced(
    kafka_bootstrap: str, make_worker: Callable[..., WorkerProc],
    unique_name: Callable[[str], str],
) -> None:
    app_id, topic = unique_name("grid"), unique_name("csgrid")
    asyncio.run(_create_topic(kafka_bootstrap, topic, 1, {}))
    first = make_worker(kafka_bootstrap, app_id, topic, period="hour")
    first.start()
    wait_ready(first)
    assert first.stop() == 0

    changed = make_worker(kafka_bootstrap, app_id, topic, period="day")
    changed.start()
    code, _ = wait_exit(changed, 60)
    text = log_text(changed)
    assert code == 2, text[-3000:]
    assert ("the existing state was built with period=hour timezone=UTC, but period=day "
            "timezone=UTC is configured") in text, text[-3000:]
    assert "force_period_change" in text
    assert "Traceback" not in text

    zone = make_worker(kafka_bootstrap, app_id, topic, timezone="Europe/Paris")
    zone.start()
    code, _ = wait_exit(zone, 60)
    assert code == 2
    assert "timezone=Europe/Paris is configured" in log_text(zone)

    forced = make_worker(kafka_bootstrap, app_id, topic, period="day",
                         force_period_change="true")
    forced.start()
    wait_ready(forced)
    assert "force_period_change: the existing state was built with period=hour " \
        "timezone=UTC, now running with period=day timezone=UTC" in log_text(forced)
    assert forced.stop() == 0

    # The forced grid is now the state's: the old one is refused, the new one starts.
    back = make_worker(kafka_bootstrap, app_id, topic, period="hour")
    back.start()
    code, _ = wait_exit(back, 60)
    assert code == 2
    assert "built with period=day timezone=UTC, but period=hour" in log_text(back)


def test_broker_gone_mid_run_is_reported_and_sigterm_stops(
    make_worker: Callable[..., WorkerProc], unique_name: Callable[[str], str],
) -> None:
    from agents.localkafka import LocalKafka

    broker = LocalKafka().start()  # its own broker: this test stops it
    try:
        topic = unique_name("csgone")
        asyncio.run(_create_topic(broker.bootstrap, topic, 1, {}))
        produce(broker.bootstrap, topic, build_trace(seed=5, hours=2.0))
        w = make_worker(broker.bootstrap, unique_name("gone"), topic)
        w.start()
        wait_ready(w)
        lines_before = len(log_text(w).splitlines())
        broker.stop(grace_s=5)
        gone = time.monotonic()
        while True:
            status, body = readyz(w.web_port)
            reasons = body.get("reasons", [])
            assert isinstance(reasons, list)
            if status == 503 and any(r.startswith("broker unreachable") for r in reasons):
                break
            assert time.monotonic() - gone < REPORT_WITHIN + 5, (
                status, body, w.grep("cannot make progress", "progress possible", "liveness",
                                     "Ready", "Signal"), w.tail())
            time.sleep(0.5)  # poll with a deadline
        assert "cannot make progress: broker unreachable" in log_text(w)
        assert w.process is not None
        os.killpg(w.process.pid, signal.SIGTERM)
        _, took = wait_exit(w, SHUTDOWN_GRACE + 10)
        assert took <= SHUTDOWN_GRACE + 5, took
        lines = log_text(w).splitlines()
        assert len(lines) - lines_before < LOG_LINES_WHILE_GONE, (
            len(lines) - lines_before, w.tail())
        pieces = [line for line in lines[lines_before:]
                  if "[WARNING]" in line and len(line.split("] ", 3)[-1].strip()) <= 2]
        assert pieces == [], pieces[:10]  # stderr writes of a traceback, one per line
    finally:
        broker.stop()


def test_more_replicas_than_brokers_is_refused_with_the_fix(
    kafka_bootstrap: str, make_worker: Callable[..., WorkerProc],
    unique_name: Callable[[str], str],
) -> None:
    """``replication_factor`` above the broker count (the local broker has one node): exit 2
    naming the topic, the setting and the fix, instead of topics that never get a leader."""
    app_id, topic = unique_name("rf"), unique_name("csrf")
    asyncio.run(_create_topic(kafka_bootstrap, topic, 2, {}))
    w = make_worker(kafka_bootstrap, app_id, topic, replication_factor="3")
    w.start()
    code, _ = wait_exit(w, 60)
    text = log_text(w)
    assert code == 2, text[-3000:]
    assert "with replication_factor=3: the cluster has fewer brokers than that" in text, \
        text[-3000:]
    assert "METERING_REPLICATION_FACTOR" in text
    assert "Traceback" not in text, text[-3000:]
