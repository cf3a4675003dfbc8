"""The code follows the schemas in ``schemas/``: JSON Schema, Avro and Parquet agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from metering.decode import decode
from metering.events import Source
from metering.intervals import FIELDS
from metering.meter import Meter, MeterPolicy
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream
from storage.dataset import ARROW_SCHEMA

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


def _intervals() -> list[dict[str, Any]]:
    cfg = SimConfig(seed=3, accounts=15, until_ms=SimConfig().start_ms + 2 * DAY)
    meter = Meter(MeterPolicy(lateness_ms=0))
    rows = []
    for e in stream(Cloud(cfg)):
        rows += meter.process(decode(e.value), Source("cs", e.position % 3, e.position))
    rows += meter.finish(cfg.until_ms)
    return [r.to_dict() for r in rows]


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
    """Schema version 2: the id hashes (usage type, account, resource key) and the start."""
    from metering.intervals import SCHEMA_VERSION, interval_id, resource_key

    row = json.loads(path.read_text())
    assert row["schema_version"] == SCHEMA_VERSION == 2
    key = resource_key(row["usage_type"], row["resource_id"], row["zone_id"])
    assert row["interval_id"] == interval_id(
        row["usage_type"], row["account_id"], key, row["start"], row["duration_ms"] == 0)
