"""The usage interval's one builder and its one JSON codec (the ``usage`` topic's message)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.events import Source
from metering.intervals import (
    FIELDS,
    IntervalDecodeError,
    UsageInterval,
    build_row,
    decode_interval,
    decode_interval_full,
    encode_interval,
    encode_intervals,
    make_interval,
)
from metering.regions import label, qualified
from metering.usage_schema import INT32_MAX, INTERVAL_FIELDS, MAX_INSTANT_MS
from storage.archive import parse_interval
from tests.contract.test_schemas import engine_rows

GOLDEN_ROW = make_interval(
    usage_type=7, resource_id='tmpl-"é"', zone_id="zone-1", account_id="acct-ü",
    domain_id=None, offering_id=None, template_id=None, start=1_740_787_200_000,
    end=1_740_787_560_000, period_start=1_740_787_200_000, final=False,
    close_reason="period", source_topic="cs", source_partition=2, source_offset=41)
GOLDEN_BYTES = (
    b'{"interval_id":"adb8f60420d32409000001954f00b000","account_id":"acct-\xc3\xbc",'
    b'"domain_id":null,"zone_id":"zone-1","usage_type":7,"usage_type_name":"TEMPLATE",'
    b'"resource_id":"tmpl-\\"\xc3\xa9\\"","offering_id":null,"template_id":null,'
    b'"start":1740787200000,"end":1740787560000,"duration_ms":360000,'
    b'"raw_usage_hours":0.1,"period_start":1740787200000,"final":false,'
    b'"close_reason":"period","source_topic":"cs","source_partition":2,"source_offset":41,'
    b'"schema_version":2,"region":null}'
)
"""What the worker sent for this row before the codec existed (``orjson.dumps(row.to_dict())``),
plus ``region`` (schema version 2)."""


def test_encoding_is_byte_for_byte_the_earlier_one() -> None:
    assert encode_interval(GOLDEN_ROW) == GOLDEN_BYTES
    rows = engine_rows()
    assert [encode_interval(r) for r in rows] == [orjson.dumps(r.to_dict()) for r in rows]


def test_the_batch_encoding_is_byte_for_byte_the_row_encoding() -> None:
    """``encode_intervals`` (the worker's output path) writes exactly what ``encode_interval``
    writes: the golden row, the engine's rows, the same rows labelled with a region."""
    assert encode_intervals([GOLDEN_ROW]) == [GOLDEN_BYTES]
    assert encode_intervals([]) == []
    rows = list(engine_rows())
    labelled = [label(r._replace(account_id=qualified("eu-1", r.account_id),
                                 resource_id=qualified("eu-1", r.resource_id)))
                for r in rows[:200]]
    for batch in (rows, labelled):
        assert encode_intervals(batch) == [encode_interval(r) for r in batch]


def _row(**change: object) -> UsageInterval:
    return GOLDEN_ROW._replace(**change)


def test_the_batch_encoding_matches_over_the_range_a_row_takes() -> None:
    """Every duration up to 2 hours to the millisecond (the hours in plain and exponent
    notation), then durations up to the whole instant range, the integer limits, and every
    Unicode character but the surrogates in a string field."""
    durations = [*range(0, 7_200_001, 7), *range(0, 400), 1 << 31, 10**12 + 1,
                 MAX_INSTANT_MS, 2**63 - 1]
    durations += [int(MAX_INSTANT_MS * (i / 9973) ** 3) for i in range(9974)]
    rows = [_row(duration_ms=d, raw_usage_hours=d / 3_600_000, end=d, start=0)
            for d in durations]
    rows += [_row(source_offset=2**63 - 1, source_partition=INT32_MAX, start=-(2**63)),
             _row(final=True, domain_id="", region="eu-1", usage_type=1)]
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    rows += [_row(resource_id="".join(chars[i:i + 512])) for i in range(0, len(chars), 512)]
    assert encode_intervals(rows) == [encode_interval(r) for r in rows]


def test_the_batch_encoding_falls_back_to_the_row_encoding() -> None:
    """A value msgspec does not encode (a ``str`` subclass) is encoded as before, and a row
    orjson cannot encode (a surrogate) raises as before."""

    class Text(str):
        pass

    rows = [GOLDEN_ROW, _row(account_id=Text("acct-ü"))]
    assert encode_intervals(rows) == [GOLDEN_BYTES, GOLDEN_BYTES]
    with pytest.raises(TypeError, match="surrogates not allowed"):
        encode_intervals([_row(resource_id="\ud800")])


def test_decode_inverts_encode_on_the_engines_rows() -> None:
    assert decode_interval(GOLDEN_BYTES) == GOLDEN_ROW
    for row in engine_rows():
        back = decode_interval(encode_interval(row))
        assert back == row
        assert type(back) is UsageInterval
        # the engine's usage_type is a UsageType (an IntEnum): JSON makes it a plain int
        assert [type(v) for v in back] == [
            int if name == "usage_type" else type(v) for name, v in zip(FIELDS, row, strict=True)]


def test_decode_accepts_integer_hours_and_ignores_unknown_keys() -> None:
    obj = orjson.loads(GOLDEN_BYTES) | {"raw_usage_hours": 0, "start": 1_740_787_560_000,
                                         "duration_ms": 0, "extra": [1]}
    row = decode_interval(orjson.dumps(obj))
    assert row.raw_usage_hours == 0.0
    assert type(row.raw_usage_hours) is float
    assert row.duration_ms == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"start": "yesterday"}, "field 'start' missing or of the wrong type"),
    ({"final": 1}, "field 'final' missing or of the wrong type"),
    ({"usage_type": 7.0}, "field 'usage_type' missing or of the wrong type"),
    ({"account_id": None}, "field 'account_id' missing or of the wrong type"),
    ({"domain_id": 5}, "field 'domain_id' missing or of the wrong type"),
    ({"end": -1}, "field 'end' out of range: -1 (UTC epoch ms from 0 (1970-01-01) to "
                  f"{MAX_INSTANT_MS} (9999-12-31))"),
    ({"period_start": MAX_INSTANT_MS + 1}, "field 'period_start' out of range"),
    ({"source_partition": INT32_MAX + 1},
     f"field 'source_partition' out of range: {INT32_MAX + 1} (0 to {INT32_MAX})"),
    ({"duration_ms": 1}, "end before start, or duration_ms != end - start"),
    ({"end": 1_740_787_199_999, "duration_ms": -1},
     "end before start, or duration_ms != end - start"),
])
def test_decode_says_what_is_wrong(change: dict[str, object], message: str) -> None:
    raw = orjson.dumps(orjson.loads(GOLDEN_BYTES) | change)
    with pytest.raises(IntervalDecodeError) as caught:
        decode_interval(raw)
    assert str(caught.value).startswith(message)
    assert parse_interval(raw) == str(caught.value)  # the archive's reject reason


