"""The usage interval's one builder and its one JSON codec (the ``usage`` topic's message)."""

from __future__ import annotations

import orjson
import pytest

from metering.events import Source
from metering.intervals import (
    FIELDS,
    IntervalDecodeError,
    UsageInterval,
    build_row,
    decode_interval,
    encode_interval,
    make_interval,
)
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
