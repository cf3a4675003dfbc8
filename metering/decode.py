"""Decoding and classifying CloudStack event-bus record values (contract sections 1 and 2).

:func:`decode` is total: for any bytes it returns a :mod:`metering.events` value and never
raises. Classification looks at which keys the JSON object has, in the contract's order,
never at the ``event`` name alone (action and usage events share names such as ``VM.START``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any, Final

import msgspec
import orjson
from msgspec import UNSET, Raw, UnsetType

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


# ------------------------------------------------------------------------- the fast path
#
# Most records are resource-state, async-job and alert records, and most of the rest are
# well formed action and usage events. For those, msgspec reads the few keys decoding looks
# at straight from the bytes into a typed struct (validating the whole text as JSON but
# building no dict and no string for the other keys). The fast path answers only where the
# full path's answer is certain; for anything else (bytes that are not ASCII, a value that
# is not a string, any rejection) it takes the full path, :func:`decode_full`.
# tests/unit/test_decode_fast.py proves the two agree.

_FAST_MAX_BYTES: Final = 2000
"""Longest record (bytes) the fast path reads. JSON nests at most ``len / 2`` levels, so a
record this short is within orjson's nesting limit (1024): msgspec (whose limit is Python's
recursion limit) never accepts a nesting orjson rejects."""


_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]
"""An identifier the fast path accepts: a string of at most :data:`MAX_ID_CHARS` characters
(code points, as ``len``); a longer one fails the typed decode, and the full path rejects it
(``field_too_long``) or ignores the record, as its category says."""


class _Keys(msgspec.Struct, gc=False):
    """The keys :func:`decode` reads. A value that is not a JSON string (or an identifier
    longer than :data:`MAX_ID_CHARS`) fails the typed decode (the full path then decides);
    ``Raw`` fields only record presence."""

    old_state: Raw | UnsetType = msgspec.field(name="old-state", default=UNSET)
    jobId: Raw | UnsetType = UNSET
    subject: Raw | UnsetType = UNSET
    user: Raw | UnsetType = UNSET
    event: str | UnsetType = UNSET
    status: str | UnsetType = UNSET
    account: _Id | UnsetType = UNSET
    eventDateTime: str | UnsetType = UNSET
    id: _Id | UnsetType = UNSET
    zone: _Id | UnsetType = UNSET
    description: str | UnsetType = UNSET
    entityuuid: _Id | UnsetType = UNSET
    Domain: _Id | UnsetType = UNSET
    ServiceOffering: _Id | UnsetType = UNSET
    VirtualMachineTemplate: _Id | UnsetType = UNSET
    DiskOffering: _Id | UnsetType = UNSET


_read_keys: Final = msgspec.json.Decoder(_Keys).decode


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

    The answer is always :func:`decode_full`'s; the fast path (above) gives it where it can.
    """
    return decode_batch((raw,), max_bytes, now_ms, max_skew_ms)[0]


def decode_batch(raws: Iterable[bytes], max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 now_ms: int | None = None,
                 max_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS) -> list[Decoded]:
    """:func:`decode` of each record value, in order (one call for many records: the per-
    record work is one loop iteration, no call). Arguments as for :func:`decode`."""
    latest_ms = None if now_ms is None else now_ms + max_skew_ms
    fast_max = min(max_bytes, _FAST_MAX_BYTES)
    read_keys = _read_keys
    out: list[Decoded] = []
    append = out.append
    for raw in raws:
        if len(raw) > fast_max or not raw.isascii():  # msgspec skips the strings it does
            append(_decode_slow(raw, max_bytes, latest_ms))  # not read without checking
            continue  # their UTF-8; orjson checks
        try:
            keys = read_keys(raw)
        except Exception:  # not an object, a value of another type, too deep, ...: unsure
            append(decode_full(raw, latest_ms))
            continue
        if keys.old_state is not UNSET:  # classify(), in its order
            append(_IGNORED_RESOURCE_STATE)
        elif keys.jobId is not UNSET:
            append(_IGNORED_ASYNC_JOB)
        elif keys.subject is not UNSET or (keys.event is not UNSET
                                           and keys.event.startswith("ALERT.")):
            append(_IGNORED_ALERT)
        elif keys.user is not UNSET and keys.status is not UNSET:
            append(_fast_action(keys, raw, latest_ms))
        elif keys.account is not UNSET and keys.event is not UNSET:
            append(_fast_usage(keys, raw, latest_ms))
        else:
            append(_IGNORED_UNKNOWN)
    return out


def _decode_slow(raw: bytes, max_bytes: int, latest_ms: int | None) -> Decoded:
    """A record the fast path does not read: too large, long, or not ASCII."""
    if len(raw) > max_bytes:
        return Rejected(RejectReason.TOO_LARGE, f"{len(raw)} bytes > limit {max_bytes}")
    return decode_full(raw, latest_ms)


_new: Final = tuple.__new__
"""Builds an event (a NamedTuple) from all its fields without the generated ``__new__``'s
Python frame."""


def _fast_usage(keys: _Keys, raw: bytes, latest_ms: int | None) -> Decoded:
    """:func:`_decode_usage` where it accepts or ignores the event; else the full path."""
    event, text = keys.event, keys.eventDateTime
    ms = None if text is UNSET else parse_event_time(text)
    if ms is None or ms < 0 or (latest_ms is not None and ms > latest_ms) or event is UNSET:
        return decode_full(raw, latest_ms)
    if event not in TRANSITIONS:
        return _ignored_usage(event)
    resource, account, zone = keys.id, keys.account, keys.zone  # not too long (_Id)
    if not resource or not account:
        return decode_full(raw, latest_ms)
    return _new(UsageEvent, (event, account, resource, zone or None, ms))


def _fast_action(keys: _Keys, raw: bytes, latest_ms: int | None) -> Decoded:
    """:func:`_decode_action` where it accepts or ignores the event; else the full path."""
    event, status, text = keys.event, keys.status, keys.eventDateTime
    ms = None if text is UNSET else parse_event_time(text)
    if (ms is None or ms < 0 or (latest_ms is not None and ms > latest_ms) or event is UNSET
            or status is UNSET):
        return decode_full(raw, latest_ms)
    description = keys.description
    if description is not UNSET and description.startswith("Error"):
        return _IGNORED_ACTION_FAILED
    entity = keys.entityuuid  # these identifiers are not too long (_Id)
    if event == "ACCOUNT.DELETE":
        if status != "Completed":
            return _IGNORED_ACCOUNT_DELETE_PENDING
        if not entity:
            return decode_full(raw, latest_ms)
        return _new(AccountDeleted, (entity, ms))
    if not entity:
        return _IGNORED_ACTION
    if event == "ACCOUNT.CREATE":
        domain = keys.Domain
        return _new(AccountCreated, (entity, domain, ms)) if domain else _IGNORED_ACTION
    offering, template, disk = keys.ServiceOffering, keys.VirtualMachineTemplate, keys.DiskOffering
    if not (offering or template or disk):
        return _IGNORED_ACTION
    return _new(Enrichment, (entity, ms, offering or None, template or None, disk or None))


def decode_full(raw: bytes, latest_ms: int | None) -> Decoded:
    """:func:`decode` without its fast path: parse the whole value, then classify it.

    ``raw`` is at most ``max_bytes`` long; ``latest_ms`` is the latest event time accepted
    (UTC ms; None: no upper bound). Kept apart so that tests can compare the two paths.
    """
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
