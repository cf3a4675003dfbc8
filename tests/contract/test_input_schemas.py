"""The input schemas in ``schemas/input/`` describe what the classifier accepts per category.

Checks: each schema is a valid draft 2020-12 schema; every golden payload and every simulated
record validates against the schema of the category :func:`metering.decode.classify` gives
it, and against no other; the ``eventDateTime`` pattern accepts exactly what
:func:`metering.eventtime.parse_event_time` accepts; defective records fail.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from metering.decode import classify, decode
from metering.events import Category, Rejected
from metering.eventtime import format_event_time, parse_event_time
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream
from metering.usage_types import TRANSITIONS

ROOT = Path(__file__).resolve().parents[2]
INPUT = ROOT / "schemas" / "input"
GOLDEN = ROOT / "tests" / "data" / "golden"
EXPECTED: dict[str, dict[str, Any]] = json.loads((GOLDEN / "expected.json").read_text())

FILES = {
    Category.USAGE: "usage.schema.json",
    Category.ACTION: "action.schema.json",
    Category.RESOURCE_STATE: "resource-state.schema.json",
    Category.ASYNC_JOB: "async-job.schema.json",
    Category.ALERT: "alert.schema.json",
}
SCHEMAS = {cat: json.loads((INPUT / name).read_text()) for cat, name in FILES.items()}
VALIDATORS = {cat: Draft202012Validator(schema) for cat, schema in SCHEMAS.items()}
TIMED = (Category.USAGE, Category.ACTION, Category.RESOURCE_STATE, Category.ALERT)


def _errors(cat: Category, obj: Any) -> list[str]:
    return [e.message for e in VALIDATORS[cat].iter_errors(obj)]


def _matching(obj: Any) -> set[Category]:
    return {cat for cat, v in VALIDATORS.items() if v.is_valid(obj)}


def _golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / name).read_text())


# ---------------------------------------------------------------------- the schemas themselves


def test_every_input_category_has_a_schema_file_and_nothing_else() -> None:
    assert sorted(p.name for p in INPUT.glob("*.schema.json")) == sorted(FILES.values())
    assert set(FILES) == set(Category) - {Category.UNKNOWN, Category.INVALID}


@pytest.mark.parametrize("cat", list(FILES), ids=str)
def test_schema_is_a_valid_draft_2020_12_schema(cat: Category) -> None:
    schema = SCHEMAS[cat]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/schemas/input/{FILES[cat]}")
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is True  # CloudStack adds keys
    assert schema["title"]
    assert "cloudstack-events-and-usage.md §2." in schema["description"]
    assert f'"{cat.value}"' in schema["title"]


def test_event_time_definition_is_shared_and_required_where_the_contract_needs_it() -> None:
    defs = [SCHEMAS[cat]["$defs"]["eventDateTime"] for cat in TIMED]
    assert all(d == defs[0] for d in defs)
    assert "eventDateTime" in SCHEMAS[Category.USAGE]["required"]
    assert "eventDateTime" in SCHEMAS[Category.ACTION]["required"]
    assert "eventDateTime" not in SCHEMAS[Category.ASYNC_JOB]["properties"]  # no timestamp


def test_usage_schema_metered_types_are_the_transition_table() -> None:
    metered = SCHEMAS[Category.USAGE]["if"]["properties"]["event"]["enum"]
    assert metered == sorted(TRANSITIONS)


# ---------------------------------------------------------------------- eventDateTime pattern

EVENT_TIME = Draft202012Validator(SCHEMAS[Category.USAGE]["$defs"]["eventDateTime"])


def _time_samples() -> list[str]:
    rng = random.Random(20)
    samples = [
        "2025-03-14 10:22:31 +0000", "2025-03-14 10:22:31 +0530", "2025-03-14 10:22:31 -0700",
        "2024-02-29 00:00:00 +0000", "2000-02-29 23:59:59 +2359", "1900-02-29 00:00:00 +0000",
        "2100-02-29 00:00:00 +0000", "2025-02-29 00:00:00 +0000", "2025-02-28 00:00:00 +0000",
        "2025-02-30 12:00:00 +0000", "2025-04-31 08:15:00 +0530", "2025-04-30 08:15:00 +0530",
        "2025-12-31 23:59:59 -2359", "2025-13-01 00:00:00 +0000", "2025-00-10 00:00:00 +0000",
        "2025-03-00 00:00:00 +0000", "2025-03-14 24:00:00 +0000", "2025-03-14 10:61:00 +0000",
        "2025-03-14 10:00:60 +0000", "2025-03-14 10:00:00 +2500", "2025-03-14 10:00:00 +0060",
        "0000-01-01 00:00:00 +0000", "0001-01-01 00:00:00 +0000", "9999-12-31 23:59:59 +0000",
        "0400-02-29 12:00:00 +0000", "0100-02-29 12:00:00 +0000", "0004-02-29 12:00:00 +0000",
        "14/03/2025 10:00:00", "2025-03-14T10:22:31 +0000", "2025-03-14 10:22:31 0000",
        "2025-03-14 10:22:31 +00:00", "2025-03-14 10:22:31Z", "2025-03-14 10:22:31 +0000 ",
        " 2025-03-14 10:22:31 +0000", "2025-03-14 10:22:31", "", "2025-3-14 10:22:31 +00000",
    ]
    for _ in range(400):  # real instants in real offsets
        ms = rng.randrange(-2_000_000_000_000, 4_000_000_000_000) // 1000 * 1000
        samples.append(format_event_time(ms, rng.randrange(-14 * 60, 14 * 60 + 1)))
    for text in list(samples[:40]):  # single-character damage
        for _ in range(20):
            if text:
                i = rng.randrange(len(text))
                samples.append(text[:i] + rng.choice("0123456789 -:+x") + text[i + 1:])
    return samples


def test_event_time_pattern_accepts_exactly_what_the_parser_accepts() -> None:
    samples = _time_samples()
    disagree = [t for t in samples if EVENT_TIME.is_valid(t) != (parse_event_time(t) is not None)]
    assert disagree == []
    accepted = sum(parse_event_time(t) is not None for t in samples)
    assert 400 < accepted < len(samples) - 200  # both sides are well represented


@pytest.mark.parametrize("value", [None, 1741947751, ["2025-03-14 10:22:31 +0000"]])
def test_event_time_must_be_a_string(value: Any) -> None:
    assert not EVENT_TIME.is_valid(value)
    assert parse_event_time(value) is None


# ---------------------------------------------------------------------- golden payloads


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_payload_validates_against_its_category_only(name: str) -> None:
    expected = EXPECTED[name]
    obj = _golden(name)
    cat = Category(expected["category"])
    assert classify(obj) is cat
    if expected["outcome"] == "rejected":  # none today; they need not match any schema
        pytest.skip("rejected payloads are not well formed")
    assert _errors(cat, obj) == []
    assert _matching(obj) == {cat}


def test_every_golden_payload_is_listed_in_expected() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.json") if p.name != "expected.json") == sorted(
        EXPECTED)
    assert {Category(e["category"]) for e in EXPECTED.values()} == set(FILES)


# ---------------------------------------------------------------------- simulated records


@cache
def _simulated() -> list[tuple[bytes, str | None]]:
    cfg = SimConfig(seed=11, accounts=30, until_ms=SimConfig().start_ms + 2 * DAY,
                    tz_offsets=(330, 0, -420), malformed=0.01)
    return [(e.value, e.reject_reason) for e in stream(Cloud(cfg))]


def test_simulated_records_validate_against_the_schema_of_their_category() -> None:
    seen: Counter[Category] = Counter()
    for value, reason in _simulated():
        if reason is not None:
            continue
        obj = orjson.loads(value)
        cat = classify(obj)
        seen[cat] += 1
        assert not isinstance(decode(value), Rejected), value
        if cat is Category.UNKNOWN:  # the Contrail variant {event, status, details}
            assert _matching(obj) == set(), value
            continue
        assert _errors(cat, obj) == [], value
        assert _matching(obj) == {cat}, value
    assert sum(seen.values()) > 2000
    assert set(seen) >= set(FILES)


def test_simulated_malformed_records_fail_their_category_schema() -> None:
    checked: Counter[str] = Counter()
    for value, reason in _simulated():
        if reason not in ("missing_event_time", "invalid_event_time"):
            continue
        obj = orjson.loads(value)
        cat = classify(obj)
        assert cat in (Category.USAGE, Category.ACTION)
        errors = list(VALIDATORS[cat].iter_errors(obj))
        assert errors, value
        assert all("eventDateTime" in e.absolute_path or "'eventDateTime'" in e.message
                   for e in errors), value
        checked[reason] += 1
    assert set(checked) == {"missing_event_time", "invalid_event_time"}


# ---------------------------------------------------------------------- negative examples


def _without(obj: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != key}


def _with(obj: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out.update(changes)
    return out


_VM_CREATE = _golden("usage_vm_create.json")
_VM_START_DONE = _golden("action_vm_start_completed.json")
_STATE_VM = _golden("state_vm_post_running.json")
_JOB = _golden("asyncjob_complete.json")
_ALERT = _golden("alert_uservm.json")
_ACCOUNT_DELETE = _with(_golden("action_account_create.json"), event="ACCOUNT.DELETE",
                        description="Successfully completed deleting account")

NEGATIVE = {
    "usage-missing-eventDateTime": (Category.USAGE, _without(_VM_CREATE, "eventDateTime")),
    "usage-impossible-date": (Category.USAGE,
                              _with(_VM_CREATE, eventDateTime="2025-02-30 12:00:00 +0000")),
    "usage-iso-time": (Category.USAGE, _with(_VM_CREATE, eventDateTime="2025-03-14T10:22:31Z")),
    "usage-metered-without-id": (Category.USAGE, _without(_VM_CREATE, "id")),
    "usage-metered-empty-account": (Category.USAGE, _with(_VM_CREATE, account="")),
    "usage-event-not-string": (Category.USAGE, _with(_VM_CREATE, event=5)),
    "usage-zone-not-string": (Category.USAGE, _with(_VM_CREATE, zone=7)),
    "usage-with-subject-is-an-alert": (Category.USAGE, _with(_VM_CREATE, subject="x")),
    "usage-with-user-and-status-is-an-action": (Category.USAGE,
                                                _with(_VM_CREATE, user="u", status="Completed")),
    "action-missing-eventDateTime": (Category.ACTION, _without(_VM_START_DONE, "eventDateTime")),
    "action-bad-offset": (Category.ACTION,
                          _with(_VM_START_DONE, eventDateTime="2025-03-14 10:00:00 +2500")),
    "action-status-not-string": (Category.ACTION, _with(_VM_START_DONE, status=3)),
    "action-missing-event": (Category.ACTION, _without(_VM_START_DONE, "event")),
    "action-account-delete-without-entityuuid": (Category.ACTION,
                                                 _without(_ACCOUNT_DELETE, "entityuuid")),
    "action-with-jobId-is-an-async-job": (Category.ACTION, _with(_VM_START_DONE, jobId="j")),
    "state-missing-new-state": (Category.RESOURCE_STATE, _without(_STATE_VM, "new-state")),
    "state-vm-without-status": (Category.RESOURCE_STATE, _without(_STATE_VM, "status")),
    "state-bad-status": (Category.RESOURCE_STATE, _with(_STATE_VM, status="Completed")),
    "job-missing-command": (Category.ASYNC_JOB, _without(_JOB, "command")),
    "job-result-not-an-object": (Category.ASYNC_JOB, _with(_JOB, jobResult="done")),
    "job-unknown-status": (Category.ASYNC_JOB, _with(_JOB, status="DONE")),
    "job-with-old-state-is-a-state-event": (Category.ASYNC_JOB, _with(_JOB, **{"old-state": "A"})),
    "alert-missing-subject": (Category.ALERT, _without(_ALERT, "subject")),
    "alert-event-not-an-alert-type": (Category.ALERT, _with(_ALERT, event="VM.START")),
    "alert-missing-eventDateTime": (Category.ALERT, _without(_ALERT, "eventDateTime")),
}


@pytest.mark.parametrize(("cat", "obj"), list(NEGATIVE.values()), ids=list(NEGATIVE))
def test_defective_record_fails_its_schema(cat: Category, obj: dict[str, Any]) -> None:
    assert _errors(cat, obj) != []


def test_extra_keys_are_allowed() -> None:
    for cat, name in [(Category.USAGE, "usage_vm_create.json"),
                      (Category.ACTION, "action_user_login.json"),
                      (Category.RESOURCE_STATE, "state_volume.json"),
                      (Category.ASYNC_JOB, "asyncjob_submit.json"),
                      (Category.ALERT, "alert_management.json")]:
        obj = _with(_golden(name), newCloudStackKey="x", nested={"a": [1]})
        assert _errors(cat, obj) == [], cat


def test_negative_examples_the_decoder_rejects_are_rejected() -> None:
    """Where the contract rejects (section 2), the schema of the category fails too."""
    for name in ("usage-missing-eventDateTime", "usage-impossible-date",
                 "usage-metered-without-id", "usage-metered-empty-account",
                 "usage-event-not-string", "usage-zone-not-string",
                 "action-missing-eventDateTime", "action-bad-offset",
                 "action-status-not-string", "action-account-delete-without-entityuuid"):
        cat, obj = NEGATIVE[name]
        assert classify(obj) is cat, name
        assert isinstance(decode(orjson.dumps(obj)), Rejected), name
