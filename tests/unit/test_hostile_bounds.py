"""Issue 15, cases 1 and 3: no record can make a reject or a forwarded event too large to
send, and event times outside the contract's bounds (rule 4b) are rejections, never crashes.

Before: the reject of a 180 kB value of control bytes was 1.08 MB (JSON escapes a control
byte as 6 bytes), a 1 MB usage event with a 1 MB ``id`` was forwarded keyed by that id (2 MB),
both above the producer's 1 000 000-byte limit, so the worker's batch failed (exit 70) on
every restart; ``0001-01-01 00:30:00 +1400`` (year 0 in UTC) crashed replay with a traceback
and pre-1970 instants gave negative ``start`` values.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.decode import decode
from metering.events import (
    MAX_ID_CHARS,
    AccountCreated,
    Category,
    Enrichment,
    Meterable,
    Rejected,
    RejectReason,
    Source,
    UsageEvent,
)
from metering.eventtime import format_event_time, parse_event_time
from metering.rejects import (
    KEY_MAX_BYTES,
    MAX_REJECT_MESSAGE_BYTES,
    MAX_REJECT_VALUE_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
    RAW_EXCERPT_CHARS,
    reject_key,
    reject_record,
)
from metering.settings import Settings, SettingsError
from metering.wire import MAX_ROUTED_MESSAGE_BYTES, MAX_ROUTED_VALUE_BYTES, encode_routed
from storage.dataset import read_dataset
from storage.replay import ReplayOptions, run_replay
from tests.refinterp import reference_usage
from tests.tracegen import START_MS, build_trace

NOW = START_MS + 3 * 86_400_000
"""A fixed wall clock for the tests (UTC ms): three days after the traces start."""
SKEW = 300_000


def usage(t: str = "2025-03-01 00:10:00 +0000", event: str = "VM.START",
          **fields: Any) -> bytes:
    obj = {"eventDateTime": t, "event": event, "resource": "com.cloud.vm.VirtualMachine",
           "id": "vm-1", "account": "acct-1", "zone": "zone-1"}
    obj.update(fields)
    return orjson.dumps(obj)


def action(**fields: Any) -> bytes:
    obj = {"eventDateTime": "2025-03-01 00:10:00 +0000", "event": "VM.CREATE",
           "status": "Completed", "user": "u", "entityuuid": "vm-1",
           "ServiceOffering": "so-1"}
    obj.update(fields)
    return orjson.dumps(obj)


CONTROL_180K = b"\x01\x02\x1f" * 60_000
"""Case 1: a 180 kB value of control bytes (valid UTF-8, invalid JSON; JSON escapes each as
``\\u00XX``, 6 bytes: the old reject carried it whole, 1.08 MB)."""
LONG_ID_1MB = usage(id="v" * 990_000)
"""Case 1: a valid usage event just under 1 MB, its ``id`` ~990 000 characters."""


def _reject_size(value: bytes, key: bytes | None, reason: RejectReason) -> int:
    body = reject_record(value, Rejected(reason, "detail"), "cs", 3, 2**62,
                         None if key is None else key.decode("utf-8", "replace"))
    return len(orjson.dumps(body))


# ---------------------------------------------------------------------------- reject builder


@pytest.mark.parametrize("value", [
    CONTROL_180K,
    LONG_ID_1MB,
    b"\x1f" * PRODUCER_MAX_REQUEST_BYTES,  # the largest record the worker accepts
    b"\xff" * PRODUCER_MAX_REQUEST_BYTES,  # not UTF-8 at all: backslash escapes + base64
    "\u2028\U0001f600".encode() * 200_000,  # multi-byte characters
    b"",
], ids=["control-180k", "long-id-1mb", "max-size-control", "max-size-invalid-utf8",
        "multibyte", "empty"])
def test_reject_record_is_bounded_for_any_value(value: bytes) -> None:
    long_key = b"\x01" * 900_000
    for key in (None, long_key, b"\xff\xfe" * 1000):
        size = _reject_size(value, key, RejectReason.INVALID_JSON)
        assert size <= MAX_REJECT_VALUE_BYTES
        kafka_key = reject_key(key)
        assert kafka_key is None or len(kafka_key) <= KEY_MAX_BYTES
    assert MAX_REJECT_MESSAGE_BYTES < PRODUCER_MAX_REQUEST_BYTES // 50
    body = reject_record(value, Rejected(RejectReason.INVALID_JSON, "x"), "cs", 0, 1,
                         long_key.decode())
    assert body["raw_length"] == len(value)
    assert body["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert len(body["raw"]) <= RAW_EXCERPT_CHARS
    assert len(body["key"]) <= 256
    assert body["key_length"] == len(long_key)
    assert body["raw_truncated"] == (len(value) > RAW_EXCERPT_CHARS)


def test_reject_record_keeps_short_values_whole_and_exact() -> None:
    """A short UTF-8 value is its own ``raw``; a short non-UTF-8 one is exact in base64."""
    small = usage(id="")
    body = reject_record(small, Rejected(RejectReason.MISSING_RESOURCE_ID, "no id",
                                         Category.USAGE), "cs", 1, 7, "k")
    assert body["raw"] == small.decode()
    assert body["raw_truncated"] is False
    assert "raw_base64" not in body
    assert (body["reason"], body["category"], body["topic"], body["partition"],
            body["offset"], body["key"]) == ("missing_resource_id", "usage", "cs", 1, 7, "k")
    binary = b"\xff\x00abc\xc3"
    body = reject_record(binary, Rejected(RejectReason.INVALID_UTF8, "x"), None, None, None,
                         None)
    import base64

    assert base64.b64decode(body["raw_base64"]) == binary
    assert body["raw"] == binary.decode("utf-8", "backslashreplace")
    assert body["raw_truncated"] is False


@settings(max_examples=200, deadline=None)
@given(value=st.binary(max_size=5000), key=st.one_of(st.none(), st.text(max_size=3000)),
       detail=st.text(max_size=2000), topic=st.text(min_size=1, max_size=249))
def test_reject_record_never_exceeds_its_bound(value: bytes, key: str | None, detail: str,
                                               topic: str) -> None:
    body = reject_record(value, Rejected(RejectReason.INVALID_JSON, detail), topic, 0, 0, key)
    assert len(orjson.dumps(body)) <= MAX_REJECT_VALUE_BYTES  # lone surrogates serialise too


# ---------------------------------------------------------------------------- decode bounds


@pytest.mark.parametrize("text", [
    "0001-01-01 00:30:00 +1400",  # year 0 in UTC: crashed replay with a traceback
    "0001-01-01 00:00:00 +0000",
    "1969-12-31 23:59:59 +0000",  # one second before the epoch
    "1970-01-01 00:59:59 +0100",
    "1000-06-15 12:00:00 -0930",
])
def test_event_times_before_1970_are_rejected(text: str) -> None:
    for raw in (usage(text), action(eventDateTime=text)):
        got = decode(raw, now_ms=NOW)
        assert isinstance(got, Rejected), got
        assert got.reason is RejectReason.INVALID_EVENT_TIME
        assert "1970" in got.detail
        assert isinstance(decode(raw), Rejected)  # with or without a wall clock


def test_the_epoch_itself_is_accepted() -> None:
    got = decode(usage("1970-01-01 00:00:00 +0000"), now_ms=NOW)
    assert isinstance(got, UsageEvent)
    assert got.time_ms == 0


def test_event_times_beyond_the_wall_clock_plus_skew_are_rejected() -> None:
    edge = format_event_time(NOW + SKEW)
    assert isinstance(decode(usage(edge), now_ms=NOW, max_skew_ms=SKEW), UsageEvent)
    for t in (NOW + SKEW + 1000, NOW + 86_400_000 * 30, NOW + 365 * 86_400_000):
        for raw in (usage(format_event_time(t)), action(eventDateTime=format_event_time(t))):
            got = decode(raw, now_ms=NOW, max_skew_ms=SKEW)
            assert isinstance(got, Rejected)
            assert got.reason is RejectReason.INVALID_EVENT_TIME
            assert "max_clock_skew" in got.detail
    far = usage("9999-12-31 23:59:59 -2359")
    got = decode(far, now_ms=NOW)
    assert isinstance(got, Rejected)
    assert got.reason is RejectReason.INVALID_EVENT_TIME
    # a larger skew admits it; no wall clock (a recorded trace in a test): no upper bound
    assert isinstance(decode(usage(format_event_time(NOW + 3_600_000)), now_ms=NOW,
                             max_skew_ms=3_600_000), UsageEvent)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}\Z"),
    st.text(alphabet="0123456789-+: \u0660\u00b2\u0966", min_size=25, max_size=25),
))
def test_parse_event_time_never_raises_and_decode_bounds_every_instant(text: str) -> None:
    ms = parse_event_time(text)
    assert ms is None or type(ms) is int
    got = decode(usage(text), now_ms=NOW)
    if isinstance(got, UsageEvent):
        assert 0 <= got.time_ms <= NOW + SKEW
    else:
        assert isinstance(got, Rejected)


def test_non_ascii_digits_are_not_a_date() -> None:
    assert parse_event_time("2025-0\u0663-01 00:00:00 +0000") is None
    assert parse_event_time("2025-03-\u0660\u0661 00:00:00 +0000") is None


# ---------------------------------------------------------------------------- field lengths


@pytest.mark.parametrize("name", ["id", "account", "zone"])
def test_usage_identifiers_longer_than_255_characters_are_rejected(name: str) -> None:
    ok = decode(usage(**{name: "x" * MAX_ID_CHARS}))
    assert isinstance(ok, UsageEvent)
    got = decode(usage(**{name: "x" * (MAX_ID_CHARS + 1)}))
    assert isinstance(got, Rejected), got
    assert got.reason is RejectReason.FIELD_TOO_LONG
    assert got.category is Category.USAGE
    assert name in got.detail


def test_the_one_megabyte_id_is_rejected_not_forwarded() -> None:
    got = decode(LONG_ID_1MB)  # under the default max_record_bytes: parsed
    assert isinstance(got, Rejected)
    assert got.reason is RejectReason.FIELD_TOO_LONG
    assert _reject_size(LONG_ID_1MB, b"v" * 990_000, got.reason) <= MAX_REJECT_VALUE_BYTES


@pytest.mark.parametrize("name", ["entityuuid", "ServiceOffering", "VirtualMachineTemplate",
                                  "DiskOffering", "Domain"])
def test_action_identifiers_longer_than_255_characters_are_rejected(name: str) -> None:
    extra: dict[str, Any] = {name: "e" * (MAX_ID_CHARS + 1)}
    if name == "Domain":
        extra["event"] = "ACCOUNT.CREATE"
    got = decode(action(**extra))
    assert isinstance(got, Rejected)
    assert got.reason is RejectReason.FIELD_TOO_LONG
    extra[name] = "e" * MAX_ID_CHARS
    assert isinstance(decode(action(**extra)), Enrichment | AccountCreated)


def test_the_longest_forwarded_event_fits_in_one_request() -> None:
    """Every string of a forwarded event is at most 255 characters, so the worst case (each
    character a 6-byte JSON escape, a 249-character topic, 64-bit numbers) stays bounded."""
    s = "\x01" * MAX_ID_CHARS
    src = Source("t" * 249, 2**31 - 1, 2**63 - 1)
    values: list[Meterable] = [
        UsageEvent("NETWORK.OFFERING.ASSIGN", s, s, s, 2**62),
        Enrichment(s, 2**62, s, s, s),
        AccountCreated(s, s, 2**62),
    ]
    for value in values:
        data = encode_routed(value, src, 2**62, 2**62)
        assert len(data) <= MAX_ROUTED_VALUE_BYTES, value
    assert MAX_ROUTED_MESSAGE_BYTES < PRODUCER_MAX_REQUEST_BYTES // 50


# ---------------------------------------------------------------------------- settings


def test_settings_refuse_a_record_limit_above_the_producer_request_size() -> None:
    Settings().validate()  # the default fits
    assert Settings().max_record_bytes <= PRODUCER_MAX_REQUEST_BYTES
    with pytest.raises(SettingsError) as err:
        dataclasses.replace(Settings(), max_record_bytes=1_048_576).validate()
    text = str(err.value)
    assert "max_record_bytes" in text
    assert "max request size" in text
    assert "producer_max_request_size" in text
    assert "1000000" in text


def test_the_worker_producer_uses_the_limit_the_bounds_assume() -> None:
    from agents.faustapp import make_app

    app = make_app(Settings(), app_id="limit-test")
    assert app.conf.producer_max_request_size == PRODUCER_MAX_REQUEST_BYTES


# ---------------------------------------------------------------------------- replay


def hostile_records() -> list[bytes]:
    """The records of cases 1 and 3 (resource ids absent from the traces)."""
    return [
        CONTROL_180K,
        LONG_ID_1MB,
        usage("0001-01-01 00:30:00 +1400", id="vm-year0"),
        usage("1969-12-31 23:00:00 +0000", id="vm-1969"),
        usage("1969-12-31 23:00:00 +0000", event="VM.STOP", id="vm-1969"),
        usage(format_event_time(NOW + 30 * 86_400_000), event="SNAPSHOT.CREATE",
              id="snap-future", resource="Snapshot"),
        usage(format_event_time(NOW + 365 * 86_400_000), id="vm-future"),
        usage(account="a" * 300, id="vm-long-account"),
    ]


def _rows(root: Path) -> list[dict[str, Any]]:
    """Rows without their source coordinates (line numbers move when lines are added)."""
    rows = read_dataset(root).to_pylist()
    for r in rows:
        for name in ("usage_date", "source_topic", "source_partition", "source_offset"):
            r.pop(name, None)
    return sorted(rows, key=lambda r: r["interval_id"])


def test_replay_rejects_hostile_records_and_keeps_the_valid_usage(tmp_path: Path) -> None:
    trace = [v for _, v in build_trace(seed=3, accounts=3, hours=4.0)]
    hostile = hostile_records()
    mixed = list(trace)
    for i, h in enumerate(hostile):
        mixed.insert((i * 7) % len(mixed), h)
    (tmp_path / "trace.jsonl").write_bytes(b"\n".join(trace) + b"\n")
    (tmp_path / "mixed.jsonl.gz").write_bytes(gzip.compress(b"\n".join(mixed) + b"\n"))

    def replay(name: str, out: str, rejects: Path | None = None) -> Any:
        return run_replay(ReplayOptions(
            inputs=[str(tmp_path / name)], output=tmp_path / out, rejects=rejects,
            now_ms=NOW, max_clock_skew_ms=SKEW,
            until_ms=START_MS + 5 * 3_600_000))

    until = START_MS + 5 * 3_600_000
    assert reference_usage(mixed, until) == reference_usage(trace, until)  # the oracle too
    clean = replay("trace.jsonl", "clean")
    summary = replay("mixed.jsonl.gz", "mixed", tmp_path / "rejects.jsonl")
    assert _rows(tmp_path / "mixed") == _rows(tmp_path / "clean")
    assert clean.intervals
    assert summary.intervals == clean.intervals
    assert all(r["start"].year >= 1970 for r in _rows(tmp_path / "mixed"))
    assert summary.rejects == {"invalid_json": 1, "field_too_long": 2,
                               "invalid_event_time": 5}
    lines = (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    assert len(lines) == len(hostile)
    by_digest = {hashlib.sha256(h).hexdigest(): h for h in hostile}
    for line in lines:
        assert len(line) <= MAX_REJECT_VALUE_BYTES
        body = json.loads(line)
        original = by_digest[body["raw_sha256"]]
        assert body["raw_length"] == len(original)
        assert original.decode().startswith(body["raw"])


def test_replay_cli_bounds_event_times_by_its_own_clock_and_max_clock_skew(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``metering replay`` reads the wall clock once at start; ``--max-clock-skew`` widens
    the bound of rule 4b, and a year-0 instant is a reject, not a traceback (exit 0)."""
    import time

    from agents.cli import main

    soon = int(time.time() * 1000) + 2 * 86_400_000  # two days ahead of the real clock
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\n".join([
        usage(format_event_time(soon), id="vm-soon"),
        usage("0001-01-01 00:30:00 +1400", id="vm-year0"),
    ]) + b"\n")
    for skew, want in (("300", 2), (str(3 * 86_400), 1)):
        code = main(["replay", str(trace), "--output", str(tmp_path / skew), "--json",
                     "--no-progress", "--max-clock-skew", skew,
                     "--rejects", str(tmp_path / f"{skew}.jsonl")])
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert out["rejects_by_reason"] == {"invalid_event_time": want}
    with pytest.raises(SystemExit):
        main(["replay", str(trace), "--output", str(tmp_path / "x"), "--max-clock-skew", "-1"])
