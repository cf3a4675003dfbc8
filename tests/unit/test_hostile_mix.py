"""Issue 15's acceptance: a simulated trace with the hostile records of cases 1-5 mixed in
gives the simulator's truth for every resource the hostile records do not name.

Mixed into a seeded ``metering simulate`` trace (bare JSON lines, arrival order = offset):

1. sizes: 180 kB of control characters in a JSON string, and a ~1 MB ``VM.START`` whose
   ``id`` is ~1 MB long (rejected; each reject line stays small);
2. a ``SNAPSHOT.CREATE`` of a fresh snapshot dated days ahead of its neighbours (an outlier
   of event time early in the trace; its own resource is billed from its time, nobody else's
   bill moves);
3. instants in year 0 (``0001-01-01 00:30:00 +1400``) and before 1970 (rejected, no crash);
4. a retried ``VM.START`` (same record again, after the VM's ``VM.STOP``) and a ``VM.STOP``
   read before its own earlier ``VM.START`` (usage unchanged);
5. a ``VM.STOP`` by another account for a running VM's id (the owner's usage unchanged).

The run is ``metering replay`` (the same core as the worker) through the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from agents.cli import main
from metering.eventtime import format_event_time, parse_event_time
from metering.simulate.truth import totals_from_intervals, truth_totals
from storage.dataset import read_dataset


def _usage(line: bytes) -> dict[str, Any] | None:
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict) or "user" in d or "old-state" in d or "jobId" in d:
        return None
    return d if "account" in d and "event" in d and "id" in d else None


def _vm_cycles(lines: list[bytes]) -> list[tuple[int, int, dict[str, Any]]]:
    """(index of VM.START, index of the next VM.STOP, the START) with no other usage event
    of that VM in between."""
    open_at: dict[str, int] = {}
    cycles: list[tuple[int, int, dict[str, Any]]] = []
    for i, line in enumerate(lines):
        d = _usage(line)
        if d is None:
            continue
        vm = str(d["id"])
        if d["event"] == "VM.START":
            open_at[vm] = i
        elif d["event"] == "VM.STOP" and vm in open_at:
            start = open_at.pop(vm)
            cycles.append((start, i, orjson.loads(lines[start])))
        elif vm in open_at:
            del open_at[vm]  # something else happened to it in between: not a clean cycle
    return cycles


def test_hostile_records_mixed_in_leave_every_other_bill_exact(tmp_path: Path) -> None:
    trace, truth_file = tmp_path / "trace.jsonl", tmp_path / "truth.json"
    assert main(["simulate", "--accounts", "40", "--days", "3", "--seed", "15",
                 "--output", str(trace), "--truth", str(truth_file), "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    lines = trace.read_bytes().splitlines()
    picked: dict[str, tuple[int, int, dict[str, Any]]] = {}
    for cycle in _vm_cycles(lines):  # the first clean start/stop cycle of three distinct VMs
        picked.setdefault(str(cycle[2]["id"]), cycle)
    assert len(picked) >= 3
    (s1, e1, start1), (s2, e2, _start2), (s3, _e3, start3) = list(picked.values())[:3]
    accounts = sorted(truth["accounts"])
    stranger = next(a for a in accounts if a != start3["account"])

    inserts: dict[int, list[bytes]] = {}  # insert before the line at this index
    moves: dict[int, int] = {e2: s2}  # case 4b: VM 2's STOP is read before its START

    def insert(at: int, *records: bytes) -> None:
        inserts.setdefault(at, []).extend(records)

    # case 1: sizes
    insert(len(lines) // 5, b"\x01\x02\x1f" * 60_000)  # control bytes, not JSON
    long_id = dict(start3, id="v" * 1_000_000)
    insert(len(lines) // 4, orjson.dumps(long_id))
    # case 2: an event time days ahead of its neighbours, early in the trace
    snap_t = parse_event_time(start1["eventDateTime"])
    assert snap_t is not None
    outlier = {"eventDateTime": format_event_time(snap_t + 2 * 86_400_000), "event":
               "SNAPSHOT.CREATE", "id": "snapshot-outlier", "account": accounts[0],
               "zone": start1.get("zone"), "resource": "com.cloud.storage.SnapshotVO"}
    insert(s1 + 1, orjson.dumps(outlier))
    # case 3: year 0 and before 1970
    insert(len(lines) // 3, orjson.dumps(dict(start3, id="vm-year-0",
                                              eventDateTime="0001-01-01 00:30:00 +1400")))
    insert(len(lines) // 3, orjson.dumps(dict(start3, id="vm-1969",
                                              eventDateTime="1969-12-31 23:59:59 +0000")))
    # case 4a: the START of VM 1 published again after its STOP
    insert(e1 + 1, lines[s1])
    # case 5: another account stops VM 3 while it runs (10 minutes after its start)
    t3 = parse_event_time(start3["eventDateTime"])
    assert t3 is not None
    insert(s3 + 1, orjson.dumps(dict(start3, event="VM.STOP", account=stranger,
                                      eventDateTime=format_event_time(t3 + 600_000))))

    mixed: list[bytes] = []
    for i, line in enumerate(lines):
        mixed.extend(inserts.get(i, []))
        if i in moves.values():
            mixed.extend(lines[k] for k, v in moves.items() if v == i)
        if i not in moves:
            mixed.append(line)
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_bytes(b"\n".join(mixed) + b"\n")

    out, rejects = tmp_path / "out", tmp_path / "rejects.jsonl"
    assert main(["replay", str(hostile), "--output", str(out), "--until", truth["until"],
                 "--rejects", str(rejects), "--no-progress"]) == 0

    rows = read_dataset(out).to_pylist()
    got = totals_from_intervals({**r, "duration_ms": int(r["duration_ms"])} for r in rows)
    want = truth_totals(truth)
    named = {k for k in got if k[2] == "snapshot-outlier"}
    assert len(named) == 1  # the outlier is billed for itself, from its own time
    diff = {k: (got.get(k), want.get(k)) for k in (set(got) | set(want)) - named
            if got.get(k) != want.get(k)}
    assert not diff, f"{len(diff)} bills moved, e.g. {list(diff.items())[:5]}"
    assert not any(r["account_id"] == stranger and r["resource_id"] == start3["id"]
                   for r in rows)

    rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    reasons = {r["reason"] for r in rejected}
    assert "invalid_event_time" in reasons
    assert len([r for r in rejected if r["reason"] == "invalid_event_time"]) >= 2
    assert max(len(line) for line in rejects.read_bytes().splitlines()) < 64_000
    # the two large records and the two bad instants are rejected, nothing else new
    malformed = len(truth["malformed"])
    assert len(rejected) == malformed + 4
