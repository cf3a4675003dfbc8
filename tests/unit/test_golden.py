"""Golden payloads: the example records of ``cloudstack-events-and-usage.md`` §2.6.

``tests/data/golden/*.json`` hold the example values verbatim (one record per file, plus a
final newline); ``expected.json`` gives, per file, the category, the outcome (``usage``,
``enrichment``, ``account_created`` or ``ignored`` with its kind) and the decoded fields,
written from the contract.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from metering.decode import classify, decode
from metering.engine import Engine, Policy
from metering.events import (
    AccountCreated,
    Category,
    Enrichment,
    Ignored,
    Source,
    UsageEvent,
)
from metering.intervals import resource_key
from tests.refinterp import reference_usage

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
EXPECTED: dict[str, dict[str, Any]] = json.loads((GOLDEN / "expected.json").read_text())
VM = "3c1e2a4b-7d6f-4b8e-9a0c-1e2d3f4a5b44"
ACCOUNT = "6b4b0c3e-4a39-4b0e-9f3e-2a9c1f1d6a11"


def value_of(name: str) -> bytes:
    """The record value: the file's bytes without the final newline."""
    raw = (GOLDEN / name).read_bytes()
    assert raw.endswith(b"\n")
    assert raw.count(b"\n") == 1
    return raw[:-1]


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_every_golden_file_has_an_expectation() -> None:
    files = {p.name for p in GOLDEN.glob("*.json")} - {"expected.json"}
    assert files == set(EXPECTED)
    assert len(files) >= 30
    assert {e["category"] for e in EXPECTED.values()} == {c.value for c in Category} - {
        "unknown",
        "invalid",
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_payload(name: str) -> None:
    want = EXPECTED[name]
    raw = value_of(name)
    assert classify(json.loads(raw)).value == want["category"]
    value = decode(raw)
    assert value.category.value == want["category"]
    outcome = want["outcome"]
    if outcome == "usage":
        assert isinstance(value, UsageEvent), value
        assert (value.event_type, value.resource_id, value.account_id, value.zone_id) == (
            want["event_type"],
            want["resource_id"],
            want["account_id"],
            want["zone_id"],
        )
        assert value.time_ms == ms(want["time"])
    elif outcome == "enrichment":
        assert isinstance(value, Enrichment), value
        assert (
            value.entity_id,
            value.service_offering_id,
            value.template_id,
            value.disk_offering_id,
        ) == (
            want["entity_id"],
            want["service_offering_id"],
            want["template_id"],
            want["disk_offering_id"],
        )
        assert value.time_ms == ms(want["time"])
    elif outcome == "account_created":
        assert isinstance(value, AccountCreated), value
        assert (value.account_id, value.domain_id) == (want["account_id"], want["domain_id"])
        assert value.time_ms == ms(want["time"])
    else:
        assert outcome == "ignored"
        assert isinstance(value, Ignored), value
        assert value.kind == want["kind"]


def test_golden_usage_story_meters_what_a_billing_engineer_expects() -> None:
    # all golden records in event-time order (as one management server would publish them)
    names = sorted(EXPECTED, key=lambda n: (json.loads(value_of(n)).get("eventDateTime", ""), n))
    values = [value_of(n) for n in names]
    until = ms("2025-03-17T00:00:00Z")
    meter = Engine(Policy(lateness_ms=None))
    rows = []
    for i, raw in enumerate(values):
        rows += meter.process(decode(raw), Source("cs", 0, i))
    rows += meter.finish(until).rows
    got: dict[tuple[str, int, str], int] = {}
    for r in rows:
        key = (r.account_id, r.usage_type, resource_key(r.usage_type, r.resource_id, r.zone_id))
        got[key] = got.get(key, 0) + r.duration_ms
    s = 1000
    # VM.START 10:23:05 .. VM.STOP 18:00:12
    assert got[(ACCOUNT, 1, VM)] == (7 * 3600 + 37 * 60 + 7) * s
    # VM.CREATE 10:22:31 .. VM.DESTROY next day 09:41:57 (split by VM.UPGRADE)
    assert got[(ACCOUNT, 2, VM)] == (23 * 3600 + 19 * 60 + 26) * s
    # NETWORK.OFFERING.ASSIGN 10:23:04 .. VM.DESTROY 09:41:57
    assert got[(ACCOUNT, 13, VM)] == (23 * 3600 + 18 * 60 + 53) * s
    # NET.IPASSIGN 03-14 10:20:48 .. NET.IPRELEASE 03-16 12:00:00
    assert (
        got[(ACCOUNT, 3, "f6a7b8c9-d0e1-4f2a-8b3c-4d5e6f7a8b99")]
        == ((2 * 24 + 1) * 3600 + 39 * 60 + 12) * s
    )
    # the template is metered per zone
    tpl = resource_key(
        7, "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a66", "a5d5e3c1-9b2f-4e77-8a1e-0c3d6f9e4b33"
    )
    assert tpl == "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a66@a5d5e3c1-9b2f-4e77-8a1e-0c3d6f9e4b33"
    assert got[(ACCOUNT, 7, tpl)] == until - ms("2025-03-14T09:58:02Z")
    # the VPN user (no zone) is metered too, with a null zone
    assert {r.zone_id for r in rows if r.usage_type == 14} == {None}
    # golden ids (schema version 2: the account is hashed in, contract rule 9 of revision 2;
    # so they differ from version 1's "v1|usage type|key" ids of the same rows)
    running = sorted((r.start, r.interval_id) for r in rows
                     if r.resource_id == VM and r.usage_type == 1)
    assert running[0] == (ms("2025-03-14T10:23:05Z"), "89191dd52ea3bdf200000195942dcf28")
    assert running[-1] == (ms("2025-03-14T18:00:00Z"), "89191dd52ea3bdf20000019595d02100")
    assert {r.schema_version for r in rows} == {2}
    # and the whole story agrees with the reference interpreter
    assert {k: v for k, v in got.items() if v} == reference_usage(values, until)
    # enrichment from the Created VM.CREATE action event, no domain (no ACCOUNT.CREATE of it)
    vm_rows = [r for r in rows if r.resource_id == VM and r.usage_type in (1, 2)]
    assert {(r.offering_id, r.template_id, r.domain_id) for r in vm_rows} == {
        ("c7e8f9a0-1b2c-4d3e-8f4a-5b6c7d8e9f55", "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a66", None)
    }
