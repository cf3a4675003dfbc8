"""Decoding and classifying CloudStack event-bus record values (contract sections 1 and 2).

:func:`decode` is total: for any bytes it returns a :mod:`metering.events` value and never
raises. Classification looks at which keys the JSON object has, in the contract's order,
never at the ``event`` name alone (action and usage events share names such as ``VM.START``).
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

from metering.events import (
    MAX_ID_CHARS,
    AccountCreated,
    AccountDeleted,
    Category,
    Decoded,
    Enrichment,
    Ignored,
    Rejected,
    RejectReason,
    UsageEvent,
)
from metering.eventtime import iso, parse_event_time
from metering.usage_types import EXPLICITLY_IGNORED, TRANSITIONS

DEFAULT_MAX_RECORD_BYTES: Final = 1_000_000
"""Records larger than this (bytes) are rejected as ``too_large`` without being parsed
(the producer's max request size, :data:`metering.rejects.PRODUCER_MAX_REQUEST_BYTES`)."""

DEFAULT_MAX_CLOCK_SKEW_MS: Final = 300_000
"""How far (ms) an event time may lie ahead of the wall clock (contract rule 4b)."""

_IGNORED_RESOURCE_STATE: Final = Ignored(Category.RESOURCE_STATE, "resource_state")
_IGNORED_ASYNC_JOB: Final = Ignored(Category.ASYNC_JOB, "async_job")
_IGNORED_ALERT: Final = Ignored(Category.ALERT, "alert")
_IGNORED_UNKNOWN: Final = Ignored(Category.UNKNOWN, "unknown")
_IGNORED_ACTION: Final = Ignored(Category.ACTION, "action")
_IGNORED_ACTION_FAILED: Final = Ignored(Category.ACTION, "action_failed")
_IGNORED_ACCOUNT_DELETE_PENDING: Final = Ignored(Category.ACTION, "account_delete_not_completed")

_ignored_usage_cache: dict[str, Ignored] = {}


def _ignored_usage(event_type: str) -> Ignored:
    hit = _ignored_usage_cache.get(event_type)
    if hit is None:
        known = event_type in EXPLICITLY_IGNORED or event_type.startswith("GLOBAL.LB.")
        hit = Ignored(Category.USAGE, "ignored_type" if known else "unknown_type")
        if len(_ignored_usage_cache) < 4096:
            _ignored_usage_cache[event_type] = hit
    return hit


def parse_json(raw: bytes) -> Any | Rejected:
    """Parse bytes as JSON, distinguishing invalid UTF-8 from invalid JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return Rejected(RejectReason.INVALID_UTF8, f"not valid UTF-8 at byte {uexc.start}")
        try:  # orjson is stricter than JSON (64-bit integers, nesting depth)
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return Rejected(RejectReason.INVALID_JSON, f"not valid JSON: {exc}"[:200])
        try:  # \ud800-style escapes decode to lone surrogates: text no encoder accepts
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, RecursionError):
            return Rejected(RejectReason.INVALID_JSON,
                            "not valid JSON: a \\u escape encodes a lone UTF-16 surrogate")
        return obj


def classify(obj: dict[str, Any]) -> Category:
    """Category of a JSON object by its keys, in the contract's order (section 1)."""
    if "old-state" in obj:
        return Category.RESOURCE_STATE
    if "jobId" in obj:
        return Category.ASYNC_JOB
    event = obj.get("event")
    if "subject" in obj or (type(event) is str and event.startswith("ALERT.")):
        return Category.ALERT
    if "user" in obj and "status" in obj:
        return Category.ACTION
    if "account" in obj and "event" in obj:
        return Category.USAGE
    return Category.UNKNOWN


def _time(obj: dict[str, Any], category: Category, latest_ms: int | None) -> int | Rejected:
    """The event time (UTC ms), or a rejection: missing, unparsable, before 1970-01-01Z, or
    after ``latest_ms`` (the wall clock plus the allowed skew; None: no upper bound)."""
    text = obj.get("eventDateTime")
    if text is None:
        return Rejected(RejectReason.MISSING_EVENT_TIME, "no eventDateTime", category)
    ms = parse_event_time(text)
    if ms is None:
        return Rejected(
            RejectReason.INVALID_EVENT_TIME,
            f"eventDateTime {str(text)[:40]!r} is not 'yyyy-MM-dd HH:mm:ss Z'",
            category,
        )
    if ms < 0:
        return Rejected(RejectReason.INVALID_EVENT_TIME,
                        f"eventDateTime {text!r} is before 1970-01-01T00:00:00Z", category)
    if latest_ms is not None and ms > latest_ms:
        return Rejected(RejectReason.INVALID_EVENT_TIME,
                        f"eventDateTime {text!r} is after {iso(latest_ms)} (the wall clock "
                        f"plus max_clock_skew)", category)
    return ms


def _too_long(obj: dict[str, Any], names: tuple[str, ...], what: str,
              category: Category) -> Rejected | None:
    """A ``field_too_long`` rejection if a string field in ``names`` exceeds the limit."""
    for name in names:
        value = obj.get(name)
        if type(value) is str and len(value) > MAX_ID_CHARS:
            return Rejected(RejectReason.FIELD_TOO_LONG,
                            f"{what} {name!r} has {len(value)} characters > {MAX_ID_CHARS}",
                            category)
    return None


_USAGE_IDS: Final = ("id", "account", "zone")
_ACTION_IDS: Final = ("entityuuid", "Domain", "ServiceOffering", "VirtualMachineTemplate",
                      "DiskOffering")


def _opt_str(value: Any) -> str | None:
    return value if type(value) is str and value else None


def _decode_usage(obj: dict[str, Any], latest_ms: int | None) -> Decoded:
    event = obj["event"]
    if type(event) is not str:
        return Rejected(RejectReason.INVALID_FIELD, "usage event 'event' is not a string",
                        Category.USAGE)
    ms = _time(obj, Category.USAGE, latest_ms)
    if type(ms) is not int:
        return ms  # type: ignore[return-value]  # a Rejected
    if event not in TRANSITIONS:
        return _ignored_usage(event)
    too_long = _too_long(obj, _USAGE_IDS, event, Category.USAGE)
    if too_long is not None:
        return too_long
    resource = obj.get("id")
    if type(resource) is not str or not resource:
        return Rejected(RejectReason.MISSING_RESOURCE_ID, f"{event} without 'id'", Category.USAGE)
    account = obj["account"]
    if type(account) is not str or not account:
        return Rejected(RejectReason.MISSING_ACCOUNT, f"{event} without 'account'", Category.USAGE)
    zone = obj.get("zone")
    if zone is not None and type(zone) is not str:
        return Rejected(RejectReason.INVALID_FIELD, f"{event} 'zone' is not a string",
                        Category.USAGE)
    return UsageEvent(event, account, resource, zone or None, ms)


def _decode_action(obj: dict[str, Any], latest_ms: int | None) -> Decoded:
    ms = _time(obj, Category.ACTION, latest_ms)
    if type(ms) is not int:
        return ms  # type: ignore[return-value]  # a Rejected
    event = obj.get("event")
    status = obj.get("status")
    if type(event) is not str or type(status) is not str:
        return Rejected(RejectReason.INVALID_FIELD, "action 'event'/'status' not strings",
                        Category.ACTION)
    description = obj.get("description")
    failed = type(description) is str and description.startswith("Error")
    if failed:
        return _IGNORED_ACTION_FAILED
    too_long = _too_long(obj, _ACTION_IDS, event, Category.ACTION)
    if too_long is not None:
        return too_long
    entity = _opt_str(obj.get("entityuuid"))
    if event == "ACCOUNT.DELETE":
        if status != "Completed":
            return _IGNORED_ACCOUNT_DELETE_PENDING
        if entity is None:
            return Rejected(RejectReason.MISSING_RESOURCE_ID,
                            "completed ACCOUNT.DELETE without 'entityuuid'", Category.ACTION)
        return AccountDeleted(entity, ms)
    if entity is None:
        return _IGNORED_ACTION
    if event == "ACCOUNT.CREATE":
        domain = _opt_str(obj.get("Domain"))
        return AccountCreated(entity, domain, ms) if domain else _IGNORED_ACTION
    offering = _opt_str(obj.get("ServiceOffering"))
    template = _opt_str(obj.get("VirtualMachineTemplate"))
    disk = _opt_str(obj.get("DiskOffering"))
    if offering is None and template is None and disk is None:
        return _IGNORED_ACTION
    return Enrichment(entity, ms, offering, template, disk)


def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_RECORD_BYTES, now_ms: int | None = None,
           max_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS) -> Decoded:
    """Decode and classify one record value. Total: never raises on any input.

    Args:
        raw: the Kafka record value (UTF-8 JSON written by CloudStack's Gson).
        max_bytes: larger values are rejected (``too_large``) without being parsed.
        now_ms: the wall clock (UTC ms) read by the caller at the edge: event times later
            than ``now_ms + max_skew_ms`` are rejected (``invalid_event_time``, contract rule
            4b). None: no upper bound (tests and recorded traces only). Event times before
            1970-01-01T00:00:00Z are always rejected.
        max_skew_ms: the allowed clock skew (ms), ``max_clock_skew``.
    """
    latest_ms = None if now_ms is None else now_ms + max_skew_ms
    if len(raw) > max_bytes:
        return Rejected(RejectReason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    obj = parse_json(raw)
    if type(obj) is not dict:
        if isinstance(obj, Rejected):
            return obj
        return Rejected(RejectReason.NOT_AN_OBJECT, f"JSON {type(obj).__name__}, not an object")
    category = classify(obj)
    if category is Category.USAGE:
        return _decode_usage(obj, latest_ms)
    if category is Category.ACTION:
        return _decode_action(obj, latest_ms)
    if category is Category.RESOURCE_STATE:
        return _IGNORED_RESOURCE_STATE
    if category is Category.ASYNC_JOB:
        return _IGNORED_ASYNC_JOB
    if category is Category.ALERT:
        return _IGNORED_ALERT
    return _IGNORED_UNKNOWN


BROADCAST: Final = "*"
"""Routing marker: the decoded value must reach every partition (account-wide events)."""


def routing_key(value: Decoded) -> str | None:
    """The entity a decoded value belongs to, :data:`BROADCAST`, or None (not meterable)."""
    if isinstance(value, UsageEvent):
        return value.resource_id
    if isinstance(value, Enrichment):
        return value.entity_id
    if isinstance(value, AccountDeleted | AccountCreated):
        return BROADCAST
    return None
