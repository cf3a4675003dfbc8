"""A small, independent interpreter of the metering contract, for tests only.

Written from ``metering-contract.md`` alone, it imports nothing from ``metering``: it checks
the simulator's truth (and can check the core) without sharing code with either. Totals only,
no periods: ``{(account, usage_type, resource_id, zone or None): milliseconds}``, where the
zone is kept for TEMPLATE (7) and ISO (8) only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable

# contract section 3: event -> [(usage type, "open" | "close" | "split")]
TABLE: dict[str, list[tuple[int, str]]] = {
    "VM.START": [(1, "open")],
    "VM.STOP": [(1, "close")],
    "VM.DESTROY": [(1, "close"), (2, "close"), (13, "close")],
    "VM.DYNAMIC.SCALE": [(1, "split"), (2, "split")],
    "VM.CREATE": [(2, "open")],
    "VM.UPGRADE": [(2, "split")],
    "NET.IPASSIGN": [(3, "open")],
    "NET.IPRELEASE": [(3, "close")],
    "VOLUME.CREATE": [(6, "open"), (26, "close")],
    "VOLUME.DELETE": [(6, "close"), (26, "close")],
    "VOLUME.RESIZE": [(6, "split")],
    "TEMPLATE.CREATE": [(7, "open")],
    "TEMPLATE.COPY": [(7, "open")],
    "TEMPLATE.DELETE": [(7, "close")],
    "ISO.CREATE": [(8, "open")],
    "ISO.COPY": [(8, "open")],
    "ISO.DELETE": [(8, "close")],
    "SNAPSHOT.CREATE": [(9, "open")],
    "SNAPSHOT.DELETE": [(9, "close")],
    "SG.ASSIGN": [(10, "open")],
    "SG.REMOVE": [(10, "close")],
    "LB.CREATE": [(11, "open")],
    "LB.DELETE": [(11, "close")],
    "NET.RULEADD": [(12, "open")],
    "NET.RULEDELETE": [(12, "close")],
    "NETWORK.OFFERING.ASSIGN": [(13, "open")],
    "NETWORK.OFFERING.REMOVE": [(13, "close")],
    "VPN.USER.ADD": [(14, "open")],
    "VPN.USER.REMOVE": [(14, "close")],
    "VMSNAPSHOT.CREATE": [(25, "open")],
    "VMSNAPSHOT.DELETE": [(25, "close")],
    "VOLUME.UPLOAD": [(26, "open")],
    "VMSNAPSHOT.ON_PRIMARY": [(27, "open")],
    "VMSNAPSHOT.OFF_PRIMARY": [(27, "close")],
    "BACKUP.OFFERING.ASSIGN": [(28, "open")],
    "BACKUP.OFFERING.BACKUPS.DEL": [(28, "close")],
    "NETWORK.CREATE": [(30, "open")],
    "NETWORK.DELETE": [(30, "close")],
    "NETWORK.UPDATE": [(30, "split")],
    "VPC.CREATE": [(31, "open")],
    "VPC.DELETE": [(31, "close")],
}
PER_ZONE = (7, 8)

Key = tuple[str, int, str, str | None]


def _time(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        t = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S %z")
    except ValueError:
        return None
    return int(t.timestamp()) * 1000


def reference_totals(values: Iterable[bytes | str], until_ms: int) -> dict[Key, int]:
    """Replay record values (in arrival order) and return the metered ms per key."""
    open_at: dict[Key, int] = {}
    totals: dict[Key, int] = {}
    deleted: dict[str, int] = {}

    def close(k: Key, t: int) -> None:
        start = open_at.pop(k, None)
        if start is not None:
            totals[k] += max(0, min(t, until_ms) - start)

    for raw in values:
        try:
            d = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(d, dict) or "old-state" in d or "jobId" in d:
            continue
        if "subject" in d or str(d.get("event", "")).startswith("ALERT."):
            continue
        t = _time(d.get("eventDateTime"))
        if "user" in d and "status" in d:  # action event
            if (t is not None and d.get("event") == "ACCOUNT.DELETE"
                    and d.get("status") == "Completed"
                    and not str(d.get("description", "")).startswith("Error")
                    and d.get("entityuuid")):
                acct = d["entityuuid"]
                for k in [k for k in open_at if k[0] == acct]:
                    close(k, t)
                deleted.setdefault(acct, t)
            continue
        if "account" not in d or "event" not in d or t is None:
            continue
        rules = TABLE.get(d["event"])
        rid, acct = d.get("id"), d["account"]
        if not rules or not rid or (acct in deleted and t >= deleted[acct]):
            continue
        zone = d.get("zone")
        for usage_type, action in rules:
            if usage_type in PER_ZONE and action == "close" and zone is None:
                for k in [k for k in open_at if k[:3] == (acct, usage_type, rid)]:
                    close(k, t)
                continue
            k = (acct, usage_type, rid, zone if usage_type in PER_ZONE else None)
            if action != "open":  # close, or split = close then open
                close(k, t)
                if action == "close":
                    continue
            if k not in open_at:
                open_at[k] = t
                totals.setdefault(k, 0)
    for k in list(open_at):
        close(k, until_ms)
    return totals