@pytest.mark.parametrize("name", FIELDS)
def test_decode_names_a_missing_field(name: str) -> None:
    """A missing nullable field reads as null (as the archive always did); any other is an
    error naming it."""
    obj = orjson.loads(GOLDEN_BYTES) | {"domain_id": "d", "zone_id": "z", "offering_id": "o",
                                         "template_id": "t"}
    del obj[name]
    if name in NULLABLE:
        assert getattr(decode_interval(orjson.dumps(obj)), name) is None
        return
    with pytest.raises(IntervalDecodeError, match=f"field '{name}' missing"):
        decode_interval(orjson.dumps(obj))


NULLABLE = {f.name for f in INTERVAL_FIELDS if f.nullable}


def test_decode_rejects_what_is_not_a_json_object() -> None:
    with pytest.raises(IntervalDecodeError, match=r"^not valid JSON: "):
        decode_interval(b"{oops")
    with pytest.raises(IntervalDecodeError, match=r"^not a JSON object$"):
        decode_interval(b"[1]")
    assert issubclass(IntervalDecodeError, ValueError)


def test_the_builder_gives_the_engines_rows() -> None:
    """``build_row`` from a row's parts gives that very row (same values, same types), for
    every row the engine (which builds with ``tuple.__new__`` today) emitted."""
    for row in engine_rows():
        built = build_row(
            row.interval_id, row.account_id, row.domain_id, row.zone_id, row.usage_type,
            row.resource_id, row.offering_id, row.template_id, row.start, row.end,
            row.period_start, row.final, row.close_reason,
            Source(row.source_topic, row.source_partition, row.source_offset))
        assert built == row
        assert type(built) is UsageInterval
        assert [type(v) for v in built] == [type(v) for v in row]


