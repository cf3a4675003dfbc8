"""A small reference interpreter of the metering contract, for tests only.

Written from ``metering-contract.md`` (sections 1 to 4) and imports nothing from ``metering``,
so the core, the simulator's truth and this file can check each other. It computes **totals
only** (no period splitting): :func:`reference_usage` returns the metered milliseconds per
key, where a key is ``(account_id, usage_type, resource_key)``:

* ``account_id``: the account of the usage events of the interval;
* ``usage_type``: the CloudStack usage type id (``1`` = RUNNING_VM, ...), an ``int``;
* ``resource_key``: the event's ``id``; for TEMPLATE (7) and ISO (8) it is
  ``f"{id}@{zone}"`` with an empty zone when the event has none (``"tmpl-1@"``), the same
  string ``metering.intervals.resource_key`` forms, so results compare directly.

Keys whose total is zero (a close earlier than its open) are left out.

Semantics, as read from the contract (revision 2):

* records are classified by their keys in the contract's order; only usage events of the
  table's types meter; a Completed ``ACCOUNT.DELETE`` action event whose description does not
  start with ``Error`` and that has an ``entityuuid`` closes the account's open intervals at
  its time (the earliest one wins if there are several);
* bad records (not UTF-8, not JSON, not an object, missing or malformed ``eventDateTime``,
  one before 1970-01-01T00:00:00Z, metered usage event without ``id`` or ``account`` or with
  one, or a ``zone``, longer than 255 characters) are skipped (the upper bound of rule 4b,
  the wall clock plus ``max_clock_skew``, needs a clock: traces here lie in the past);
* an interval is keyed by (usage type, resource key, **account**) (rule 4a): an event of one
  account never touches another account's interval of the same resource id;
* opening what is open does nothing; a split closes and reopens, or, with nothing open, acts
  as an open; a close earlier than the open gives zero, and a reopen never starts before
  the end of the previous interval of the same key (no double counting);
* the *last close* of a key is the end of the last interval an event (or a deletion) closed
  there (for a close earlier than its open, the open's time); an open (or a split with
  nothing open) at or before it is stale and does nothing (rule 2);
* a close of what is not open (rule 3) is *remembered* unless it is at or before the key's
  last close (then no open could ever claim it). An open at ``t`` with nothing open claims
  the earliest remembered close ``c > t`` of its key: ``[t, c)`` is metered and nothing
  stays open. An open at or after every remembered close opens as usual and claims none. A
  remembered close expires, changing nothing, once the *watermark* (the newest event time
  of the usage and action records applied before: usage events, completed account
  deletions, account creations with a domain and actions carrying an offering or template;
  an ignored record, e.g. a scheduled deletion, moves nothing) is more than
  ``orphan_close_ttl_ms`` after it; at most :data:`MAX_ORPHANS` are remembered per key
  (the earliest is dropped first). A TEMPLATE/ISO delete without zone that closes nothing
  is remembered for every zone: it closes whichever zone an earlier open arrives for, and
  is not used up by it;
* usage events of an account deleted at or before the event's time are ignored, and no
  interval of a deleted account extends past the deletion: its open intervals end at the
  deletion time (by event time, so a deletion record that arrives before older events of the
  account still lets them apply); an interval claimed from a remembered close ends at the
  deletion at the latest;
* records at or after ``until_ms`` are not applied (``replay --until``); intervals still
  open at the end are closed at ``until_ms``;
* regions (README "Regions"): with ``regions``, each record comes from the input of one
  region, and everything above is keyed by the region as well: the same account and resource
  ids in two regions are two accounts and two resources (two intervals, two deletions), and
  keys gain the region in front: ``(region, account_id, usage_type, resource_key)``. Records
  of all regions still form one stream in arrival order (the watermark of the remembered
  closes is the newest event time over every region, as for one input of many partitions).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable

OPEN, CLOSE, SPLIT = "open", "close", "split"

# Contract section 3, row by row: usage type id -> (opens, closes, splits).
ROWS: dict[int, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    1: (("VM.START",), ("VM.STOP", "VM.DESTROY"), ("VM.DYNAMIC.SCALE",)),
    2: (("VM.CREATE",), ("VM.DESTROY",), ("VM.UPGRADE", "VM.DYNAMIC.SCALE")),
    3: (("NET.IPASSIGN",), ("NET.IPRELEASE",), ()),
    6: (("VOLUME.CREATE",), ("VOLUME.DELETE",), ("VOLUME.RESIZE",)),
    7: (("TEMPLATE.CREATE", "TEMPLATE.COPY"), ("TEMPLATE.DELETE",), ()),
    8: (("ISO.CREATE", "ISO.COPY"), ("ISO.DELETE",), ()),
    9: (("SNAPSHOT.CREATE",), ("SNAPSHOT.DELETE",), ()),
    10: (("SG.ASSIGN",), ("SG.REMOVE",), ()),
    11: (("LB.CREATE",), ("LB.DELETE",), ()),
    12: (("NET.RULEADD",), ("NET.RULEDELETE",), ()),
    13: (("NETWORK.OFFERING.ASSIGN",), ("NETWORK.OFFERING.REMOVE", "VM.DESTROY"), ()),
    14: (("VPN.USER.ADD",), ("VPN.USER.REMOVE",), ()),
    25: (("VMSNAPSHOT.CREATE",), ("VMSNAPSHOT.DELETE",), ()),
    26: (("VOLUME.UPLOAD",), ("VOLUME.CREATE", "VOLUME.DELETE"), ()),
    27: (("VMSNAPSHOT.ON_PRIMARY",), ("VMSNAPSHOT.OFF_PRIMARY",), ()),
    28: (("BACKUP.OFFERING.ASSIGN",), ("BACKUP.OFFERING.BACKUPS.DEL",), ()),
    30: (("NETWORK.CREATE",), ("NETWORK.DELETE",), ("NETWORK.UPDATE",)),
    31: (("VPC.CREATE",), ("VPC.DELETE",), ()),
}
PER_ZONE = frozenset({7, 8})

# event type -> [(usage type, action)], derived from the rows above
ACTIONS: dict[str, list[tuple[int, str]]] = {}
for _type, (_opens, _closes, _splits) in ROWS.items():
    for _names, _action in ((_opens, OPEN), (_closes, CLOSE), (_splits, SPLIT)):
        for _name in _names:
            ACTIONS.setdefault(_name, []).append((_type, _action))

Key = tuple[str, int, str]
RegionKey = tuple[str, str, int, str]
Account = tuple[str | None, str]  # (region or None, account id)
Slot = tuple[int, str, str, Account]  # (usage type, resource id, zone or "", account)
ENRICHMENT_KEYS = ("ServiceOffering", "VirtualMachineTemplate", "DiskOffering")
"""Action keys that make an action record an applied enrichment (contract rule 7)."""
ORPHAN_CLOSE_TTL_MS = 86_400_000
"""Default ``orphan_close_ttl``: 24 hours of event time (contract rule 3)."""
MAX_ORPHANS = 16
"""Remembered closes kept per (usage type, resource key, account); the earliest goes first."""
EVERY_ZONE = None
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}")
MAX_ID = 255
"""Contract section 2: a metered usage event whose ``id`` or ``account`` is longer is bad."""


def parse_time(value: object) -> int | None:
    """``yyyy-MM-dd HH:mm:ss Z`` (e.g. ``2025-03-14 10:22:31 +0530``) -> UTC epoch ms."""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        return None
    try:
        parsed = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None
    return int(parsed.timestamp()) * 1000


def category(d: dict[str, object]) -> str:
    """Contract section 1: the category of a JSON object, by its keys, in order."""
    if "old-state" in d:
        return "resource_state"
    if "jobId" in d:
        return "async_job"
    event = d.get("event")
    if "subject" in d or (isinstance(event, str) and event.startswith("ALERT.")):
        return "alert"
    if "user" in d and "status" in d:
        return "action"
    if "account" in d and "event" in d:
        return "usage"
    return "unknown"


def _load(raw: bytes | str) -> dict[str, object] | None:
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _nonempty(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def reference_usage(
    records: Iterable[bytes | str], until_ms: int, orphan_close_ttl_ms: int = ORPHAN_CLOSE_TTL_MS
) -> dict[Key, int]:
    """Metered milliseconds per ``(account_id, usage_type, resource_key)``.

    ``records`` are raw record values (CloudStack JSON) in arrival order.
    """
    totals = _meter(((None, raw) for raw in records), until_ms, orphan_close_ttl_ms)
    return {(account[1], usage_type, rkey): ms
            for (account, usage_type, rkey), ms in totals.items()}


def reference_usage_by_region(
    records: Iterable[tuple[str, bytes | str]], until_ms: int,
    orphan_close_ttl_ms: int = ORPHAN_CLOSE_TTL_MS,
) -> dict[RegionKey, int]:
    """Metered milliseconds per ``(region, account_id, usage_type, resource_key)``.

    ``records`` are ``(region, raw record value)`` in arrival order over all regions.
    """
    totals = _meter(records, until_ms, orphan_close_ttl_ms)
    return {(str(account[0]), account[1], usage_type, rkey): ms
            for (account, usage_type, rkey), ms in totals.items()}


def _meter(records: Iterable[tuple[str | None, bytes | str]], until_ms: int,
           orphan_close_ttl_ms: int) -> dict[tuple[Account, int, str], int]:
    open_: dict[Slot, int] = {}  # -> start
    last_end: dict[Slot, int] = {}
    # (usage type, resource id, account) -> remembered closes [(time, zone or EVERY_ZONE)]
    orphans: dict[tuple[int, str, Account], list[tuple[int, str | None]]] = {}
    deleted: dict[Account, int] = {}  # account -> earliest deletion time
    totals: dict[tuple[Account, int, str], int] = {}
    watermark = -(2**62)

    def close(k: Slot, t: int, start: int) -> None:
        account = k[3]
        if account in deleted:  # nothing of a deleted account runs past its deletion
            t = min(t, deleted[account])
        end = max(t, start)  # a close earlier than the open gives zero, never negative
        rkey = f"{k[1]}@{k[2]}" if k[0] in PER_ZONE else k[1]
        totals[(account, k[0], rkey)] = totals.get((account, k[0], rkey), 0) + end - start
        last_end[k] = end

    def remember(k: Slot, t: int, zone: str | None) -> None:
        if zone is not EVERY_ZONE and t <= last_end.get(k, t - 1):
            return  # at or before the last close: no open could claim it
        pending = orphans.setdefault((k[0], k[1], k[3]), [])
        pending.append((t, zone))
        if len(pending) > MAX_ORPHANS:
            pending.remove(min(pending, key=lambda o: o[0]))

    def claim(k: Slot, t: int, now: int) -> int | None:
        """The earliest remembered close after ``t`` for ``k`` still live at watermark
        ``now``, used up unless it is for every zone; None if there is none."""
        pending = orphans.get((k[0], k[1], k[3]))
        if not pending:
            return None
        pending[:] = [o for o in pending if now - o[0] <= orphan_close_ttl_ms]
        fits = [o for o in pending if o[0] > t and o[1] in (EVERY_ZONE, k[2])]
        if not fits:
            return None
        best = min(fits, key=lambda o: (o[0], o[1] is EVERY_ZONE))
        if best[1] is not EVERY_ZONE:
            pending.remove(best)
        return best[0]

    for region, raw in records:
        d = _load(raw)
        if d is None:
            continue
        kind = category(d)
        t = parse_time(d.get("eventDateTime"))
        if t is None or t < 0 or t >= until_ms:
            continue
        if kind == "action":
            description = d.get("description")
            failed = isinstance(description, str) and description.startswith("Error")
            uuid = _nonempty(d.get("entityuuid"))
            event = d.get("event")
            completed = event == "ACCOUNT.DELETE" and d.get("status") == "Completed"
            if not failed and uuid is not None and (
                    completed or (event == "ACCOUNT.CREATE" and _nonempty(d.get("Domain")))
                    or (event != "ACCOUNT.DELETE" and event != "ACCOUNT.CREATE" and any(
                        _nonempty(d.get(key)) for key in ENRICHMENT_KEYS))):
                watermark = max(watermark, t)  # an applied action moves it; ignored ones not
            if completed and not failed and uuid is not None:
                victim: Account = (region, uuid)
                deleted[victim] = min(t, deleted.get(victim, t))
            continue
        if kind != "usage":
            continue
        event, rid, account_id = d.get("event"), _nonempty(d.get("id")), _nonempty(d.get("account"))
        zone = d.get("zone")
        if not isinstance(event, str) or event not in ACTIONS or rid is None or account_id is None:
            continue
        if zone is not None and (not isinstance(zone, str) or len(zone) > MAX_ID):
            continue
        if len(rid) > MAX_ID or len(account_id) > MAX_ID:
            continue
        account: Account = (region, account_id)
        now, watermark = watermark, max(watermark, t)  # now: before this record
        if account in deleted and t >= deleted[account]:
            continue
        for usage_type, action in ACTIONS[event]:
            zoned = usage_type in PER_ZONE
            k: Slot = (usage_type, rid, (zone or "") if zoned else "", account)
            if zoned and action == CLOSE and not zone:  # a delete without zone: every zone
                hits = [o for o in open_ if o[:2] == (usage_type, rid) and o[3] == account]
                for other in hits:
                    close(other, t, open_.pop(other))
                if not hits:
                    remember(k, t, EVERY_ZONE)
                continue
            if action in (CLOSE, SPLIT) and k in open_:
                close(k, t, open_.pop(k))
                if action == SPLIT:
                    open_[k] = max(t, last_end[k])  # never overlaps the last
                continue
            if action == CLOSE:
                remember(k, t, k[2])
                continue
            if k in open_ or t <= last_end.get(k, t - 1):
                continue  # already open (rule 2), or stale: at or before the last close
            end = claim(k, t, now)
            if end is None:
                open_[k] = t
            else:
                close(k, end, t)
    for k in list(open_):
        close(k, until_ms, open_.pop(k))
    return {k: ms for k, ms in totals.items() if ms > 0}
