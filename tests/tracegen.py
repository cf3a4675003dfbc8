"""A tiny deterministic CloudStack trace for worker tests (bare JSON values with Kafka keys).

Independent of ``metering simulate``: a few accounts with VMs (create, start, stop, destroy),
volumes and IPs over a few hours, one account deletion, and optional malformed records.
Times are UTC epoch ms, rendered like CloudStack (``yyyy-MM-dd HH:mm:ss Z``).
"""

from __future__ import annotations

import random

import orjson

from metering.eventtime import format_event_time

START_MS = 1_740_787_200_000  # 2025-03-01T00:00:00Z


def _usage(t: int, event: str, account: str, rid: str, zone: str = "zone-1") -> dict[str, str]:
    return {"eventDateTime": format_event_time(t, 330), "zone": zone, "event": event,
            "resource": "com.cloud.vm.VirtualMachine", "id": rid, "account": account}


def build_trace(
    seed: int = 7, accounts: int = 6, vms: int = 4, hours: float = 6.0, malformed: int = 0
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) records in publication order; the key is what CloudStack's bus uses."""
    rng = random.Random(seed)
    events: list[tuple[int, int, bytes | None, dict[str, str] | bytes]] = []
    seq = 0

    def add(t: int, key: str | None, value: dict[str, str] | bytes) -> None:
        nonlocal seq
        seq += 1
        events.append((t, seq, key.encode() if key else None, value))

    span = int(hours * 3_600_000)
    for a in range(accounts):
        acct = f"acct-{seed}-{a}"
        add(START_MS + a * 1000, acct, {
            "eventDateTime": format_event_time(START_MS + a * 1000), "event": "ACCOUNT.CREATE",
            "status": "Completed", "user": "admin", "account": "root", "entityuuid": acct,
            "Domain": f"domain-{a % 2}", "description": "Successfully completed creating Account"})
        for v in range(vms):
            vm = f"vm-{seed}-{a}-{v}"
            t = START_MS + rng.randrange(10_000, span // 3) // 1000 * 1000
            add(t, vm, _usage(t, "VM.CREATE", acct, vm))
            add(t, vm, {"eventDateTime": format_event_time(t), "event": "VM.CREATE",
                        "status": "Created", "user": "u", "account": acct, "entityuuid": vm,
                        "ServiceOffering": f"so-{v % 3}", "VirtualMachineTemplate": "tmpl-1",
                        "description": "Successfully created entity for deploying Vm"})
            vol = f"vol-{seed}-{a}-{v}"
            add(t, vol, _usage(t, "VOLUME.CREATE", acct, vol))
            t += 5000
            while t < START_MS + span:
                add(t, vm, _usage(t, "VM.START", acct, vm))
                t += rng.randrange(600, 7200) * 1000
                if t >= START_MS + span:
                    break
                add(t, vm, _usage(t, "VM.STOP", acct, vm))
                t += rng.randrange(300, 3600) * 1000
            if v == 0:
                ip = f"ip-{seed}-{a}"
                t0 = START_MS + rng.randrange(0, span // 2) // 1000 * 1000
                add(t0, ip, _usage(t0, "NET.IPASSIGN", acct, ip))
                add(t0 + 3_000_000, ip, _usage(t0 + 3_000_000, "NET.IPRELEASE", acct, ip))
        add(START_MS + 10_000, None, {"eventDateTime": format_event_time(START_MS + 10_000),
                                      "event": "ALERT.USERVM", "subject": "x", "body": "y"})
    # the last account is deleted two thirds of the way through
    t_del = START_MS + (span * 2 // 3) // 1000 * 1000
    victim = f"acct-{seed}-{accounts - 1}"
    events = [e for e in events if not (isinstance(e[3], dict) and e[3].get("account") == victim
                                         and e[0] > t_del)]
    add(t_del, victim, {"eventDateTime": format_event_time(t_del), "event": "ACCOUNT.DELETE",
                        "status": "Completed", "user": "admin", "account": "root",
                        "entityuuid": victim, "description": "Successfully deleted account"})
    for i in range(malformed):
        t = START_MS + (i + 1) * 60_000
        bad: list[bytes] = [b'{"eventDateTime":"2025-03-01 00:0', b"[1,2,3]",
                            b'{"event":"VM.START","account":"a","id":"x","zone":"z"}',
                            b'{"event":"VM.START","account":"a","id":"x",'
                            b'"eventDateTime":"2025-02-30 10:00:00 +0000"}', b"\xff\xfe"]
        add(t, None, bad[i % len(bad)])
    events.sort(key=lambda e: (e[0], e[1]))
    return [(key, value if isinstance(value, bytes) else orjson.dumps(value))
            for _, _, key, value in events]
