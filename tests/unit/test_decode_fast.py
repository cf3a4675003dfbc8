"""``decode``'s fast path (msgspec reads only the keys decoding looks at) answers exactly
what the full path (parse everything with orjson, then classify) answers, for any bytes.

The fast path must be an optimisation only: every kind, rejection, detail and category the
same. These tests compare :func:`metering.decode.decode` with
:func:`metering.decode.decode_full` on CloudStack-shaped records, on mutated and hostile
bytes, on the JSON corners where parsers disagree, on a simulated cloud's whole trace, and
(``-m slow``, when cached) on the benchmark trace. They also check that the fast path does
answer for well-formed records, so that the equality is not won by always falling back.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering import decode as decode_module
from metering.decode import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_BYTES, decode
from metering.events import MAX_ID_CHARS, Decoded, Ignored, Rejected
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream
from metering.usage_types import EXPLICITLY_IGNORED, TRANSITIONS

NOW_MS = 1_741_000_000_000  # 2025-03-03T11:06:40Z
FULL = decode_module.decode_full


def both(raw: bytes, now_ms: int | None = None, max_bytes: int = DEFAULT_MAX_RECORD_BYTES
         ) -> tuple[Decoded, Decoded]:
    """(decode's answer, the full path's answer) for ``raw``."""
    fast = decode(raw, max_bytes, now_ms)
    if len(raw) > max_bytes:
        return fast, fast  # rejected before either path
    latest = None if now_ms is None else now_ms + DEFAULT_MAX_CLOCK_SKEW_MS
    return fast, FULL(raw, latest)


def assert_same(raw: bytes, now_ms: int | None = None) -> Decoded:
    fast, full = both(raw, now_ms)
    assert type(fast) is type(full), raw
    assert fast == full, raw
    return fast


class FullPathCalls:
    """Counts the records :func:`decode` hands to the full path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        full = decode_module.decode_full

        def counting(raw: bytes, latest_ms: int | None) -> Decoded:
            self.count += 1
            return full(raw, latest_ms)

        monkeypatch.setattr(decode_module, "decode_full", counting)


# --------------------------------------------------------------------- generated records

KEYS = ["eventDateTime", "event", "account", "id", "zone", "user", "status", "entityuuid",
        "description", "old-state", "new-state", "jobId", "subject", "resource", "Domain",
        "ServiceOffering", "VirtualMachineTemplate", "DiskOffering", "body", "cmdInfo"]
EVENTS = sorted(TRANSITIONS) + sorted(EXPLICITLY_IGNORED)[:5] + [
    "ACCOUNT.DELETE", "ACCOUNT.CREATE", "ALERT.STORAGE", "GLOBAL.LB.X", "NET.IP6ASSIGN", ""]
TIMES = ["2025-03-01 05:56:02 +0530", "2025-03-03 11:06:40 +0000", "2025-03-03 11:11:41 +0000",
         "2099-01-01 00:00:00 +0000", "0001-01-01 00:30:00 +1400", "1970-01-01 00:00:00 +0000",
         "2025-02-30 00:00:00 +0000", "2025-03-01 24:00:00 +0000", "2025-03-01 05:56:60 +0530",
         "2025-03-01T05:56:02 +0530", "14/03/2025 10:00:00", "2025-03-01 05:56:02 +2500", ""]
strings = (st.sampled_from(EVENTS + TIMES + ["Completed", "Scheduled", "Error while x", "",
                                             "x" * MAX_ID_CHARS, "y" * (MAX_ID_CHARS + 1)])
           | st.text(max_size=12)  # non-ASCII, control characters, surrogates
           | st.uuids().map(str))
scalars = st.none() | st.booleans() | st.integers() | st.floats() | strings
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                        max_size=3), max_leaves=8)


