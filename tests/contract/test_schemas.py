"""The code follows the schemas in ``schemas/``: JSON Schema, Avro and Parquet agree.

The four descriptions of the usage interval (the definition
``metering.usage_schema.INTERVAL_FIELDS`` with the row type ``UsageInterval``, the JSON Schema
file, the Avro file, the Arrow schema of the Parquet files) must not drift: the files are the
generator's output, the Arrow schema is the Parquet layout pinned below, and rows the engine
produced pass a real Avro implementation (fastavro), a JSON Schema validator and Arrow.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

import fastavro
import orjson
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from metering.decode import decode
from metering.engine import Engine, Policy
from metering.events import Source
from metering.intervals import FIELDS, UsageInterval, encode_interval
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream
from metering.usage_schema import (
    FIELD_NAMES,
    INTERVAL_FIELDS,
    SCHEMA_FILES,
    Kind,
    avro_schema,
    json_schema,
)
from storage.dataset import ARROW_SCHEMA, arrow_schema, to_table
from tools.gen_schemas import main as gen_schemas

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
INTERVAL = json.loads((SCHEMAS / "usage-interval.schema.json").read_text())
AVRO = json.loads((SCHEMAS / "usage-interval.avsc").read_text())
VALIDATOR = Draft202012Validator(INTERVAL)


def test_the_interval_schema_is_a_valid_schema() -> None:
    Draft202012Validator.check_schema(INTERVAL)
    assert tuple(INTERVAL["required"]) == FIELDS
    assert tuple(INTERVAL["properties"]) == FIELDS


@pytest.mark.parametrize("path", sorted((SCHEMAS / "examples").glob("*.json")),
                         ids=lambda p: p.name)
def test_examples_validate_or_fail_as_named(path: Path) -> None:
    errors = list(VALIDATOR.iter_errors(json.loads(path.read_text())))
    if path.name.startswith("valid-"):
        assert errors == []
    else:
        assert len(errors) == 1, [e.message for e in errors]  # exactly one defect


@cache
def engine_rows() -> tuple[UsageInterval, ...]:
    """The rows the engine emits for a simulated cloud (15 accounts, 2 days, seed 3)."""
    cfg = SimConfig(seed=3, accounts=15, until_ms=SimConfig().start_ms + 2 * DAY)
    meter = Engine(Policy(lateness_ms=0))
    rows = []
    for e in stream(Cloud(cfg)):
        rows += meter.process(decode(e.value), Source("cs", e.position % 3, e.position))
    rows += meter.finish(cfg.until_ms).rows
    return tuple(rows)


def _intervals() -> list[dict[str, Any]]:
    """The engine's rows as the usage topic carries them (decoded JSON objects)."""
    return [orjson.loads(encode_interval(r)) for r in engine_rows()]


def test_every_emitted_interval_validates() -> None:
    rows = _intervals()
    assert len(rows) > 1000
    assert {r["close_reason"] for r in rows} >= {"period", "VM.STOP", "account_delete"}
    for row in rows:
        errors = [e.message for e in VALIDATOR.iter_errors(row)]
        assert not errors, (row, errors)
        assert row["duration_ms"] == row["end"] - row["start"]


_JSON_TO_ARROW = {
    "string": (pa.string(),),
    "integer": (pa.int64(), pa.int32(), pa.int16(), pa.int8(), pa.timestamp("ms", tz="UTC")),
    "number": (pa.float64(),),
    "boolean": (pa.bool_(),),
}


def test_parquet_columns_and_types_match_the_schema() -> None:
    assert tuple(ARROW_SCHEMA.names) == FIELDS
    for field in ARROW_SCHEMA:
        prop = INTERVAL["properties"][field.name]
        kinds = prop.get("type", "integer")  # schema_version: const 1
        kinds = kinds if isinstance(kinds, list) else [kinds]
        assert field.nullable == ("null" in kinds), field.name
        base = next(k for k in kinds if k != "null")
        assert field.type in _JSON_TO_ARROW[base], (field.name, field.type)
        if field.name in ("start", "end", "period_start"):
            assert field.type == pa.timestamp("ms", tz="UTC")


