"""The engine's output does not depend on how source lanes interleave.

A resource's usage events arrive through one Kafka partition (CloudStack keys them by the
resource UUID), but account events (``ACCOUNT.CREATE``/``DELETE``, keyed by the account)
and action events of other entities come through others, and a consumer reads partitions
at uneven speeds, more so after a restart. The streaming worker and ``replay`` must emit the
same intervals whatever the interleaving, as long as each lane keeps its own order: closed
intervals are held until every lane has passed their end (see
:func:`metering.lifecycle.release`), then built with what event time says.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from metering.decode import decode
from metering.engine import Engine, Policy
from metering.events import Decoded, Source
from metering.intervals import UsageInterval
from metering.lifecycle import Context, apply_usage, release
from metering.periods import PeriodGrid
from metering.states import FOREVER, AccountState, Held, Slot
from tests.unit.test_properties import FAMILIES, RESOURCES

BASE = int(dt.datetime(2025, 3, 14, 9, 17, 3, tzinfo=dt.UTC).timestamp() * 1000)
LANES = 3
ACCOUNTS = sorted({account for _, _, account in RESOURCES})


def _stamp(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _action(t: int, event: str, entity: str, account: str, **extra: str) -> dict[str, Any]:
    return {"eventDateTime": _stamp(t), "event": event, "status": "Completed",
            "entity": "X", "entityuuid": entity, "user": "u", "account": account,
            "description": "Successfully completed", **extra}


@dataclass
class Lanes:
    """Records per lane, each lane in event-time order (as one Kafka partition is)."""

    records: list[list[bytes]]
    order: list[int]
    """The lane of each record in global event-time order."""


@st.composite
def lanes(draw: st.DrawFn) -> Lanes:
    per_lane: list[list[bytes]] = [[] for _ in range(LANES)]
    order: list[int] = []

    def put(lane: int, record: dict[str, Any]) -> None:
        per_lane[lane].append(json.dumps(record).encode())
        order.append(lane)

    t = BASE
    for i, account in enumerate(ACCOUNTS):  # accounts exist before their resources
        t += 1000
        put(draw(st.integers(0, LANES - 1)), _action(
            t, "ACCOUNT.CREATE", account, "root", Domain=f"dom-{i}"))
    home = {rid: draw(st.integers(0, LANES - 1)) for rid, _, _ in RESOURCES}
    for _ in range(draw(st.integers(1, 40))):
        t += 1000 * draw(st.one_of(st.integers(1, 120), st.integers(1, 5 * 3600)))
        rid, family, account = draw(st.sampled_from(RESOURCES))
        kind = draw(st.sampled_from(["usage"] * 4 + ["offering"]))
        if kind == "usage":  # a resource's usage events: always its home lane
            put(home[rid], {"eventDateTime": _stamp(t), "event": draw(
                st.sampled_from(FAMILIES[family])), "resource": "com.cloud.X", "id": rid,
                "account": account, "zone": "zone-1"})
        else:  # an action event with attributes, on any lane (the worst case)
            key = "DiskOffering" if family == "vol" else "ServiceOffering"
            put(draw(st.integers(0, LANES - 1)), _action(
                t, "VM.UPGRADE", rid, account, **{key: f"off-{draw(st.integers(0, 3))}"}))
    if draw(st.booleans()):  # an account deleted last (CloudStack sends nothing after)
        t += 1000 * draw(st.integers(1, 7200))
        put(draw(st.integers(0, LANES - 1)), _action(
            t, "ACCOUNT.DELETE", draw(st.sampled_from(ACCOUNTS)), "root"))
    return Lanes(per_lane, order)


def _run(records: list[list[bytes]], order: list[int], lateness: int | None,
         ticks: bool) -> Counter[UsageInterval]:
    meter = Engine(Policy(grid=PeriodGrid("hour", "UTC"), lateness_ms=lateness,
                              wait_for_inputs=True))
    meter.report({}, {"cs": LANES}, None)  # the worker's first tick names every lane
    out: list[UsageInterval] = []
    position = [0] * LANES
    for lane in order:
        offset = position[lane]
        position[lane] += 1
        out += meter.process(decode(records[lane][offset]), Source("cs", lane, offset))
        if ticks:
            out += meter.advance().rows
    return Counter(out + meter.finish().rows)


@given(lanes(), st.data(), st.sampled_from([None, 0, 60_000]), st.booleans())
def test_any_interleaving_of_lanes_gives_the_same_intervals(
    trace: Lanes, data: st.DataObject, lateness: int | None, ticks: bool
) -> None:
    in_time = _run(trace.records, trace.order, lateness, ticks)
    order = list(trace.order)
    shuffled = data.draw(st.permutations(order), label="interleaving")
    # keep each lane's own order: only which lane goes next is shuffled
    assert sorted(shuffled) == sorted(order)
    assert _run(trace.records, shuffled, lateness, ticks) == in_time


def test_a_close_waits_for_the_attribute_change_of_a_slower_lane() -> None:
    """The upgrade's new offering (lane 1) precedes the close (lane 0) in event time but
    arrives after it: the interval waits for lane 1 and carries the new offering."""
    hour = 3_600_000
    meter = Engine(Policy(lateness_ms=0, wait_for_inputs=True))
    meter.report({}, {"cs": 2}, None)

    def usage(event: str, t: int) -> bytes:
        return json.dumps({"eventDateTime": _stamp(t), "event": event, "resource": "X",
                           "id": "vm-1", "account": "acct-0", "zone": "z"}).encode()

    start = BASE - BASE % hour + 10_000
    assert meter.process(decode(usage("VM.CREATE", start)), Source("cs", 0, 0)) == []
    closed = meter.process(decode(usage("VM.UPGRADE", start + 61_000)), Source("cs", 0, 1))
    assert closed == []  # held: lane 1 has not passed the close yet
    assert meter.process(decode(json.dumps(_action(
        start + 60_000, "VM.UPGRADE", "vm-1", "acct-0", ServiceOffering="so-big")).encode()),
        Source("cs", 1, 0)) == []  # lane 1 at start + 60 s: still before the close
    rows = meter.process(decode(json.dumps(_action(
        start + 62_000, "ACCOUNT.CREATE", "acct-0", "root", Domain="dom-0")).encode()),
        Source("cs", 1, 1))
    assert [(r.start, r.end, r.offering_id, r.domain_id, r.close_reason) for r in rows] == [
        (start, start + 61_000, "so-big", "dom-0", "VM.UPGRADE")]  # applied, then released


def test_release_closes_at_an_account_deletion_before_the_held_end() -> None:
    src = Source("cs", 0, 7)
    state = apply_usage(None, decode(json.dumps({  # type: ignore[arg-type]
        "eventDateTime": _stamp(BASE), "event": "VOLUME.CREATE", "resource": "X",
        "id": "vol-1", "account": "acct-0", "zone": "z"}).encode()), Source("cs", 0, 1),
        Context(PeriodGrid(), {})).state
    slot = state.slots.pop((6, "", "acct-0"))
    state.held.append(Held((6, "", "acct-0"), slot, BASE + 50_000, "VOLUME.DELETE", src, None))
    deleted = Source("cs", 1, 3)
    accounts = {"acct-0": AccountState("dom", BASE + 20_000, {}, deleted)}
    rows = release(state, "vol-1", FOREVER, Context(PeriodGrid(), accounts))
    assert [(r.end, r.close_reason, r.source_partition, r.domain_id) for r in rows] == [
        (BASE + 20_000, "account_delete", 1, "dom")]
    assert state.held == []
    assert isinstance(slot, Slot)


def _many_open(meter: Engine, n: int) -> None:
    meter.report({}, {"cs": 1}, None)
    for i in range(n):
        meter.process(decode(json.dumps({
            "eventDateTime": _stamp(BASE + i * 1000), "event": "VOLUME.CREATE",
            "resource": "X", "id": f"vol-{i:03d}", "account": "acct-0", "zone": "z"}).encode()),
            Source("cs", 0, i))


def test_a_period_cut_in_chunks_emits_what_one_call_emits() -> None:
    """The meter agent cuts a period ``CUT_CHUNK`` resources at a time, and records may be
    applied between chunks: the rows are the same as one cut of everything."""
    hour = 3_600_000
    whole, chunked = (Engine(Policy(lateness_ms=0, wait_for_inputs=True,
                                        max_watermark_jump_ms=None))  # a 3 h step: no limit
                      for _ in range(2))
    for meter in (whole, chunked):
        _many_open(meter, 25)
    def delete(i: int, t: int) -> Decoded:
        return decode(json.dumps({"eventDateTime": _stamp(t), "event": "VOLUME.DELETE",
                                  "resource": "X", "id": f"vol-{i:03d}", "account": "acct-0",
                                  "zone": "z"}).encode())

    late, mid = delete(20, BASE + 3 * hour), delete(24, BASE + 3 * hour + 1000)
    rows_whole = whole.process(late, Source("cs", 0, 25)) + whole.advance().rows
    rows_whole += whole.process(mid, Source("cs", 0, 26))
    # the same records; the cut goes 4 resources per step, vol-024 is closed between steps
    # (before the cut reaches it: it is cut first, lazily, then closed)
    rows = chunked.process(late, Source("cs", 0, 25))
    rows += chunked.advance(4).rows
    rows += chunked.process(mid, Source("cs", 0, 26))
    steps = 1
    while chunked.cutting:
        rows += chunked.advance(4).rows
        steps += 1
    assert steps == 6  # 24 open resources when the cut starts, 4 per step
    assert Counter(rows) == Counter(rows_whole)
    assert len(rows_whole) > 25
