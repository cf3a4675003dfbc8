"""The one definition of the usage interval's fields (contract section 5), and its schemas.

:data:`INTERVAL_FIELDS` lists every field of a usage interval in column order, with its
logical type (:class:`Kind`), nullability, documentation (units and time zones included) and
the extra JSON Schema constraints of its values. Everything else is derived from it or
checked against it:

- :class:`metering.intervals.UsageInterval` (the row type): its field order is checked
  against this list when :mod:`metering.intervals` is imported;
- :func:`json_schema` / :func:`avro_schema`: the JSON Schema (draft 2020-12) and the Avro
  schema as plain dicts, and :func:`json_schema_text` / :func:`avro_schema_text` the exact
  text of ``schemas/usage-interval.schema.json`` and ``schemas/usage-interval.avsc``
  (rewritten by ``python -m tools.gen_schemas``; a contract test fails when they differ);
- the JSON codec of the ``usage`` topic (:func:`metering.intervals.encode_interval`,
  :func:`metering.intervals.decode_interval`): the Python types and value ranges it accepts;
- the Arrow/Parquet schema, built at the storage edge (``storage.dataset.ARROW_SCHEMA``,
  from :func:`storage.dataset.arrow_schema`), since the core imports no pyarrow.

Pure: no I/O, no clock. Instants are UTC epoch milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from metering.usage_types import NAMES

SCHEMA_VERSION: Final = 2
"""``schema_version`` of every row written: 2 since contract revision 2 (the interval id
includes the account, so ids differ from those version 1 gave the same input; version 2 also
adds the nullable ``region``, the last column). Rows of version 1 (no ``region``) still read:
the JSON codec and the Parquet readers take a missing ``region`` as null."""

REGION_PATTERN: Final = "^[A-Za-z0-9._-]{1,64}$"
"""What a region name may be (settings and ``replay --region`` check it): 1 to 64 ASCII
letters, digits, ``.``, ``_`` or ``-``; so it never holds the separators of
``input_topics`` (``=``, ``,``) nor the ``|`` that qualifies ids in a regional engine
(:mod:`metering.regions`)."""

MIN_INSTANT_MS: Final = 0
"""1970-01-01T00:00:00Z: the earliest instant of a row (contract rule 4b; schema minimum)."""
MAX_INSTANT_MS: Final = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the latest instant every reader (Python, pandas, DuckDB, Avro
``timestamp-millis``) can turn into a date."""
INT32_MAX: Final = 2**31 - 1
INT64_MAX: Final = 2**63 - 1


class Kind(Enum):
    """Logical type of a field: how each format spells it.

    ============  ==============  ==========================  =========================
    kind          JSON (usage     Avro                        Arrow / Parquet
                  topic)
    ============  ==============  ==========================  =========================
    STRING        string          string                      string
    INT32         integer         int                         int32
    INT64         integer         long                        int64
    FLOAT64       number          double                      float64
    BOOL          boolean         boolean                     bool
    TIMESTAMP_MS  integer (UTC    long, ``timestamp-millis``  timestamp[ms, tz=UTC]
                  epoch ms)
    ============  ==============  ==========================  =========================
    """

    STRING = "string"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT64 = "float64"
    BOOL = "bool"
    TIMESTAMP_MS = "timestamp_ms"


_JSON_TYPE: Final = {
    Kind.STRING: "string", Kind.INT32: "integer", Kind.INT64: "integer",
    Kind.FLOAT64: "number", Kind.BOOL: "boolean", Kind.TIMESTAMP_MS: "integer",
}
_AVRO_TYPE: Final[dict[Kind, Any]] = {
    Kind.STRING: "string", Kind.INT32: "int", Kind.INT64: "long", Kind.FLOAT64: "double",
    Kind.BOOL: "boolean", Kind.TIMESTAMP_MS: {"type": "long", "logicalType": "timestamp-millis"},
}
_MAXIMUM: Final = {Kind.INT32: INT32_MAX, Kind.INT64: INT64_MAX,
                   Kind.TIMESTAMP_MS: MAX_INSTANT_MS}
"""Largest value of an integer kind (the JSON Schema's ``maximum``)."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of the usage interval.

    ``json`` holds JSON Schema keywords that constrain the value beyond its kind
    (``pattern``, ``minLength``, ``enum``, ``const``, ``minimum``); integer kinds without
    ``enum`` or ``const`` also get the kind's ``maximum``. ``doc`` states units and time zones.
    """

    name: str
    kind: Kind
    doc: str
    nullable: bool = False
    json: tuple[tuple[str, Any], ...] = ()


def _f(name: str, kind: Kind, doc: str, nullable: bool = False, **json: Any) -> FieldSpec:
    return FieldSpec(name, kind, doc, nullable, tuple(json.items()))


_S, _I32, _I64, _F64, _B, _TS = (Kind.STRING, Kind.INT32, Kind.INT64, Kind.FLOAT64, Kind.BOOL,
                                 Kind.TIMESTAMP_MS)