@st.composite
def records(draw: st.DrawFn) -> bytes:
    """CloudStack-like objects (mostly string values, Gson's compact form), sometimes with
    other value types, duplicate keys, other JSON writers' spacing and escapes."""
    keys = draw(st.lists(st.sampled_from(KEYS) | st.text(max_size=6), max_size=10))
    pairs = [(k, draw(strings if draw(st.integers(0, 9)) else values)) for k in keys]
    style = draw(st.sampled_from(["orjson", "ascii", "spaced", "gson"]))
    if style == "orjson":
        try:  # orjson cannot write integers beyond 64 bits; the "ascii" style covers them
            items = [orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs]
        except TypeError:
            return json.dumps(dict(pairs)).encode()
        return b"{" + b",".join(items) + b"}"
    if style == "ascii":  # \\uXXXX escapes, NaN/Infinity, big integers
        return json.dumps(dict(pairs)).encode()
    if style == "spaced":
        return b" { " + b" , ".join(json.dumps(k).encode() + b" : " + json.dumps(
            v, ensure_ascii=False).encode("utf-8", "surrogatepass") for k, v in pairs) + b" }\n"
    text = json.dumps(dict(pairs), separators=(",", ":"))  # Gson escapes HTML characters
    for c in "<>&='":
        text = text.replace(c, f"\\u{ord(c):04x}")
    return text.encode()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A record with a few bytes replaced, inserted, removed, or the tail cut off."""
    raw = bytearray(draw(records()))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        byte = draw(st.sampled_from(b'{}[]":,\\u0aeE.-+ \x00\x1f\x7f\x80\xc3\xff'))
        if op == "replace" and raw:
            raw[at] = byte
        elif op == "insert":
            raw.insert(at, byte)
        elif op == "delete" and raw:
            del raw[at]
        else:
            del raw[at:]
    return bytes(raw)


@given(records(), st.sampled_from([None, NOW_MS]))
def test_the_fast_path_answers_as_the_full_path_on_records(raw: bytes, now_ms: int | None
                                                            ) -> None:
    assert_same(raw, now_ms)


@given(mutated(), st.sampled_from([None, NOW_MS]))
def test_the_fast_path_answers_as_the_full_path_on_mutated_records(raw: bytes,
                                                                   now_ms: int | None) -> None:
    assert_same(raw, now_ms)


@given(st.binary(max_size=300))
def test_the_fast_path_answers_as_the_full_path_on_any_bytes(raw: bytes) -> None:
    assert_same(raw)


@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=8),
       st.sampled_from([None, NOW_MS]))
def test_the_fast_path_answers_as_the_full_path_on_any_values(obj: dict[str, Any],
                                                              now_ms: int | None) -> None:
    assert_same(json.dumps(obj).encode(), now_ms)


# ------------------------------------------------------------ where JSON parsers disagree

RS = b'{"eventDateTime":"2025-03-01 05:56:02 +0530","old-state":"Allocated"'
CORNERS = [
    RS + b',"x":"\\ud800"}',  # lone surrogates: orjson refuses, json accepts, then rejected
    RS + b',"x":"\\udc00"}',
    RS + b',"x":"\\ud800\\u0041"}',
    b'{"old-state":"\\ud800"}',
    RS + b',"x":"\\ud800\\udc00"}',  # a valid pair
    RS + b',"x":"\xff"}',  # invalid UTF-8 in a string msgspec would skip unread
    RS + b',"\xff":"x"}',
    RS + b',"x":"\xed\xa0\x80"}',  # an encoded surrogate
    RS + b',"x":"caf\xc3\xa9"}',  # valid UTF-8: the full path (not ASCII)
    b'\xef\xbb\xbf' + RS + b'}',  # a byte-order mark
    RS + b',"x":NaN}', RS + b',"x":Infinity}', RS + b',"x":-Infinity}',  # json only
    RS + b',"x":1e999}',  # orjson refuses, json gives inf
    RS + b',"x":123456789012345678901234567890}',
    RS + b',"x":01}', RS + b',"x":1.}', RS + b',"x":.5}', RS + b',"x":+1}', RS + b',"x":-}',
    RS + b',}', RS + b',"x":[1,]}', RS + b'}x', RS + b'}\n', b' ' + RS + b'} ',
    RS + b'\x0c}', RS + b',"x":"a\x01b"}', RS + b',"x":"\t"}', RS + b',"x":"\\x"}',
    RS + b',"x":"\\u00zz"}', RS + b',"x":tru}',
    b'{"old\\u002dstate":"a"}',  # an escaped key is still the key
    b'{"ev\\u0065nt":"VM.START","account":"a","id":"r",'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"old-state":null}', b'{"old-state":5}', b'{"jobId":{"a":[1,2]}}', b'{"subject":[]}',
    b'{"event":"ALERT.X"}', b'{"event":5,"subject":"s"}', b'{"event":null,"account":"a"}',
    b'{"event":"VM.START","event":"VM.STOP","account":"a","id":"r",'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',  # duplicate keys: the last one wins
    b'{"event":"VM.START","event":5,"account":"a","id":"r"}',
    b'{"event":5,"event":"VM.START","account":"a","id":"r",'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"event":"VM.START","account":"a","id":"r","zone":null,'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"event":"VM.START","account":"a","id":"r","zone":"",'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"event":"VM.START","account":"a","id":"","eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"event":"VM.START","account":"","id":"r","eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"user":"u","status":"Completed","event":"ACCOUNT.DELETE","entityuuid":"",'
    b'"eventDateTime":"2025-03-01 05:56:02 +0530"}',
    b'{"user":"u","status":null,"event":"VM.CREATE"}',
    b'[]', b'"x"', b'42', b'null', b'', b'{', b'}', b'{}',
]


@pytest.mark.parametrize("raw", CORNERS)
@pytest.mark.parametrize("now_ms", [None, NOW_MS])
def test_the_fast_path_answers_as_the_full_path_where_parsers_disagree(raw: bytes,
                                                                       now_ms: int | None
                                                                       ) -> None:
    assert_same(raw, now_ms)


@pytest.mark.parametrize("depth", [100, 994, 995, 996, 999, 1000, 1022, 1023, 1024, 1030,
                                   2000])
@pytest.mark.parametrize("wrap", ["array", "object"])
def test_deep_nesting_is_decided_as_the_full_path_decides(depth: int, wrap: str) -> None:
    inner = (b"[" * depth + b"]" * depth if wrap == "array"
             else b'{"a":' * depth + b"1" + b"}" * depth)
    assert_same(RS + b',"x":' + inner + b"}")


@pytest.mark.parametrize("length", [MAX_ID_CHARS, MAX_ID_CHARS + 1])
@pytest.mark.parametrize("key", ["id", "account", "zone", "entityuuid", "Domain",
                                 "ServiceOffering", "VirtualMachineTemplate", "DiskOffering"])
def test_long_identifiers_are_decided_as_the_full_path_decides(length: int, key: str) -> None:
    base = {"eventDateTime": "2025-03-01 05:56:02 +0530", "account": "a", "id": "r"}
    usage = {**base, "event": "VM.START", key: "k" * length}
    action = {**base, "user": "u", "status": "Completed", "entityuuid": "e",
              "ServiceOffering": "o", key: "k" * length}
    for event in ("VM.CREATE", "ACCOUNT.CREATE", "ACCOUNT.DELETE"):
        assert_same(orjson.dumps({**action, "event": event}))
    assert_same(orjson.dumps(usage))


def test_records_over_the_size_limit_are_rejected_before_either_path() -> None:
    raw = RS + b"}"
    fast, _ = both(raw, max_bytes=len(raw) - 1)
    assert isinstance(fast, Rejected)
    assert fast.reason == "too_large"


# ------------------------------------------------------------------------- whole traces


def simulated(days: int = 2) -> Iterator[bytes]:
    cfg = SimConfig(seed=5, accounts=40, until_ms=SimConfig().start_ms + days * DAY,
                    malformed=0.01)
    for emitted in stream(Cloud(cfg)):
        yield emitted.value


def test_a_simulated_cloud_decodes_the_same_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = FullPathCalls(monkeypatch)
    kinds: set[str] = set()
    n = fallbacks = 0
    for raw in simulated():
        assert_same(raw, NOW_MS)
        before = calls.count
        fast = assert_same(raw, None)
        fallbacks += calls.count - before
        kinds.add(fast.kind if isinstance(fast, Ignored) else type(fast).__name__)
        n += 1
    assert n > 3_000
    assert {"UsageEvent", "Enrichment", "AccountCreated", "Rejected", "resource_state",
            "async_job", "alert", "action"} <= kinds  # every outcome occurred
    # the fast path answered all records but the malformed ones (~1 %): the equality above
    # is not won by falling back
    assert 0 < fallbacks < 0.02 * n


@pytest.mark.parametrize("raw", [
    b'{"eventDateTime":"2025-03-01 05:56:02 +0530","old-state":"Allocated","resource":"Volume",'
    b'"id":"76efa1d0-8852-4706-9bbf-f6ba0f68b0ec","new-state":"Ready"}',
    b'{"jobId":"5afbb9c8","cmdInfo":{"userdata":"I2Nsb\\u003d\\u003d","ctxDetails":{"a":"b"}},'
    b'"user":"b71b27d2","account":"78be3c20","status":"IN_PROGRESS"}',
    b'{"eventDateTime":"2025-03-01 05:36:28 +0530","subject":"Low storage","event":"ALERT.X",'
    b'"body":"used \\u003e 80%"}',
    b'{"eventDateTime":"2025-03-01 05:56:02 +0530","zone":"z","resource":"Volume","id":"v",'
    b'"event":"VOLUME.CREATE","account":"a"}',
    b'{"eventDateTime":"2025-03-01 05:56:01 +0530","DiskOffering":"d","entityuuid":"v",'
    b'"description":"created","event":"VOLUME.CREATE","user":"u","account":"a",'
    b'"entity":"Volume","status":"Created"}',
])
def test_well_formed_records_take_the_fast_path(raw: bytes,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = FullPathCalls(monkeypatch)
    assert not isinstance(decode(raw), Rejected)
    assert calls.count == 0


BENCH_TRACE = Path.home() / ".cache" / "metering" / "bench" / "trace-s1-a3000-d30.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not BENCH_TRACE.exists(), reason="no cached bench trace (make bench)")
def test_the_bench_trace_decodes_the_same_both_ways() -> None:
    """Every record of ``make bench``'s replay trace (~1 M records, ~1 min)."""
    with BENCH_TRACE.open("rb") as fh:
        for line in itertools.islice(fh, None):
            raw = line.rstrip(b"\r\n")
            for now_ms in (None, NOW_MS):
                assert_same(raw, now_ms)
