"""/metrics, /healthz and /readyz of a real worker on a real broker: values move as they must.

The expected numbers come from the pure decoder over the produced records and from the usage
topic itself, never from the worker.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.catalogue import METRICS, sample_names
from metering import __version__
from metering.decode import decode
from metering.events import Ignored, Rejected
from tests.integration.conftest import _create_topic
from tests.integration.kafkautil import consume, produce
from tests.integration.workerproc import WorkerProc
from tests.tracegen import build_trace

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> tuple[str, Samples]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return text, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, [])
               if all(lab.get(k) == want for k, want in labels.items()))


def by(samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(lab[k] for k in keys): v for lab, v in samples.get(name, [])}


def get_json(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path,
           unique_name: Callable[[str], str]) -> Iterator[WorkerProc]:
    w = WorkerProc(kafka_bootstrap, unique_name("obs"), unique_name("csobs"), tmp_path / "data",
                   extra={"METERING_IDLE_ADVANCE": "100000", "METERING_METRICS_INTERVAL": "0.5",
                          "METERING_READY_MAX_LAG": "100"})
    yield w
    w.kill()


def test_worker_metrics_follow_the_input(
    kafka_bootstrap: str, worker: WorkerProc,
) -> None:
    asyncio.run(_create_topic(kafka_bootstrap, worker.input_topic, 4, {}))
    trace = build_trace(seed=31, hours=4.0, malformed=5)
    produced = produce(kafka_bootstrap, worker.input_topic, trace)
    consumed_want: Counter[tuple[str, str]] = Counter()
    rejects_want: Counter[str] = Counter()
    for _, value in trace:
        d = decode(value, 1 << 20)
        outcome = ("rejected" if isinstance(d, Rejected)
                   else "ignored" if isinstance(d, Ignored) else "metered")
        consumed_want[(d.category.value, outcome)] += 1
        if isinstance(d, Rejected):
            rejects_want[d.reason.value] += 1

    worker.start().wait_ready()
    status, body = get_json(f"http://127.0.0.1:{worker.web_port}/healthz")
    assert status == 200
    assert body["status"] == "ok"

    # Poll until every record is counted and the group's input lag is measured at 0. (The
    # internal topic never rests: ticks arrive every tick_interval, so its lag hovers near 0.)
    deadline = time.monotonic() + 120
    while True:
        text, samples = scrape(worker.web_port)
        lags = by(samples, "metering_consumer_lag_records", "topic", "partition")
        input_lags = {k: v for k, v in lags.items() if k[0] == worker.input_topic}
        if (total(samples, "metering_records_consumed_total") == produced
                and len(input_lags) == 4 and not any(input_lags.values())):
            break
        assert time.monotonic() < deadline, f"not caught up: {lags}\n{worker.tail()}"
        time.sleep(0.25)  # poll with a deadline

    got = {k: v for k, v in by(samples, "metering_records_consumed_total",
                               "category", "outcome").items()}
    assert got == {k: float(v) for k, v in consumed_want.items()}
    assert by(samples, "metering_records_rejected_total", "reason") == {
        (r,): float(n) for r, n in rejects_want.items()}

    # Intervals and usage seconds equal what the usage topic holds (a clean run: no repeats).
    # Closed intervals are held until every lane passes their end (ticks, idle advance), so
    # emission goes on after the input is consumed: poll until the count is stable across a
    # read of the usage topic (the counter is raised before each send, never after).
    while True:
        emitted = total(samples, "metering_intervals_emitted_total")
        if emitted > 0:
            usage = consume(kafka_bootstrap, worker.usage_topic,
                            lambda m, n=emitted: len(m) >= n, 60)
            text, samples = scrape(worker.web_port)
            if total(samples, "metering_intervals_emitted_total") == emitted:
                break
        assert time.monotonic() < deadline + 60, f"no stable interval count\n{worker.tail()}"
        time.sleep(0.25)  # poll with a deadline
        text, samples = scrape(worker.web_port)
    rows = [orjson.loads(m.value) for m in usage]
    assert len(rows) == emitted
    per_type = Counter(r["usage_type_name"] for r in rows)
    assert by(samples, "metering_intervals_emitted_total", "usage_type") == {
        (t,): float(n) for t, n in per_type.items()}
    assert total(samples, "metering_usage_emitted_seconds_total") == pytest.approx(
        sum(r["duration_ms"] for r in rows) / 1000)

    # Gauges and the histogram.
    assert total(samples, "metering_open_resources", usage_type="RUNNING_VM") >= 0
    assert total(samples, "metering_open_resources") > 0  # VMs and volumes left open
    lag_s = by(samples, "metering_event_time_lag_seconds", "partition")
    assert lag_s
    assert all(v > 86_400 for v in lag_s.values())  # the trace is from 2025
    assert total(samples, "metering_state_store_bytes") > 0
    count = total(samples, "metering_processing_latency_seconds_count")
    assert 0 < count <= emitted
    assert total(samples, "metering_assigned_partitions", topic=worker.input_topic) == 4
    (info_labels, info_value), = samples["metering_build_info"]
    assert info_value == 1
    assert info_labels["version"] == __version__
    assert info_labels["role"] == "worker"
    for spec in METRICS:  # every worker metric of the catalogue is exposed
        if spec.role in ("worker", "both"):
            assert any(line.startswith(sample_names(spec)) for line in text.splitlines()), \
                spec.name

    events_lags = [v for (t, _), v in lags.items() if t != worker.input_topic]
    assert len(events_lags) == 4
    assert max(events_lags) < 100  # ticks only
    status, body = get_json(f"http://127.0.0.1:{worker.web_port}/readyz")
    assert status == 200, body
    assert body["ready"] is True
    assert worker.stop() == 0