INTERVAL_FIELDS: Final[tuple[FieldSpec, ...]] = (
    _f("interval_id", _S,
       "Deterministic id (contract rule 9): 16 hex digits of the 64-bit blake2b of "
       '"v2|<usage type>|<length of account>|<account>|<resource key>" ("|empty" appended '
       "for a zero-length interval) then 16 hex digits of the start (ms). It includes the "
       "account since schema version 2, so ids differ from version 1 ones. Consumers "
       "deduplicate by it.",
       pattern="^[0-9a-f]{32}$"),
    _f("account_id", _S, "Owning account UUID.", minLength=1),
    _f("domain_id", _S,
       "Domain UUID from the account's ACCOUNT.CREATE event; null when unknown.",
       nullable=True, minLength=1),
    _f("zone_id", _S,
       "Zone UUID from the usage event's `zone`; null when the event has none "
       "(e.g. VPN users).",
       nullable=True, minLength=1),
    _f("usage_type", _I32, "CloudStack usage type id.", enum=list(NAMES)),
    _f("usage_type_name", _S, "Name of usage_type.", enum=list(NAMES.values())),
    _f("resource_id", _S, "Resource UUID (the usage event's `id`).", minLength=1),
    _f("offering_id", _S,
       "Service offering (VMs) or disk offering (volumes) UUID from action events; null "
       "when unknown.",
       nullable=True, minLength=1),
    _f("template_id", _S, "Template UUID of a VM from action events; null when unknown.",
       nullable=True, minLength=1),
    _f("start", _TS, "Interval start (inclusive), UTC epoch milliseconds.", minimum=0),
    _f("end", _TS, "Interval end (exclusive), UTC epoch milliseconds.", minimum=0),
    _f("duration_ms", _I64, "end - start, milliseconds.", minimum=0),
    _f("raw_usage_hours", _F64, "duration_ms / 3600000 (hours).", minimum=0),
    _f("period_start", _TS,
       "Start of the aggregation period (hour or day, in the configured time zone) holding "
       "the interval, UTC epoch milliseconds.",
       minimum=0),
    _f("final", _B,
       "True when an event closed the resource; false when cut at a period boundary or the "
       "replay horizon."),
    _f("close_reason", _S,
       "The closing event type (e.g. VM.STOP), or period, account_delete, until.",
       minLength=1),
    _f("source_topic", _S,
       "Topic (or replay file) of the record whose processing emitted the interval."),
    _f("source_partition", _I32, "Partition of that record (lineage).", minimum=0),
    _f("source_offset", _I64,
       "Offset of that record (lineage; replay of a plain file: its line index).",
       minimum=0),
    _f("schema_version", _I32,
       f"{SCHEMA_VERSION} since contract revision 2 (interval_id includes the account; "
       "region added)",
       const=SCHEMA_VERSION),
    _f("region", _S,
       "Region of the input source: the name configured for the input topic (worker "
       "`input_topics`) or the replay file (`replay --input FILE --region NAME`); null when "
       "the source has none. A label, not a rule: usage of one account in two regions is two "
       "sets of intervals with distinct interval_ids (summed per account by `metering "
       "report`). Absent from version 1 rows (read as null).",
       nullable=True, pattern=REGION_PATTERN),
)
"""Every field of a usage interval, in column order (the output contract, section 5)."""

FIELD_NAMES: Final = tuple(f.name for f in INTERVAL_FIELDS)

JSON_SCHEMA_ID: Final = (
    "https://github.com/cloudstack-metering/metering/schemas/usage-interval.schema.json")
_JSON_DESCRIPTION: Final = (
    "One usage interval as published on the Kafka `usage` topic (JSON value, key = "
    "account_id) and stored in Parquet. Half-open [start, end), UTC, integer milliseconds, "
    "never crossing an aggregation-period boundary. Invariants the schema cannot express: "
    "duration_ms == end - start; raw_usage_hours == duration_ms / 3600000; period_start <= "
    "start <= end <= the next period boundary.")
AVRO_NAMESPACE: Final = "org.apache.cloudstack.metering"
_AVRO_DOC: Final = ("One usage interval, [start, end) in UTC (see "
                    "usage-interval.schema.json).")


def _json_property(spec: FieldSpec) -> dict[str, Any]:
    prop: dict[str, Any] = {}
    extra = dict(spec.json)
    if "const" not in extra:  # a const names its one value (and so its type)
        base = _JSON_TYPE[spec.kind]
        prop["type"] = [base, "null"] if spec.nullable else base
    prop.update(extra)
    if spec.kind in _MAXIMUM and "enum" not in extra and "const" not in extra:
        prop["maximum"] = _MAXIMUM[spec.kind]
    prop["description"] = spec.doc
    return prop


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one usage-topic message (a fresh dict)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": JSON_SCHEMA_ID,
        "title": "Usage interval",
        "description": _JSON_DESCRIPTION,
        "type": "object",
        "additionalProperties": False,
        "required": list(FIELD_NAMES),
        "properties": {f.name: _json_property(f) for f in INTERVAL_FIELDS},
    }


def _avro_field(spec: FieldSpec) -> dict[str, Any]:
    base = _AVRO_TYPE[spec.kind]
    if spec.nullable:
        return {"name": spec.name, "type": ["null", base], "doc": spec.doc, "default": None}
    return {"name": spec.name, "type": base, "doc": spec.doc}


def avro_schema() -> dict[str, Any]:
    """The Avro record schema of one usage interval (a fresh dict; nullable fields are
    ``["null", T]`` unions with default null; instants are ``long`` ``timestamp-millis``)."""
    return {
        "type": "record",
        "name": "UsageInterval",
        "namespace": AVRO_NAMESPACE,
        "doc": _AVRO_DOC,
        "fields": [_avro_field(f) for f in INTERVAL_FIELDS],
    }


def _text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def json_schema_text() -> str:
    """Exact text of ``schemas/usage-interval.schema.json``."""
    return _text(json_schema())


def avro_schema_text() -> str:
    """Exact text of ``schemas/usage-interval.avsc``."""
    return _text(avro_schema())


SCHEMA_FILES: Final = {
    "usage-interval.schema.json": json_schema_text,
    "usage-interval.avsc": avro_schema_text,
}
"""File name in ``schemas/`` -> the function that returns its text."""