def test_make_interval_is_the_builder_with_the_id_computed() -> None:
    empty = make_interval(
        usage_type=1, resource_id="vm-1", zone_id=None, account_id="a", domain_id="d",
        offering_id="so", template_id="t", start=5, end=5, period_start=0, final=True,
        close_reason="VM.STOP", source_topic="cs", source_partition=0, source_offset=9)
    assert empty == UsageInterval(
        interval_id=empty.interval_id, account_id="a", domain_id="d", zone_id=None,
        usage_type=1, usage_type_name="RUNNING_VM", resource_id="vm-1", offering_id="so",
        template_id="t", start=5, end=5, duration_ms=0, raw_usage_hours=0.0, period_start=0,
        final=True, close_reason="VM.STOP", source_topic="cs", source_partition=0,
        source_offset=9)
    assert empty.interval_id.endswith(f"{5:016x}")
    with pytest.raises(ValueError, match="negative interval"):
        make_interval(
            usage_type=1, resource_id="vm-1", zone_id=None, account_id="a", domain_id=None,
            offering_id=None, template_id=None, start=6, end=5, period_start=0, final=True,
            close_reason="VM.STOP", source_topic="cs", source_partition=0, source_offset=9)


# --- the decoder's fast path gives the full path's answer ----------------------------------

_JSON_VALUES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0, 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1e300]),
    st.text(max_size=8), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
"""Values a field may hold on a usage topic anyone can write to."""
_ODD_TOKENS = (b"1e400", b"-1e400", b"1.0", b"[[[[]]]]", b'"\\ud800"', b'"\\u00e9"', b"true",
               b"18446744073709551616", b"9223372036854775808", b"-9223372036854775809")
"""JSON texts orjson and msgspec could read differently: out-of-range numbers, a lone
surrogate, escapes, nesting, integers around the 64-bit limits."""


def _outcome(decode: Any, raw: bytes) -> tuple[str, Any]:
    try:
        row = decode(raw)
    except IntervalDecodeError as exc:
        return "refused", str(exc)
    return "row", (tuple(row), tuple(type(v) for v in row))


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(engine_rows()[:50]), changes=st.dictionaries(
    st.sampled_from([*FIELDS, "extra"]), _JSON_VALUES, max_size=1),
    drop=st.sets(st.sampled_from(FIELDS), max_size=1))
def test_the_fast_decoder_answers_as_the_full_one(
        base: UsageInterval, changes: dict[str, Any], drop: set[str]) -> None:
    obj = {k: v for k, v in {**base.to_dict(), **changes}.items() if k not in drop}
    raw = json.dumps(obj).encode()  # any integer size; ASCII, escapes for the rest
    assert _outcome(decode_interval, raw) == _outcome(decode_interval_full, raw)


@pytest.mark.parametrize("token", _ODD_TOKENS)
@pytest.mark.parametrize("field", ["source_offset", "start", "usage_type", "raw_usage_hours",
                                   "final", "domain_id", "account_id", "unknown"])
def test_odd_json_decodes_as_the_full_path_decodes(field: str, token: bytes) -> None:
    obj = engine_rows()[0].to_dict()  # ASCII: the fast path reads it
    obj[field] = "PLACEHOLDER"
    raw = orjson.dumps(obj).replace(b'"PLACEHOLDER"', token)
    assert raw.isascii()  # so the fast path reads it unless msgspec refuses
    assert _outcome(decode_interval, raw) == _outcome(decode_interval_full, raw)


def test_duplicate_keys_decode_as_the_full_path_decodes() -> None:
    raw = orjson.dumps({**engine_rows()[0].to_dict(), "account_id": "a"})
    twice = raw[:-1] + b',"account_id":"b","source_offset":7}'
    assert _outcome(decode_interval, twice) == _outcome(decode_interval_full, twice)
    assert decode_interval(twice).account_id == "b"