def test_avro_schema_matches_the_json_schema() -> None:
    names = tuple(f["name"] for f in AVRO["fields"])
    assert names == FIELDS
    for f in AVRO["fields"]:
        kinds = INTERVAL["properties"][f["name"]].get("type", "integer")
        json_nullable = isinstance(kinds, list) and "null" in kinds
        avro_nullable = isinstance(f["type"], list) and "null" in f["type"]
        assert json_nullable == avro_nullable, f["name"]
        if f["name"] in ("start", "end", "period_start"):
            assert f["type"] == {"type": "long", "logicalType": "timestamp-millis"}


@pytest.mark.parametrize("path", sorted((SCHEMAS / "examples").glob("valid-*.json")),
                         ids=lambda p: p.name)
def test_example_ids_are_the_ids_the_code_computes(path: Path) -> None:
    """Schema version 2: the id hashes (usage type, account, resource key) and the start;
    with a region, the account and resource qualified by it (``metering.regions``)."""
    from metering.intervals import SCHEMA_VERSION, interval_id, resource_key
    from metering.regions import qualified

    row = json.loads(path.read_text())
    assert row["schema_version"] == SCHEMA_VERSION == 2
    account, resource = row["account_id"], row["resource_id"]
    if row["region"] is not None:
        account, resource = qualified(row["region"], account), qualified(row["region"], resource)
    key = resource_key(row["usage_type"], resource, row["zone_id"])
    assert row["interval_id"] == interval_id(
        row["usage_type"], account, key, row["start"], row["duration_ms"] == 0)


# -- one definition, four descriptions --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_files_are_the_generated_ones(name: str) -> None:
    """Edit metering/usage_schema.py, then run ``python -m tools.gen_schemas``."""
    assert (SCHEMAS / name).read_text(encoding="utf-8") == SCHEMA_FILES[name](), (
        f"schemas/{name} drifted from metering.usage_schema: run python -m tools.gen_schemas")


def test_the_generator_finds_and_rewrites_a_drifted_file(tmp_path: Path) -> None:
    for name, text in SCHEMA_FILES.items():
        (tmp_path / name).write_text(text(), encoding="utf-8")
    assert gen_schemas(["--check", "--dir", str(tmp_path)]) == 0
    avsc = tmp_path / "usage-interval.avsc"
    avsc.write_text(avsc.read_text().replace('"long"', '"int"', 1), encoding="utf-8")
    assert gen_schemas(["--check", "--dir", str(tmp_path)]) == 1
    assert gen_schemas(["--dir", str(tmp_path)]) == 0
    assert avsc.read_text(encoding="utf-8") == SCHEMA_FILES["usage-interval.avsc"]()
    assert gen_schemas(["--check", "--dir", str(tmp_path)]) == 0


def test_the_row_type_follows_the_definition() -> None:
    assert FIELDS == FIELD_NAMES == tuple(f.name for f in INTERVAL_FIELDS)
    python: dict[Kind, type] = {Kind.STRING: str, Kind.INT32: int, Kind.INT64: int,
                                Kind.TIMESTAMP_MS: int, Kind.FLOAT64: float, Kind.BOOL: bool}
    hints = get_type_hints(UsageInterval)
    for spec in INTERVAL_FIELDS:
        wanted = python[spec.kind] | None if spec.nullable else python[spec.kind]
        assert hints[spec.name] == wanted, spec.name
        assert spec.doc, spec.name

