"""The metering contract, table row by table row and rule by rule, against the pure core.

Every test builds small CloudStack JSON payloads, decodes them with
:func:`metering.decode.decode` and folds them through :class:`metering.engine.Engine` as
``metering replay`` does (records at or after the horizon are not applied, then
:meth:`~metering.engine.Engine.finish`). The expected values are written from
``metering-contract.md``, not read from the core's tables.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pytest

from metering.decode import decode
from metering.engine import Engine, Policy
from metering.events import (
    AccountCreated,
    AccountDeleted,
    Category,
    Enrichment,
    Ignored,
    Rejected,
    RejectReason,
    Source,
    UsageEvent,
)
from metering.intervals import UsageInterval
from metering.periods import PeriodGrid
from metering.rejects import reject_record
from metering.usage_types import TRANSITIONS

UTC = dt.UTC
MIN = 60_000
HOUR = 3_600_000
T0 = int(dt.datetime(2025, 3, 14, 10, 0, tzinfo=UTC).timestamp() * 1000)
ACCT, OTHER = "acct-a", "acct-b"
Z1, Z2 = "zone-1", "zone-2"


def stamp(ms: int, offset_minutes: int = 0) -> str:
    """``yyyy-MM-dd HH:mm:ss Z`` as CloudStack writes it, in a fixed UTC offset."""
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    return dt.datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S %z")


def usage(
    event: str,
    rid: str | None = "res-1",
    t: int = T0,
    *,
    account: Any = ACCT,
    zone: Any = Z1,
    offset: int = 0,
    **extra: Any,
) -> bytes:
    """A usage-event value (Gson drops null keys: ``rid=None`` / ``zone=None`` omit them)."""
    d: dict[str, Any] = {
        "eventDateTime": stamp(t, offset),
        "resource": "com.cloud.X",
        "event": event,
        "account": account,
    }
    if rid is not None:
        d["id"] = rid
    if zone is not None:
        d["zone"] = zone
    d.update(extra)
    return json.dumps(d).encode()


def action(
    event: str,
    entity: str | None,
    t: int = T0,
    *,
    status: str = "Completed",
    description: str = "Successfully completed it",
    account: str = "root-acct",
    **extra: Any,
) -> bytes:
    """An action-event value."""
    d: dict[str, Any] = {
        "eventDateTime": stamp(t),
        "event": event,
        "status": status,
        "user": "user-1",
        "account": account,
        "description": description,
        "entity": "X",
    }
    if entity is not None:
        d["entityuuid"] = entity
    d.update(extra)
    return json.dumps(d).encode()


def delete_account(account: str, t: int, **kw: Any) -> bytes:
    return action("ACCOUNT.DELETE", account, t, **kw)


def run(
    records: list[bytes],
    until: int | None = None,
    period: str = "hour",
    tz: str = "UTC",
    sources: list[Source] | None = None,
) -> tuple[list[UsageInterval], Engine]:
    """Replay ``records`` (offsets 0, 1, ... on ``cs/0`` unless ``sources``) and finish."""
    meter = Engine(Policy(grid=PeriodGrid(period, tz), lateness_ms=None))  # type: ignore[arg-type]
    rows: list[UsageInterval] = []
    for i, raw in enumerate(records):
        value = decode(raw)
        src = sources[i] if sources else Source("cs", 0, i)
        if (
            until is not None
            and not isinstance(value, Ignored | Rejected)
            and value.time_ms >= until
        ):
            continue
        rows += meter.process(value, src)
    rows += meter.finish(until).rows
    return rows, meter


def spans(rows: list[UsageInterval], usage_type: int | None = None) -> list[tuple[Any, ...]]:
    """(usage_type, resource, zone, start, end, final, close_reason) sorted."""
    return sorted(
        (r.usage_type, r.resource_id, r.zone_id, r.start, r.end, r.final, r.close_reason)
        for r in rows
        if usage_type is None or r.usage_type == usage_type
    )


def total(rows: list[UsageInterval], usage_type: int | None = None, **match: Any) -> int:
    return sum(
        r.end - r.start
        for r in rows
        if (usage_type is None or r.usage_type == usage_type)
        and all(getattr(r, k) == v for k, v in match.items())
    )


# --------------------------------------------------------------------------- the table

# contract section 3: (id, name, opens, closes, splits, keyed by zone)
ROWS: list[tuple[int, str, list[str], list[str], list[str], bool]] = [
    (1, "RUNNING_VM", ["VM.START"], ["VM.STOP", "VM.DESTROY"], ["VM.DYNAMIC.SCALE"], False),
    (2, "ALLOCATED_VM", ["VM.CREATE"], ["VM.DESTROY"], ["VM.UPGRADE", "VM.DYNAMIC.SCALE"], False),
    (3, "IP_ADDRESS", ["NET.IPASSIGN"], ["NET.IPRELEASE"], [], False),
    (6, "VOLUME", ["VOLUME.CREATE"], ["VOLUME.DELETE"], ["VOLUME.RESIZE"], False),
    (7, "TEMPLATE", ["TEMPLATE.CREATE", "TEMPLATE.COPY"], ["TEMPLATE.DELETE"], [], True),
    (8, "ISO", ["ISO.CREATE", "ISO.COPY"], ["ISO.DELETE"], [], True),
    (9, "SNAPSHOT", ["SNAPSHOT.CREATE"], ["SNAPSHOT.DELETE"], [], False),
    (10, "SECURITY_GROUP", ["SG.ASSIGN"], ["SG.REMOVE"], [], False),
    (11, "LOAD_BALANCER_POLICY", ["LB.CREATE"], ["LB.DELETE"], [], False),
    (12, "PORT_FORWARDING_RULE", ["NET.RULEADD"], ["NET.RULEDELETE"], [], False),
    (
        13,
        "NETWORK_OFFERING",
        ["NETWORK.OFFERING.ASSIGN"],
        ["NETWORK.OFFERING.REMOVE", "VM.DESTROY"],
        [],
        False,
    ),
    (14, "VPN_USERS", ["VPN.USER.ADD"], ["VPN.USER.REMOVE"], [], False),
    (25, "VM_SNAPSHOT", ["VMSNAPSHOT.CREATE"], ["VMSNAPSHOT.DELETE"], [], False),
    (26, "VOLUME_SECONDARY", ["VOLUME.UPLOAD"], ["VOLUME.CREATE", "VOLUME.DELETE"], [], False),
    (
        27,
        "VM_SNAPSHOT_ON_PRIMARY",
        ["VMSNAPSHOT.ON_PRIMARY"],
        ["VMSNAPSHOT.OFF_PRIMARY"],
        [],
        False,
    ),
    (28, "BACKUP", ["BACKUP.OFFERING.ASSIGN"], ["BACKUP.OFFERING.BACKUPS.DEL"], [], False),
    (30, "NETWORK", ["NETWORK.CREATE"], ["NETWORK.DELETE"], ["NETWORK.UPDATE"], False),
    (31, "VPC", ["VPC.CREATE"], ["VPC.DELETE"], [], False),
]
ALL_EVENTS = sorted({e for row in ROWS for e in (*row[2], *row[3], *row[4])})


@pytest.mark.parametrize("row", ROWS, ids=[r[1] for r in ROWS])
def test_table_row_opens_and_closes(
    row: tuple[int, str, list[str], list[str], list[str], bool],
) -> None:
    type_id, name, opens, closes, _splits, zoned = row
    for opener in opens:
        for closer in closes:
            # open 10:00, close 11:30 (UTC): one piece per hour, the last one final
            rows, _ = run(
                [usage(opener, "r-1", T0), usage(closer, "r-1", T0 + 90 * MIN)], until=T0 + 5 * HOUR
            )
            mine = [r for r in rows if r.usage_type == type_id]
            assert spans(mine) == [
                (type_id, "r-1", Z1, T0, T0 + HOUR, False, "period"),
                (type_id, "r-1", Z1, T0 + HOUR, T0 + 90 * MIN, True, closer),
            ], (opener, closer)
            assert {r.usage_type_name for r in mine} == {name}
            assert {r.account_id for r in mine} == {ACCT}
            assert all(r.duration_ms == r.end - r.start for r in mine)
            assert all(type(r.start) is int and type(r.end) is int for r in mine)
            assert mine[-1].raw_usage_hours == pytest.approx(0.5)
            if zoned:
                assert {r.zone_id for r in mine} == {Z1}


@pytest.mark.parametrize("row", [r for r in ROWS if r[4]], ids=[r[1] for r in ROWS if r[4]])
def test_table_row_splits(row: tuple[int, str, list[str], list[str], list[str], bool]) -> None:
    type_id, _, opens, closes, splits, _ = row
    for splitter in splits:
        rows, _ = run(
            [
                usage(opens[0], "r-1", T0),
                usage(splitter, "r-1", T0 + 20 * MIN),
                usage(closes[0], "r-1", T0 + 40 * MIN),
            ],
            until=T0 + 5 * HOUR,
        )
        assert spans(rows, type_id) == [
            (type_id, "r-1", Z1, T0, T0 + 20 * MIN, True, splitter),
            (type_id, "r-1", Z1, T0 + 20 * MIN, T0 + 40 * MIN, True, closes[0]),
        ]
        # a split with nothing open opens
        rows, _ = run(
            [usage(splitter, "r-2", T0), usage(closes[0], "r-2", T0 + 10 * MIN)],
            until=T0 + 5 * HOUR,
        )
        assert spans(rows, type_id) == [(type_id, "r-2", Z1, T0, T0 + 10 * MIN, True, closes[0])]


@pytest.mark.parametrize("row", [r for r in ROWS if r[5]], ids=[r[1] for r in ROWS if r[5]])
def test_zone_keyed_rows_meter_each_zone_separately(
    row: tuple[int, str, list[str], list[str], list[str], bool],
) -> None:
    type_id, _, opens, closes, _, _ = row
    rows, _ = run(
        [
            usage(opens[0], "img", T0, zone=Z1),
            usage(opens[-1], "img", T0, zone=Z2),
            usage(opens[0], "img", T0 + MIN, zone=Z1),  # already open in zone 1
            usage(closes[0], "img", T0 + 30 * MIN, zone=Z1),
        ],
        until=T0 + 45 * MIN,
    )
    assert spans(rows, type_id) == [
        (type_id, "img", Z1, T0, T0 + 30 * MIN, True, closes[0]),
        (type_id, "img", Z2, T0, T0 + 45 * MIN, False, "until"),
    ]
    # one interval id per (type, resource, zone): the two zones never collide
    assert len({r.interval_id for r in rows}) == 2


@pytest.mark.parametrize("event", ALL_EVENTS)
def test_each_usage_event_alone_opens_exactly_its_rows(event: str) -> None:
    rows, _ = run([usage(event, "r-1", T0)], until=T0 + 10 * MIN)
    expected = {r[0] for r in ROWS if event in r[2] or event in r[4]}  # opens, or split opens
    assert {r.usage_type for r in rows if r.duration_ms > 0} == expected
    assert all(r.close_reason == "until" and not r.final for r in rows)


def test_the_core_meters_exactly_the_events_of_the_table() -> None:
    assert set(TRANSITIONS) == set(ALL_EVENTS)
    for event in ALL_EVENTS:
        assert isinstance(decode(usage(event)), UsageEvent), event


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(
    ("payload", "category"),
    [
        (
            {
                "old-state": "Running",
                "new-state": "Stopped",
                "id": "r",
                "event": "VM.STOP",
                "account": ACCT,
                "user": "u",
                "status": "postStateTransitionEvent",
            },
            Category.RESOURCE_STATE,
        ),
        (
            {
                "jobId": "j",
                "event": "VM.START",
                "account": ACCT,
                "user": "u",
                "status": "x",
                "subject": "s",
            },
            Category.ASYNC_JOB,
        ),
        (
            {"subject": "s", "body": "b", "event": "VM.START", "account": ACCT, "id": "r"},
            Category.ALERT,
        ),
        ({"event": "ALERT.USERVM", "account": ACCT, "id": "r"}, Category.ALERT),
        (
            {"event": "VM.START", "account": ACCT, "id": "r", "user": "u", "status": "Completed"},
            Category.ACTION,
        ),
        ({"event": "VM.START", "account": ACCT, "id": "r"}, Category.USAGE),
        ({"event": "VM.START", "id": "r", "user": "u"}, Category.UNKNOWN),
        ({"event": "VM.START", "id": "r", "status": "Completed"}, Category.UNKNOWN),
        ({"hello": "world"}, Category.UNKNOWN),
        ({}, Category.UNKNOWN),
    ],
    ids=[
        "old-state",
        "jobId",
        "subject",
        "ALERT.",
        "user+status",
        "account+event",
        "user",
        "status",
        "other",
        "empty",
    ],
)
def test_classification_by_keys_in_order(payload: dict[str, Any], category: Category) -> None:
    payload = {"eventDateTime": stamp(T0), "zone": Z1, **payload}
    value = decode(json.dumps(payload).encode())
    assert value.category is category
    assert isinstance(value, UsageEvent) is (category is Category.USAGE)


@pytest.mark.parametrize("status", ["Created", "Scheduled", "Started", "Completed"])
@pytest.mark.parametrize(
    "event",
    [
        "VM.START",
        "VM.CREATE",
        "VOLUME.CREATE",
        "NET.IPASSIGN",
        "TEMPLATE.CREATE",
        "VM.STOP",
        "VM.DESTROY",
    ],
)
def test_action_events_named_like_usage_events_never_meter(event: str, status: str) -> None:
    # every key of a usage event, plus user and status: an action event
    fake = usage(event, "r-1", T0, user="user-1", status=status, entityuuid="r-1")
    value = decode(fake)
    assert value.category is Category.ACTION
    assert not isinstance(value, UsageEvent)
    rows, _ = run([fake], until=T0 + HOUR)
    assert rows == []
    # and a real VM.START keeps running through an action VM.STOP/VM.DESTROY
    rows, _ = run([usage("VM.START", "r-1", T0), fake], until=T0 + HOUR)
    assert spans(rows, 1) == [(1, "r-1", Z1, T0, T0 + HOUR, False, "period")]


# --------------------------------------------------------------------------- rules 2-4


def test_repeated_start_does_not_double_count() -> None:
    rows, meter = run(
        [
            usage("VM.START", "vm", T0),
            usage("VM.START", "vm", T0 + 10 * MIN),
            usage("VM.START", "vm", T0 + 20 * MIN),
            usage("VM.STOP", "vm", T0 + 30 * MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + 30 * MIN, True, "VM.STOP")]
    assert meter.stats["reopen_ignored"] == 2


def test_repeated_stop_changes_nothing() -> None:
    rows, meter = run(
        [
            usage("VM.STOP", "vm", T0 - MIN),  # never opened
            usage("VM.START", "vm", T0),
            usage("VM.STOP", "vm", T0 + 10 * MIN),
            usage("VM.STOP", "vm", T0 + 20 * MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + 10 * MIN, True, "VM.STOP")]
    # rule 3 (revision 2): remembered for an earlier open that never comes; the START at T0
    # is after the first one, so it does not claim it
    assert meter.stats["orphan_close_remembered"] == 2
    assert meter.stats["orphan_close_applied"] == 0


def test_two_zero_length_closes_at_one_instant_emit_one_interval() -> None:
    """Split twice by a management server whose clock is behind: both closes end at the
    open's start; the second empty interval would repeat the first one's id (rule 9) with
    other content; it is counted."""
    rows, meter = run(
        [
            usage("VM.START", "vm", T0 + 5000),
            usage("VM.DYNAMIC.SCALE", "vm", T0),
            usage("VM.DYNAMIC.SCALE", "vm", T0 + 1000),
            usage("VM.STOP", "vm", T0 + MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows, 1) == [
        (1, "vm", Z1, T0 + 5000, T0 + 5000, True, "VM.DYNAMIC.SCALE"),
        (1, "vm", Z1, T0 + 5000, T0 + MIN, True, "VM.STOP"),
    ]
    assert len({r.interval_id for r in rows}) == len(rows)
    assert meter.stats["zero_length_repeat"] == 1


def test_reopening_in_the_second_of_the_close_is_stale() -> None:
    """Rule 2 (revision 2): CloudStack's times have one-second resolution, so a START in the
    very second of the STOP cannot be told from a retried publish: it is stale."""
    rows, meter = run(
        [
            usage("VM.START", "vm", T0 + 5000),
            usage("VM.STOP", "vm", T0 + 5000),
            usage("VM.START", "vm", T0 + 5000),
            usage("VM.STOP", "vm", T0 + 5000),
            usage("VM.START", "vm", T0 + 6000),
            usage("VM.STOP", "vm", T0 + MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows, 1) == [
        (1, "vm", Z1, T0 + 5000, T0 + 5000, True, "VM.STOP"),
        (1, "vm", Z1, T0 + 6000, T0 + MIN, True, "VM.STOP"),
    ]
    assert meter.stats["stale_open"] == 1
    assert meter.stats["orphan_close"] == 1  # the repeated STOP


def test_close_before_open_gives_a_zero_length_interval_never_negative() -> None:
    rows, meter = run(
        [usage("VM.START", "vm", T0 + 5000), usage("VM.STOP", "vm", T0)], until=T0 + HOUR
    )
    assert spans(rows) == [(1, "vm", Z1, T0 + 5000, T0 + 5000, True, "VM.STOP")]
    assert rows[0].duration_ms == 0
    assert rows[0].raw_usage_hours == 0
    assert meter.stats["zero_length"] == 1
    # the resource can run again afterwards (after the second of the clamped close: an
    # open at or before it is stale, rule 2); the ids differ from the zero-length one
    rows2, _ = run(
        [
            usage("VM.START", "vm", T0 + 5000),
            usage("VM.STOP", "vm", T0),
            usage("VM.START", "vm", T0 + 5000),  # a retried publish: stale
            usage("VM.START", "vm", T0 + 6000),
            usage("VM.STOP", "vm", T0 + MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows2) == [
        (1, "vm", Z1, T0 + 5000, T0 + 5000, True, "VM.STOP"),
        (1, "vm", Z1, T0 + 6000, T0 + MIN, True, "VM.STOP"),
    ]
    assert len({r.interval_id for r in rows2}) == 2
    assert all(r.end >= r.start for r in rows2)


# --------------------------------------------------------------------------- zones


@pytest.mark.parametrize("kind", ["TEMPLATE", "ISO"])
def test_a_delete_without_zone_closes_every_zone(kind: str) -> None:
    type_id = 7 if kind == "TEMPLATE" else 8
    records = [
        usage(f"{kind}.CREATE", "img", T0, zone=Z1),
        usage(f"{kind}.COPY", "img", T0 + MIN, zone=Z2),
        usage(f"{kind}.DELETE", "img", T0 + 30 * MIN, zone=None),
    ]
    rows, _ = run(records, until=T0 + HOUR)
    assert spans(rows, type_id) == [
        (type_id, "img", Z1, T0, T0 + 30 * MIN, True, f"{kind}.DELETE"),
        (type_id, "img", Z2, T0 + MIN, T0 + 30 * MIN, True, f"{kind}.DELETE"),
    ]
    # with a zone, only that zone closes
    records[-1] = usage(f"{kind}.DELETE", "img", T0 + 30 * MIN, zone=Z2)
    rows, _ = run(records, until=T0 + HOUR)
    assert spans(rows, type_id) == [
        (type_id, "img", Z1, T0, T0 + HOUR, False, "period"),
        (type_id, "img", Z2, T0 + MIN, T0 + 30 * MIN, True, f"{kind}.DELETE"),
    ]


def test_zone_is_copied_from_the_event_and_may_be_absent() -> None:
    rows, _ = run([usage("VPN.USER.ADD", "vpn", T0, zone=None)], until=T0 + MIN)
    assert [(r.zone_id, r.usage_type, r.end - r.start) for r in rows] == [(None, 14, MIN)]


# --------------------------------------------------------------------------- event time


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2025-03-14 10:22:31 +0530", dt.datetime(2025, 3, 14, 4, 52, 31, tzinfo=UTC)),
        ("2025-03-14 10:22:31 -0700", dt.datetime(2025, 3, 14, 17, 22, 31, tzinfo=UTC)),
        ("2025-03-14 10:22:31 +0000", dt.datetime(2025, 3, 14, 10, 22, 31, tzinfo=UTC)),
        ("2025-03-15 01:00:00 +0530", dt.datetime(2025, 3, 14, 19, 30, tzinfo=UTC)),
        ("2025-12-31 20:00:00 -0700", dt.datetime(2026, 1, 1, 3, 0, tzinfo=UTC)),
    ],
)
def test_event_time_offsets_convert_to_utc(text: str, utc: dt.datetime) -> None:
    raw = json.dumps(
        {"eventDateTime": text, "event": "VM.START", "id": "vm", "account": ACCT}
    ).encode()
    value = decode(raw)
    assert isinstance(value, UsageEvent)
    assert value.time_ms == int(utc.timestamp() * 1000)


def test_intervals_across_mixed_offsets_are_measured_in_utc() -> None:
    # 15:30 +0530 = 10:00 UTC; 04:00 -0700 = 11:00 UTC
    start = usage("VM.START", "vm", T0, offset=330)
    stop = usage("VM.STOP", "vm", T0 + HOUR, offset=-420)
    assert b"2025-03-14 15:30:00 +0530" in start
    assert b"2025-03-14 04:00:00 -0700" in stop
    rows, _ = run([start, stop], until=T0 + 2 * HOUR)
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + HOUR, True, "VM.STOP")]


# --------------------------------------------------------------------------- bad input


def _raw(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


USAGE_NO_TIME = {"event": "VM.START", "id": "vm", "account": ACCT, "zone": Z1}
ACTION_NO_TIME = {
    "event": "VM.START",
    "status": "Completed",
    "user": "u",
    "account": ACCT,
    "entityuuid": "vm",
    "ServiceOffering": "so",
}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event":"VM.START","id":"\xff\xfe"}', RejectReason.INVALID_UTF8),
        (b"\xc3\x28", RejectReason.INVALID_UTF8),
        (b'{"event":"VM.START",', RejectReason.INVALID_JSON),
        (b"", RejectReason.INVALID_JSON),
        (b"{'event': 'VM.START'}", RejectReason.INVALID_JSON),
        (b"[1,2,3]", RejectReason.NOT_AN_OBJECT),
        (b'"VM.START"', RejectReason.NOT_AN_OBJECT),
        (b"null", RejectReason.NOT_AN_OBJECT),
        (b"42", RejectReason.NOT_AN_OBJECT),
        (_raw(USAGE_NO_TIME), RejectReason.MISSING_EVENT_TIME),
        (_raw(ACTION_NO_TIME), RejectReason.MISSING_EVENT_TIME),
        (_raw({**USAGE_NO_TIME, "event": "NET.IP6ASSIGN"}), RejectReason.MISSING_EVENT_TIME),
        (
            _raw({**USAGE_NO_TIME, "eventDateTime": "2025-02-30 10:00:00 +0000"}),
            RejectReason.INVALID_EVENT_TIME,
        ),
        (
            _raw({**USAGE_NO_TIME, "eventDateTime": "2025-03-14T10:22:31Z"}),
            RejectReason.INVALID_EVENT_TIME,
        ),
        (
            _raw({**USAGE_NO_TIME, "eventDateTime": "2025-03-14 10:22:31"}),
            RejectReason.INVALID_EVENT_TIME,
        ),
        (
            _raw({**USAGE_NO_TIME, "eventDateTime": "2025-03-14 24:00:00 +0000"}),
            RejectReason.INVALID_EVENT_TIME,
        ),
        (_raw({**USAGE_NO_TIME, "eventDateTime": 1741946551000}), RejectReason.INVALID_EVENT_TIME),
        (_raw({**ACTION_NO_TIME, "eventDateTime": "yesterday"}), RejectReason.INVALID_EVENT_TIME),
        (usage("VM.START", rid=None), RejectReason.MISSING_RESOURCE_ID),
        (usage("VM.START", rid=""), RejectReason.MISSING_RESOURCE_ID),
        (usage("VM.START", id=None), RejectReason.MISSING_RESOURCE_ID),
        (usage("VOLUME.DELETE", rid=None, zone=None), RejectReason.MISSING_RESOURCE_ID),
        (usage("VM.START", account=""), RejectReason.MISSING_ACCOUNT),
        (usage("VM.START", account=None), RejectReason.MISSING_ACCOUNT),
        (usage("VM.START", zone=7), RejectReason.INVALID_FIELD),
        (
            _raw({"eventDateTime": stamp(T0), "event": 5, "account": ACCT, "id": "x"}),
            RejectReason.INVALID_FIELD,
        ),
        (
            _raw({**ACTION_NO_TIME, "eventDateTime": stamp(T0), "status": 1}),
            RejectReason.INVALID_FIELD,
        ),
        (delete_account("acct", T0, entityuuid=None), RejectReason.MISSING_RESOURCE_ID),
    ],
)
def test_each_reject_reason(raw: bytes, reason: RejectReason) -> None:
    value = decode(raw)
    assert isinstance(value, Rejected), value
    assert value.reason is reason
    # counted, and processing continues around it
    rows, meter = run(
        [usage("VM.START", "vm", T0), raw, usage("VM.STOP", "vm", T0 + MIN)], until=T0 + HOUR
    )
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + MIN, True, "VM.STOP")]
    assert meter.stats[f"rejected:{reason.value}"] == 1
    # the rejects output keeps the raw text, the reason and the source coordinates
    out = reject_record(raw, value, "cs", 3, 17, "vm")
    assert (out["reason"], out["topic"], out["partition"], out["offset"]) == (
        reason.value,
        "cs",
        3,
        17,
    )
    assert isinstance(out["raw"], str)
    if reason is not RejectReason.INVALID_UTF8:
        assert out["raw"] == raw.decode()


def test_too_large_records_are_rejected_unparsed() -> None:
    raw = usage("VM.START", "vm", T0)
    value = decode(raw, max_bytes=len(raw) - 1)
    assert isinstance(value, Rejected)
    assert value.reason is RejectReason.TOO_LARGE
    assert isinstance(decode(raw, max_bytes=len(raw)), UsageEvent)


def test_a_usage_event_without_account_key_is_not_a_usage_event() -> None:
    # classification needs `account` and `event`: without the key the record is unknown
    raw = _raw({"eventDateTime": stamp(T0), "event": "VM.START", "id": "vm", "zone": Z1})
    value = decode(raw)
    assert isinstance(value, Ignored)
    assert value.category is Category.UNKNOWN


IGNORED_TYPES = [
    "NET.IP6ASSIGN",
    "NET.IP6RELEASE",
    "PORTABLE.IPASSIGN",
    "PORTABLE.IPRELEASE",
    "GLOBAL.LB.ASSIGN",
    "GLOBAL.LB.REMOVE",
    "SNAPSHOT.COPY",
    "SNAPSHOT.ON_PRIMARY",
    "SNAPSHOT.OFF_PRIMARY",
    "VOLUME.DETACH",
    "VOLUME.IMPORT",
    "VOLUME.UNMANAGE",
    "BACKUP.USAGE.METRIC",
    "VM.MIGRATE",
    "NOT.A.TYPE",
    "vm.start",
]


@pytest.mark.parametrize("event", IGNORED_TYPES)
@pytest.mark.parametrize("with_id", [True, False])
def test_ignored_usage_types_are_counted_not_rejected(event: str, with_id: bool) -> None:
    raw = usage(event, "r-1" if with_id else None, T0)
    value = decode(raw)
    assert isinstance(value, Ignored), value
    assert value.category is Category.USAGE
    rows, meter = run([raw], until=T0 + HOUR)
    assert rows == []
    assert meter.stats[f"ignored:{value.kind}"] == 1
    assert not any(k.startswith("rejected:") for k in meter.stats)


# --------------------------------------------------------------------------- rule 5


def _account_fixture(deletion: bytes) -> tuple[list[UsageInterval], Engine]:
    records = [
        usage("VM.CREATE", "vm", T0),
        usage("VM.START", "vm", T0 + MIN),
        usage("VOLUME.CREATE", "vol", T0),
        usage("TEMPLATE.CREATE", "tpl", T0, zone=Z1),
        usage("TEMPLATE.COPY", "tpl", T0, zone=Z2),
        usage("VM.START", "other-vm", T0, account=OTHER),
        deletion,
        # after the deletion CloudStack publishes nothing more for the account; stragglers
        # of the deleted account are ignored
        usage("VM.STOP", "vm", T0 + 40 * MIN),
        usage("NET.IPASSIGN", "ip", T0 + 45 * MIN),
    ]
    return run(records, until=T0 + 50 * MIN)


def test_completed_account_delete_closes_every_open_interval_at_its_time() -> None:
    rows, meter = _account_fixture(delete_account(ACCT, T0 + 30 * MIN))
    mine = [r for r in rows if r.account_id == ACCT]
    assert sorted((r.usage_type, r.resource_id, r.zone_id, r.start, r.end) for r in mine) == [
        (1, "vm", Z1, T0 + MIN, T0 + 30 * MIN),
        (2, "vm", Z1, T0, T0 + 30 * MIN),
        (6, "vol", Z1, T0, T0 + 30 * MIN),
        (7, "tpl", Z1, T0, T0 + 30 * MIN),
        (7, "tpl", Z2, T0, T0 + 30 * MIN),
    ]
    assert all(r.final and r.close_reason == "account_delete" for r in mine)
    assert spans([r for r in rows if r.account_id == OTHER]) == [
        (1, "other-vm", Z1, T0, T0 + 50 * MIN, False, "until")
    ]
    assert meter.stats["after_account_delete"] == 2


@pytest.mark.parametrize(
    "deletion",
    [
        delete_account(ACCT, T0 + 30 * MIN, status="Scheduled", description="deleting account"),
        delete_account(ACCT, T0 + 30 * MIN, status="Started", description="deleting account"),
        delete_account(ACCT, T0 + 30 * MIN, status="Created", description="deleting account"),
        delete_account(ACCT, T0 + 30 * MIN, description="Error while deleting account"),
        delete_account(ACCT, T0 + 30 * MIN, description="Error while deleting account. " * 3),
        delete_account(OTHER + "-x", T0 + 30 * MIN),  # another account
        action("ACCOUNT.DISABLE", ACCT, T0 + 30 * MIN),
        usage("ACCOUNT.DELETE", ACCT, T0 + 30 * MIN, account=ACCT),  # not an action event
    ],
    ids=[
        "scheduled",
        "started",
        "created",
        "failed",
        "failed-long",
        "other-account",
        "disable",
        "usage-shaped",
    ],
)
def test_account_delete_that_is_not_completed_successfully_changes_nothing(
    deletion: bytes,
) -> None:
    value = decode(deletion)
    assert not (isinstance(value, AccountDeleted) and value.account_id == ACCT)
    rows, _ = _account_fixture(deletion)
    assert spans([r for r in rows if r.account_id == ACCT]) == [
        (1, "vm", Z1, T0 + MIN, T0 + 40 * MIN, True, "VM.STOP"),
        (2, "vm", Z1, T0, T0 + 50 * MIN, False, "until"),
        (3, "ip", Z1, T0 + 45 * MIN, T0 + 50 * MIN, False, "until"),
        (6, "vol", Z1, T0, T0 + 50 * MIN, False, "until"),
        (7, "tpl", Z1, T0, T0 + 50 * MIN, False, "until"),
        (7, "tpl", Z2, T0, T0 + 50 * MIN, False, "until"),
    ]


def test_account_delete_acts_by_event_time_on_intervals_of_that_account_only() -> None:
    rows, _ = run(
        [
            usage("VM.START", "vm", T0),
            delete_account(ACCT, T0 + 10 * MIN),
            # the account's own events older than the deletion still apply
            usage("VM.STOP", "vm", T0 + 5 * MIN),
        ],
        until=T0 + HOUR,
    )
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + 5 * MIN, True, "VM.STOP")]


# --------------------------------------------------------------------------- rule 6


def test_redelivery_of_the_same_record_changes_nothing() -> None:
    records = [
        usage("VM.START", "vm", T0),
        usage("VM.STOP", "vm", T0 + 10 * MIN),
        usage("VM.START", "vm", T0 + 20 * MIN),
        delete_account(ACCT, T0 + 40 * MIN),
    ]
    once, _ = run(records, until=T0 + HOUR)
    sources = [Source("cs", 0, i) for i in range(4)]
    # crash after offset 2, the consumer restarts from offset 1
    replayed = [*records[:3], *records[1:]]
    twice, meter = run(replayed, until=T0 + HOUR, sources=[*sources[:3], *sources[1:]])
    assert twice == once
    assert meter.stats["duplicate"] >= 2


def test_distinct_records_with_identical_content_are_distinct_but_harmless() -> None:
    records = [
        usage("VM.START", "vm", T0),
        usage("VM.START", "vm", T0),
        usage("VM.STOP", "vm", T0 + MIN),
        usage("VM.STOP", "vm", T0 + MIN),
    ]
    rows, meter = run(records, until=T0 + HOUR)
    assert spans(rows) == [(1, "vm", Z1, T0, T0 + MIN, True, "VM.STOP")]
    assert meter.stats["reopen_ignored"] == 1
    assert meter.stats["orphan_close"] == 1  # a repeat at the last close: nothing to remember
    assert meter.stats["applied"] == 4


# --------------------------------------------------------------------------- rule 7


def test_enrichment_from_action_events() -> None:
    records = [
        action("ACCOUNT.CREATE", ACCT, T0 - HOUR, Domain="dom-1"),
        usage("VM.CREATE", "vm", T0),
        action(
            "VM.CREATE",
            "vm",
            T0,
            status="Created",
            ServiceOffering="so-1",
            VirtualMachineTemplate="tpl-1",
            account=ACCT,
        ),
        usage("VM.START", "vm", T0),
        # a failed upgrade does not change the offering
        action(
            "VM.UPGRADE",
            "vm",
            T0 + 10 * MIN,
            ServiceOffering="so-bad",
            description="Error while upgrading vm",
            account=ACCT,
        ),
        usage("VOLUME.CREATE", "vol", T0),
        action("VOLUME.CREATE", "vol", T0, DiskOffering="do-1", account=ACCT),
        usage("VM.STOP", "vm", T0 + 20 * MIN),
        usage("VM.DESTROY", "vm", T0 + 20 * MIN),
        usage("VOLUME.DELETE", "vol", T0 + 20 * MIN),
        usage("NET.IPASSIGN", "ip", T0, account=OTHER),
    ]
    assert isinstance(decode(records[0]), AccountCreated)
    assert isinstance(decode(records[2]), Enrichment)
    rows, _ = run(records, until=T0 + HOUR)
    got = {(r.usage_type, r.domain_id, r.offering_id, r.template_id) for r in rows}
    assert got == {
        (1, "dom-1", "so-1", "tpl-1"),
        (2, "dom-1", "so-1", "tpl-1"),
        (6, "dom-1", "do-1", None),
        (3, None, None, None),
    }


# --------------------------------------------------------------------------- rules 8-10


@pytest.mark.parametrize(
    ("period", "tz", "boundaries"),
    [
        ("hour", "UTC", [dt.datetime(2025, 3, 14, h, tzinfo=UTC) for h in (11, 12)]),
        # India is UTC+05:30: local midnight of the 15th is 18:30 UTC on the 14th
        ("day", "Asia/Kolkata", [dt.datetime(2025, 3, 14, 18, 30, tzinfo=UTC)]),
        (
            "hour",
            "Asia/Kolkata",
            [dt.datetime(2025, 3, 14, h, 30, tzinfo=UTC) for h in (10, 11, 12)],
        ),
        ("day", "UTC", []),
    ],
)
def test_intervals_are_split_at_period_boundaries(
    period: str, tz: str, boundaries: list[dt.datetime]
) -> None:
    start, stop = T0 + 10 * MIN, T0 + 2 * HOUR + 40 * MIN + 17_000  # 10:10 .. 12:40:17 UTC
    if period == "day" and tz != "UTC":
        stop = T0 + 9 * HOUR  # 19:00 UTC, past India's midnight
    rows, _ = run(
        [usage("VM.START", "vm", start), usage("VM.STOP", "vm", stop)],
        until=stop + HOUR,
        period=period,
        tz=tz,
    )
    cuts = [int(b.timestamp() * 1000) for b in boundaries]
    edges = [start, *cuts, stop]
    assert [(r.start, r.end) for r in rows] == list(itertools.pairwise(edges))
    assert [r.close_reason for r in rows] == ["period"] * len(cuts) + ["VM.STOP"]
    grid = PeriodGrid(period, tz)  # type: ignore[arg-type]
    for r in rows:
        assert r.period_start == grid.floor(r.start)
        assert r.end <= grid.next_boundary(r.start)


def test_interval_ids_are_deterministic_and_distinct() -> None:
    records = [
        usage("VM.CREATE", "vm", T0),
        usage("VM.START", "vm", T0),
        usage("VM.STOP", "vm", T0 + 3 * HOUR),
        usage("VM.START", "vm", T0 + 4 * HOUR),
    ]
    a, _ = run(records, until=T0 + 6 * HOUR)
    b, _ = run(records, until=T0 + 6 * HOUR)
    assert a == b
    ids = [r.interval_id for r in a]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_replay_horizon() -> None:
    records = [
        usage("VM.START", "vm", T0 + 10 * MIN),
        usage("VM.STOP", "vm", T0 + 3 * HOUR),
    ]  # at/after the horizon: not applied
    rows, _ = run(records, until=T0 + 2 * HOUR + 5 * MIN)
    assert spans(rows) == [
        (1, "vm", Z1, T0 + 10 * MIN, T0 + HOUR, False, "period"),
        (1, "vm", Z1, T0 + HOUR, T0 + 2 * HOUR, False, "period"),
        (1, "vm", Z1, T0 + 2 * HOUR, T0 + 2 * HOUR + 5 * MIN, False, "until"),
    ]
    # a horizon on a boundary is a period cut
    rows, _ = run(records, until=T0 + 2 * HOUR)
    assert [r.close_reason for r in rows] == ["period", "period"]
    # without a horizon: the last boundary at or before the newest (confirmed) event time
    rows, _ = run(
        [
            usage("VM.START", "vm", T0 + 10 * MIN),
            usage("VM.START", "vm", T0 + 1 * HOUR + 50 * MIN),  # open already: no change
            usage("NET.IPASSIGN", "ip", T0 + 2 * HOUR + 50 * MIN),
        ]
    )
    assert spans(rows) == [
        (1, "vm", Z1, T0 + 10 * MIN, T0 + HOUR, False, "period"),
        (1, "vm", Z1, T0 + HOUR, T0 + 2 * HOUR, False, "period"),
    ]
    # rule 4b: a last record more than max_watermark_jump (1 h) ahead of the rest is not
    # confirmed by a later one, so it does not move the horizon
    rows, _ = run(
        [
            usage("VM.START", "vm", T0 + 10 * MIN),
            usage("NET.IPASSIGN", "ip", T0 + 2 * HOUR + 50 * MIN),
        ]
    )
    assert spans(rows) == []


@pytest.mark.parametrize("field", ["account", "id", "zone", "event"])
def test_a_lone_surrogate_escape_is_rejected_not_a_poison_pill(field: str) -> None:
    """orjson refuses ``\\ud800``; the stdlib fallback would accept it and hand on a string
    no encoder can write (the worker would die on it after every restart)."""
    record = {"eventDateTime": "2025-03-01 00:00:00 +0000", "event": "VM.START",
              "account": "acct", "id": "vm-1", "zone": "z"}
    record[field] = "x\\ud800"
    raw = json.dumps(record).replace("\\\\ud800", "\\ud800").encode()
    value = decode(raw)
    assert isinstance(value, Rejected)
    assert value.reason == RejectReason.INVALID_JSON
