"""Hostile input on a real broker: fuzzed records are rejected one by one, the worker lives.

Seeded mutation (no Hypothesis: a seeded ``random.Random`` is exact, reproducible and much
faster for thousands of records) builds ``METERING_FUZZ_RECORDS`` records (default 2000 in
``make test``; 10 000 with ``METERING_RELIABILITY=full`` or ``METERING_FUZZ_RECORDS=10000``)
of these kinds: truncated JSON of valid events, records above the worker's
``METERING_MAX_RECORD_BYTES`` (4096 here: ``too_large``, never parsed, even when they are
valid events), deeply nested JSON, valid-looking events with fields of the wrong JSON type,
invalid UTF-8, random binary, JSON that is not an object, and empty or blank values. Each
candidate is kept only if the pure decoder rejects it, so the expectation is exact.

They are interleaved with a small valid trace on a 4-partition topic. The worker must never
exit; the rejects topic must hold exactly the rejected input records (``raw`` an exact
excerpt with the value's length and SHA-256, the decoder's reason, the right
coordinates), ``metering_records_rejected_total`` must count them per reason, and the usage
must equal ``metering replay`` of the valid records alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from metering.decode import decode
from metering.events import Rejected
from metering.eventtime import format_event_time
from storage.dataset import read_dataset
from storage.replay import ReplayOptions, run_replay
from tests.integration.kafkautil import consume, produce, usage_rows
from tests.integration.workerproc import WorkerProc
from tests.tracegen import START_MS, build_trace

FULL = os.environ.get("METERING_RELIABILITY") == "full"
N_FUZZ = int(os.environ.get("METERING_FUZZ_RECORDS", "10000" if FULL else "2000"))
MAX_BYTES = 4096
"""The worker's ``METERING_MAX_RECORD_BYTES`` in this test (small: too_large is cheap)."""
PARTITIONS = 4
HOURS = 5.0
SENTINEL_MS = START_MS + int((HOURS + 1.5) * 3_600_000)

KINDS = ("truncated", "too_large", "deep_nesting", "wrong_types", "invalid_utf8",
         "random_binary", "non_object", "empty")

_BAD_UTF8 = (b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xc3\x28", b"\xed\xa0\x80",
             b"\xe2\x82", b"\xf0\x9f\x98", b"\xf8\x88\x80\x80\x80", b"\xa0\xa1")


def sentinel(partition: int) -> bytes:
    """An orphan VM.STOP that moves a lane's watermark past the trace (no usage)."""
    return orjson.dumps({
        "eventDateTime": format_event_time(SENTINEL_MS), "event": "VM.STOP",
        "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{partition}",
        "account": "sentinel", "zone": "zone-1"})


def _wrong_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Callable[[], Any]] = [
        lambda: rng.randint(-(2**70), 2**70), lambda: rng.random() * 1e6, lambda: None,
        lambda: rng.random() < 0.5, lambda: [], lambda: {},
        lambda: [rng.randint(0, 9)] * rng.randint(1, 3), lambda: {"x": "y"},
    ]
    if depth < 2:
        choices.append(lambda: [_wrong_value(rng, depth + 1)])
        choices.append(lambda: {"nested": _wrong_value(rng, depth + 1)})
    return rng.choice(choices)()