_TS = pa.timestamp("ms", tz="UTC")
PARQUET_LAYOUT = pa.schema([
    pa.field("interval_id", pa.string(), nullable=False),
    pa.field("account_id", pa.string(), nullable=False),
    pa.field("domain_id", pa.string()),
    pa.field("zone_id", pa.string()),
    pa.field("usage_type", pa.int32(), nullable=False),
    pa.field("usage_type_name", pa.string(), nullable=False),
    pa.field("resource_id", pa.string(), nullable=False),
    pa.field("offering_id", pa.string()),
    pa.field("template_id", pa.string()),
    pa.field("start", _TS, nullable=False),
    pa.field("end", _TS, nullable=False),
    pa.field("duration_ms", pa.int64(), nullable=False),
    pa.field("raw_usage_hours", pa.float64(), nullable=False),
    pa.field("period_start", _TS, nullable=False),
    pa.field("final", pa.bool_(), nullable=False),
    pa.field("close_reason", pa.string(), nullable=False),
    pa.field("source_topic", pa.string(), nullable=False),
    pa.field("source_partition", pa.int32(), nullable=False),
    pa.field("source_offset", pa.int64(), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
    pa.field("region", pa.string()),  # schema version 2 (files without it read as null)
])
"""The Parquet files' schema as written before the definition existed (archives on disk have
it, without ``region``), plus ``region``: changing it is a format change, never a side
effect."""


def test_the_arrow_schema_is_the_definitions_and_the_parquet_layout() -> None:
    assert ARROW_SCHEMA.equals(arrow_schema(), check_metadata=True)
    assert ARROW_SCHEMA.equals(PARQUET_LAYOUT, check_metadata=True)


def test_the_avro_schema_matches_the_definition() -> None:
    avro = {f["name"]: f for f in avro_schema()["fields"]}
    assert tuple(avro) == FIELD_NAMES
    base = {Kind.STRING: "string", Kind.INT32: "int", Kind.INT64: "long",
            Kind.FLOAT64: "double", Kind.BOOL: "boolean",
            Kind.TIMESTAMP_MS: {"type": "long", "logicalType": "timestamp-millis"}}
    for spec in INTERVAL_FIELDS:
        want = ["null", base[spec.kind]] if spec.nullable else base[spec.kind]
        assert avro[spec.name]["type"] == want, spec.name
        assert avro[spec.name]["doc"] == spec.doc
        assert ("default" in avro[spec.name]) == spec.nullable  # null default: optional
    assert json_schema()["properties"]["schema_version"]["const"] == UsageInterval._field_defaults[
        "schema_version"]


# -- the engine's rows through real implementations of the three formats ----------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INSTANTS = tuple(s.name for s in INTERVAL_FIELDS if s.kind is Kind.TIMESTAMP_MS)


def _from_avro(record: dict[str, Any]) -> UsageInterval:
    """A record fastavro read back -> row (it returns timestamp-millis as aware datetimes)."""
    for name in _INSTANTS:
        assert record[name].tzinfo is not None
        record[name] = (record[name] - _EPOCH) // timedelta(milliseconds=1)
    return UsageInterval(**record)


def test_engine_rows_round_trip_through_fastavro_with_the_committed_schema() -> None:
    rows = engine_rows()
    assert len(rows) > 1000
    assert {r.close_reason for r in rows} >= {"period", "VM.STOP", "account_delete"}
    assert any(r.zone_id is None for r in rows)
    assert any(r.offering_id for r in rows)
    schema = fastavro.parse_schema(json.loads((SCHEMAS / "usage-interval.avsc").read_text()))
    records = [orjson.loads(encode_interval(r)) for r in rows]
    assert fastavro.validation.validate_many(records, schema, raise_errors=True)
    buf = io.BytesIO()
    fastavro.writer(buf, schema, records, codec="deflate")
    buf.seek(0)
    back = [_from_avro(rec) for rec in fastavro.reader(buf)]
    assert back == list(rows)
    one = io.BytesIO()  # schemaless (the form a schema registry's Kafka messages carry)
    fastavro.schemaless_writer(one, schema, records[0])
    one.seek(0)
    assert _from_avro(fastavro.schemaless_reader(one, schema, None)) == rows[0]


def test_avro_rejects_what_the_schema_forbids() -> None:
    schema = fastavro.parse_schema(avro_schema())
    good = orjson.loads(encode_interval(engine_rows()[0]))
    for name, bad in [("account_id", None), ("usage_type", 2**31), ("start", "yesterday"),
                      ("final", 1), ("raw_usage_hours", "1.0")]:
        assert not fastavro.validation.validate(good | {name: bad}, schema,
                                                raise_errors=False), name
    missing = {k: v for k, v in good.items() if k != "interval_id"}
    assert not fastavro.validation.validate(missing, schema, raise_errors=False)


def test_engine_rows_make_an_arrow_table_with_the_generated_schema() -> None:
    rows = engine_rows()
    table = to_table(rows)
    table.validate(full=True)
    assert table.schema.equals(arrow_schema())
    assert table.num_rows == len(rows)
    for i, spec in enumerate(INTERVAL_FIELDS):
        column = table.column(spec.name)
        if spec.kind is Kind.TIMESTAMP_MS:
            column = column.cast(pa.int64())
        assert column.to_pylist() == [r[i] for r in rows], spec.name