def _candidate(rng: random.Random, kind: str, valid: list[dict[str, Any]], i: int) -> bytes:
    """One fuzzed record of ``kind`` (not yet checked against the decoder)."""
    base = dict(rng.choice(valid))
    raw = orjson.dumps(base)
    if kind == "truncated":
        return raw[:rng.randrange(0, len(raw))]
    if kind == "too_large":
        shape = rng.randrange(8)
        if shape in (0, 4):  # a perfectly valid usage event, padded: must not be metered
            return orjson.dumps({
                "eventDateTime": format_event_time(START_MS + 600_000), "event": "VM.START",
                "resource": "com.cloud.vm.VirtualMachine", "id": f"fuzz-vm-{i}",
                "account": f"fuzz-acct-{i}", "zone": "zone-1",
                "description": "x" * rng.randint(MAX_BYTES, 4 * MAX_BYTES)})
        if shape in (1, 5):
            return rng.randbytes(rng.randint(MAX_BYTES + 1, 3 * MAX_BYTES))
        if shape == 2:
            return b"[" * 100_000  # the classic: never parsed at all under the limit
        return orjson.dumps([base] * (MAX_BYTES // len(raw) + 2))
    if kind == "deep_nesting":  # small enough to reach the parser (orjson's depth is 1024)
        depth = rng.randint(1025, 1900)
        shape = rng.randrange(4)
        if shape == 0:
            return b"[" * depth
        if shape == 1:
            return b"[" * depth + b"]" * depth
        if shape == 2:  # objects in arrays: 2.5 bytes a level keeps it under the limit
            return b'[{"":' * (depth // 2 + 1)
        depth = min(depth, (MAX_BYTES - len(raw) - 12) // 2)  # stays under the limit
        inner = b"[" * depth + b"]" * depth  # a valid event whose zone nests too deep
        return raw[:-1] + b',"zone":' + inner + b"}"
    if kind == "wrong_types":
        fields = ["eventDateTime", "event", "account", "id", "zone"]
        if "status" in base:
            fields += ["status", "entityuuid"]
        for name in rng.sample(fields, rng.randint(1, 2)):
            base[name] = _wrong_value(rng)
        return json.dumps(base, separators=(",", ":")).encode()  # ints beyond 64 bits too
    if kind == "invalid_utf8":
        at = rng.randrange(len(raw) + 1)
        cut = at + rng.randint(0, 2)
        return raw[:at] + rng.choice(_BAD_UTF8) + raw[cut:]
    if kind == "random_binary":
        return rng.randbytes(rng.randint(1, 600))
    if kind == "non_object":
        values: list[Any] = [[], [1, 2], [base], [base, base], 42, -1.5e300, 0, 2**63,
                             "VM.START", raw.decode(), None, True, False, [[[]]], [None]]
        pick = rng.choice(values)
        if rng.random() < 0.1:
            return rng.choice([b"NaN", b"-Infinity", b"1e999", b'"\\ud800"', b" [] "])
        return orjson.dumps(pick)
    assert kind == "empty"
    return rng.choice([b"", b" ", b"\n", b"\t\r\n ", b"\x00"])


def fuzz_records(
    n: int, valid: list[dict[str, Any]], seed: int = 4242
) -> tuple[list[tuple[str, bytes]], Counter[str]]:
    """``n`` (kind, value) records, every one rejected by the pure decoder; candidates the
    decoder accepts (a mutation that happened to stay valid) are counted and dropped."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    dropped: Counter[str] = Counter()
    i = 0
    while len(out) < n:
        kind = KINDS[len(out) % len(KINDS)]
        i += 1
        value = _candidate(rng, kind, valid, i)
        if isinstance(decode(value, MAX_BYTES), Rejected):
            out.append((kind, value))
        else:
            dropped[kind] += 1
            assert dropped[kind] < 50 * n, f"generator for {kind} hardly ever gives rejects"
    return out, dropped


def _fuzz_key(rng: random.Random, trace_keys: list[bytes]) -> bytes | None:
    r = rng.random()
    if r < 0.4:
        return None
    if r < 0.7:
        return rng.choice(trace_keys)  # lands on a partition with valid traffic
    if r < 0.85:
        return b"\xff\xfe" + rng.randbytes(4)  # a key that is not UTF-8 either
    return f"fuzz-{rng.randrange(10**6)}".encode()


def replay_rows(lines: list[bytes], tmp: Path) -> dict[str, dict[str, Any]]:
    """Replay kcat-style lines; rows by interval_id with timestamps as epoch ms."""
    trace = tmp / "valid-dump.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    run_replay(ReplayOptions(inputs=[str(trace)], output=tmp / "replay",
                             max_record_bytes=MAX_BYTES))
    rows = {}
    for row in read_dataset(tmp / "replay").to_pylist():
        row.pop("usage_date")
        for k in ("start", "end", "period_start"):
            row[k] = int(row[k].timestamp() * 1000)
        rows[row["interval_id"]] = row
    return rows


def kcat_line(m: Any) -> bytes:
    return orjson.dumps({
        "topic": m.topic, "partition": m.partition, "offset": m.offset, "tstype": "create",
        "ts": m.timestamp, "broker": -1, "key": m.key.decode() if m.key is not None else None,
        "payload": m.value.decode()})


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def raw_of(reject: dict[str, Any]) -> bytes:
    """The excerpt of the record value in a reject (``raw_base64`` when it was not UTF-8):
    the whole value unless ``raw_truncated``."""
    if "raw_base64" in reject:
        return base64.b64decode(reject["raw_base64"])
    return reject["raw"].encode()


def check_raw(reject: dict[str, Any], value: bytes) -> None:
    """The reject describes ``value``: its length, its digest, and an exact excerpt."""
    assert reject["raw_length"] == len(value)
    assert reject["raw_sha256"] == hashlib.sha256(value).hexdigest()
    excerpt = raw_of(reject)
    if reject["raw_truncated"]:
        if "raw_base64" in reject:
            assert value.startswith(excerpt)
        else:
            assert value.decode("utf-8").startswith(reject["raw"])
    else:
        assert excerpt == value


@pytest.fixture
def worker_factory(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def make(input_topic: str, **extra: str) -> WorkerProc:
        app = unique_name("hostile")
        w = WorkerProc(kafka_bootstrap, app, input_topic, tmp_path / app / "data",
                       partitions=PARTITIONS, extra=extra)
        started.append(w)
        return w

    yield make
    for w in started:
        w.kill()


def test_decoder_survives_pathological_nesting_unbounded() -> None:
    """Even with the default limit (1 000 000 bytes: parsed, not too_large) deep nesting is a
    reject."""
    for raw in (b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000,
                b'{"eventDateTime":' + b"[" * 200_000):
        got = decode(raw)
        assert isinstance(got, Rejected)
        assert got.reason.value == "invalid_json", got
    got = decode(b"[" * 100_000, MAX_BYTES)
    assert isinstance(got, Rejected)
    assert got.reason.value == "too_large"


@pytest.mark.reliability
def test_fuzzed_records_are_rejected_exactly_and_usage_is_unchanged(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    trace = build_trace(seed=41, accounts=4, hours=HOURS, malformed=5)
    valid = [orjson.loads(v) for _, v in trace if not isinstance(decode(v), Rejected)]
    fuzz, dropped = fuzz_records(N_FUZZ, valid)
    kinds = Counter(kind for kind, _ in fuzz)
    fuzz_reasons = Counter(decode(v, MAX_BYTES).reason.value for _, v in fuzz)  # type: ignore[union-attr]
    by_kind_reason = Counter((k, decode(v, MAX_BYTES).reason.value)  # type: ignore[union-attr]
                             for k, v in fuzz)
    print(f"\nfuzz: {len(fuzz)} records; per kind {dict(sorted(kinds.items()))}; "
          f"per reason {dict(sorted(fuzz_reasons.items()))}; candidates dropped because the "
          f"decoder accepted them {dict(sorted(dropped.items()))}")
    print("fuzz kind x reason: " + ", ".join(
        f"{k}/{r}={n}" for (k, r), n in sorted(by_kind_reason.items())))
    record_property("fuzz_per_kind", dict(kinds))
    record_property("fuzz_per_reason", dict(fuzz_reasons))

    # interleave: the trace keeps its order, fuzz lands between its records at random
    rng = random.Random(99)
    trace_keys = [k for k, _ in trace if k is not None]
    slots = sorted(rng.randrange(len(trace) + 1) for _ in fuzz)
    records: list[tuple[bytes | None, bytes]] = []
    it = iter(fuzz)
    pos = 0
    for t_index, item in enumerate(trace):
        while pos < len(slots) and slots[pos] == t_index:
            records.append((_fuzz_key(rng, trace_keys), next(it)[1]))
            pos += 1
        records.append(item)
    records.extend((_fuzz_key(rng, trace_keys), v) for _, v in it)
    assert len(records) == len(trace) + len(fuzz)

    topic = topic_factory(partitions=PARTITIONS, prefix="cshostile")
    produced = produce(kafka_bootstrap, topic, records)
    for p in range(PARTITIONS):
        produced += produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)

    # The expectation, from the topic itself and the pure decoder only.
    inputs = consume(kafka_bootstrap, topic, lambda m: len(m) >= produced, 60)
    assert len(inputs) == produced
    expected_rejects: dict[tuple[int, int], tuple[bytes, str]] = {}
    valid_msgs = []
    for m in inputs:
        value = m.value if m.value is not None else b""
        d = decode(value, MAX_BYTES)
        if isinstance(d, Rejected):
            expected_rejects[(m.partition, m.offset)] = (value, d.reason.value)
        else:
            valid_msgs.append(m)
    trace_rejects = sum(isinstance(decode(v, MAX_BYTES), Rejected) for _, v in trace)
    assert trace_rejects == 5
    assert len(expected_rejects) == len(fuzz) + trace_rejects
    want_reasons = Counter(reason for _, reason in expected_rejects.values())
    valid_msgs.sort(key=lambda m: (m.timestamp, m.partition, m.offset))
    expected = replay_rows([kcat_line(m) for m in valid_msgs], tmp_path)
    assert expected, "the valid trace must produce usage"

    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000",
                            METERING_MAX_RECORD_BYTES=str(MAX_BYTES),
                            METERING_METRICS_INTERVAL="0.5")
    started = time.monotonic()
    worker.start().wait_ready()
    assert worker.process is not None

    def alive(_: object = None) -> bool:
        assert worker.process is not None
        assert worker.process.poll() is None, (
            f"worker exited {worker.process.returncode}:\n{worker.tail()}")
        return False

    def all_rejects(msgs: list[Any]) -> bool:
        alive()
        return len(msgs) >= len(expected_rejects)

    rejects = consume(kafka_bootstrap, worker.rejects_topic, all_rejects, deadline_s=60)
    assert len(rejects) == len(expected_rejects), worker.tail()

    def all_usage(msgs: list[Any]) -> bool:
        alive()
        return {orjson.loads(m.value)["interval_id"] for m in msgs} >= set(expected)

    usage = consume(kafka_bootstrap, worker.usage_topic, all_usage, deadline_s=60)
    processing_s = time.monotonic() - started
    print(f"worker: {produced} records ({len(fuzz)} fuzzed) processed in {processing_s:.1f} s")
    record_property("processing_seconds", round(processing_s, 2))

    # Rejects: exactly the rejected input records, byte for byte, once each.
    seen: Counter[tuple[int, int]] = Counter()
    for m in rejects:
        body = orjson.loads(m.value)
        assert body["topic"] == topic
        coords = (body["partition"], body["offset"])
        seen[coords] += 1
        assert coords in expected_rejects, f"unexpected reject {body}"
        value, reason = expected_rejects[coords]
        check_raw(body, value)
        assert body["reason"] == reason, coords
        if "raw_base64" in body and not body["raw_truncated"]:
            assert body["raw"] == value.decode("utf-8", "backslashreplace")
    assert set(seen) == set(expected_rejects)
    assert max(seen.values()) == 1

    # Usage: equal to the replay of the valid records alone, content and coordinates.
    rows = usage_rows(usage)
    assert set(rows) == set(expected), (
        f"missing {len(set(expected) - set(rows))}, extra {len(set(rows) - set(expected))}")
    for interval_id, row in rows.items():
        assert row == expected[interval_id], interval_id
    assert not any(r["account_id"].startswith("fuzz-") for r in rows.values())

    # /metrics: every record consumed, rejects counted per reason exactly.
    deadline = time.monotonic() + 30
    while True:
        alive()
        samples = scrape(worker.web_port)
        consumed = sum(v for _, v in samples.get("metering_records_consumed_total", []))
        if consumed >= produced:
            break
        assert time.monotonic() < deadline, f"consumed {consumed} of {produced}"
        time.sleep(0.25)  # poll with a deadline
    assert consumed == produced
    rejected = {lab["reason"]: v for lab, v in samples["metering_records_rejected_total"]}
    assert rejected == {r: float(n) for r, n in want_reasons.items()}
    rejected_outcome = sum(v for lab, v in samples["metering_records_consumed_total"]
                           if lab["outcome"] == "rejected")
    assert rejected_outcome == len(expected_rejects)
    print(f"rejected per reason (fuzz + 5 malformed of the trace): "
          f"{dict(sorted(want_reasons.items()))}")

    alive()
    log = worker.log_path.read_text(errors="replace") if worker.log_path else ""
    assert "batch failed" not in log
    assert "Traceback" not in log
    assert worker.stop() == 0, worker.tail()


def test_lone_surrogate_escape_is_not_a_poison_pill(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc],
) -> None:
    """A record orjson refuses but the stdlib parser accepts, with a lone UTF-16 surrogate
    in ``account`` and ``id``: the worker rejects it (invalid_json) and lives."""
    poison = (b'{"eventDateTime":"2025-03-01 00:00:00 +0000","event":"VM.START",'
              b'"account":"a\\ud800","id":"vm-\\udfff","zone":"zone-1"}')
    rejected = decode(poison)
    assert isinstance(rejected, Rejected)
    assert rejected.reason.value == "invalid_json"
    topic = topic_factory(partitions=1, prefix="cspoison")
    produce(kafka_bootstrap, topic, [(None, poison)] + [(None, sentinel(0))] * 2)
    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000",
                            METERING_METRICS_INTERVAL="0.5")
    worker.start()
    assert worker.process is not None
    deadline = time.monotonic() + 60
    while True:
        assert worker.process.poll() is None, (
            f"worker exited {worker.process.returncode} on the record:\n{worker.tail(30)}")
        try:
            samples = scrape(worker.web_port)
        except OSError:
            samples = {}
        consumed = sum(v for _, v in samples.get("metering_records_consumed_total", []))
        lags = [v for lab, v in samples.get("metering_consumer_lag_records", [])
                if lab.get("topic") == topic]
        if consumed >= 2 and lags and not any(lags):  # the batch finished and was committed
            break
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.25)  # poll with a deadline
    assert worker.process.poll() is None, worker.tail(30)
    assert any(lab.get("reason") == "invalid_json" and v >= 1
               for lab, v in samples.get("metering_records_rejected_total", []))
    assert worker.stop() == 0, worker.tail()


PRODUCER_LIMIT = 1_000_000
"""The worker producer's max request size (Faust's ``producer_max_request_size``)."""


def test_oversized_rejects_and_out_of_range_times_never_stop_the_worker(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    worker_factory: Callable[..., WorkerProc], tmp_path: Path,
) -> None:
    """Issue 15, cases 1 and 3, with the worker's default ``max_record_bytes``.

    Before: the reject of a 180 kB value of control bytes took 1.08 MB (each control byte a
    6-byte JSON escape) and a ~1 MB usage event with a ~1 MB ``id`` was forwarded keyed by
    that id; both exceeded the producer's 1 000 000-byte limit, the ingest batch failed and
    the worker exited 70, on the same record after every restart. Now both are rejected with
    a bounded reject, as are event times before 1970 or far in the future, a long key does
    not reach the rejects topic whole, and the usage is that of the valid trace alone.
    """
    trace = build_trace(seed=43, accounts=3, hours=3.0)
    wall_ms = int(time.time() * 1000)

    def ev(t: str, rid: str, event: str = "VM.START", **extra: str) -> bytes:
        return orjson.dumps({"eventDateTime": t, "event": event, "id": rid,
                             "account": "hostile-acct", "zone": "zone-1", **extra})

    hostile: list[tuple[bytes | None, bytes, str]] = [
        (b"ctl", b"\x01\x02\x1f" * 60_000, "invalid_json"),  # 6-byte JSON escapes
        (b"vm-long", ev(format_event_time(START_MS + 600_000), "v" * 990_000),
         "field_too_long"),
        (b"k" * 600_000, b"\x01not json", "invalid_json"),  # a long key, a short value
        (b"vm-y0", ev("0001-01-01 00:30:00 +1400", "vm-y0"), "invalid_event_time"),
        (b"vm-1969", ev("1969-12-31 23:00:00 +0000", "vm-1969"), "invalid_event_time"),
        (b"snap-future", ev(format_event_time(wall_ms + 30 * 86_400_000), "snap-future",
                            event="SNAPSHOT.CREATE"), "invalid_event_time"),
    ]
    rng = random.Random(15)
    records: list[tuple[bytes | None, bytes]] = list(trace)
    marks: set[bytes] = set()
    for key, value, _ in hostile:
        records.insert(rng.randrange(len(records) + 1), (key, value))
        marks.add(value)
    topic = topic_factory(partitions=PARTITIONS, prefix="cscase1")
    produced = produce(kafka_bootstrap, topic, records)
    for p in range(PARTITIONS):
        produced += produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)
    inputs = consume(kafka_bootstrap, topic, lambda m: len(m) >= produced, 60)
    assert len(inputs) == produced
    reason_of = {value: reason for _, value, reason in hostile}
    expected_rejects = {(m.partition, m.offset): m for m in inputs if m.value in marks}
    assert len(expected_rejects) == len(hostile)
    valid = sorted((m for m in inputs if m.value not in marks),
                   key=lambda m: (m.timestamp, m.partition, m.offset))
    expected = replay_rows([kcat_line(m) for m in valid], tmp_path)
    assert expected

    worker = worker_factory(topic, METERING_IDLE_ADVANCE="100000",
                            METERING_METRICS_INTERVAL="0.5")
    worker.start()
    assert worker.process is not None

    def alive() -> None:
        assert worker.process is not None
        assert worker.process.poll() is None, (
            f"worker exited {worker.process.returncode}:\n{worker.tail(30)}")

    def all_rejects(msgs: list[Any]) -> bool:
        alive()
        return len(msgs) >= len(expected_rejects)

    rejects = consume(kafka_bootstrap, worker.rejects_topic, all_rejects, deadline_s=90)
    assert len(rejects) == len(expected_rejects), worker.tail()
    for m in rejects:
        assert len(m.value) + len(m.key or b"") < PRODUCER_LIMIT // 50
        body = orjson.loads(m.value)
        source = expected_rejects[(body["partition"], body["offset"])]
        assert body["topic"] == topic
        assert body["reason"] == reason_of[source.value], body["detail"]
        assert body["raw_length"] == len(source.value)
        assert body["raw_sha256"] == hashlib.sha256(source.value).hexdigest()
        assert source.value.decode().startswith(body["raw"])
        assert len(body["raw"]) <= 1024

    def all_usage(msgs: list[Any]) -> bool:
        alive()
        return {orjson.loads(m.value)["interval_id"] for m in msgs} >= set(expected)

    usage = consume(kafka_bootstrap, worker.usage_topic, all_usage, deadline_s=90)
    rows = usage_rows(usage)
    assert set(rows) == set(expected)
    for interval_id, row in rows.items():
        assert row == expected[interval_id], interval_id
    assert not any(r["account_id"] == "hostile-acct" for r in rows.values())
    alive()
    log = worker.log_path.read_text(errors="replace") if worker.log_path else ""
    assert "batch failed" not in log
    assert "Traceback" not in log
    assert worker.stop() == 0, worker.tail()
