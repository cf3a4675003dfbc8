"""Shared pieces of the reliability tests: a simulated cloud on a topic with its truth, the
expected intervals (replay of the same records), progress of the worker's group, and the
usage topic read back and deduplicated by ``interval_id``.

Sizes: ``METERING_RELIABILITY=full`` (``make test-reliability``) uses the issue's sizes
(a 300 000-record trace); otherwise a reduced trace keeps ``make test`` short.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from metering.eventtime import format_event_time
from tests.integration.kafkautil import _wait_topic, consume, dump_kcat, produce

FULL = os.environ.get("METERING_RELIABILITY") == "full"
PARTITIONS = 4
SENTINEL_AFTER_MS = 5_400_000
"""The sentinels' event time after the simulated end: 1.5 h, so every period completes."""


@dataclass
class Cloud:
    """A simulated cloud produced to ``topic`` (plus two sentinels per partition)."""

    topic: str
    records: int
    truth: dict[str, Any]
    expected: dict[str, dict[str, Any]]
    """interval_id -> row, from ``metering replay`` of the topic's records (no crash)."""

    @property
    def final_ms(self) -> int:
        """The newest event time of the input (the sentinels'), UTC ms."""
        return int(self.truth["until_ms"]) + SENTINEL_AFTER_MS


def simulated_cloud(bootstrap: str, topic: str, tmp: Path, accounts: int, days: float,
                    seed: int) -> Cloud:
    """Simulate to ``topic``; add sentinels that move every lane past the horizon; replay."""
    from agents.cli import main as cli
    from tests.integration.test_worker import replay_rows

    truth_file = tmp / f"truth-{topic}.json"
    assert cli(["simulate", "--accounts", str(accounts), "--days", str(days), "--seed",
                str(seed), "--to-kafka", bootstrap, "--topic", topic, "--partitions",
                str(PARTITIONS), "--truth", str(truth_file), "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    end = truth["until_ms"]
    for p in range(PARTITIONS):
        produce(bootstrap, topic, [(None, orjson.dumps({
            "eventDateTime": format_event_time(end + SENTINEL_AFTER_MS), "event": "VM.STOP",
            "resource": "com.cloud.vm.VirtualMachine", "id": f"sentinel-{p}",
            "account": "sentinel", "zone": "z"}))] * 2, partition=p)
    dump = dump_kcat(bootstrap, topic, deadline_s=120)
    work = tmp / f"replay-{topic}"
    work.mkdir()
    return Cloud(topic, len(dump), truth, replay_rows(dump, work))


def committed_progress(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` the consumer ``group`` has committed (sum over partitions)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            got = await admin.list_consumer_group_offsets(group, partitions=tps)
            return sum(max(0, meta.offset) for meta in got.values() if meta is not None)
        finally:
            await admin.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), 20))
    except Exception:  # group not there yet, broker restarting: no progress known
        return 0


@dataclass
class Output:
    """The usage topic read back."""

    messages: int
    rows: dict[str, dict[str, Any]]
    """interval_id -> row (after checking that every repeat is identical)."""

    @property
    def duplicates(self) -> int:
        return self.messages - len(self.rows)


@dataclass
class Settled:
    """Where the worker stood when :func:`read_usage_settled` returned."""

    complete: bool
    """Every expected interval was read."""
    settled: bool
    """The worker had processed everything: the output can no longer change."""
    how: str
    """A sentence for failure messages (what was waited for, how long)."""


def read_usage(bootstrap: str, usage_topic: str, expected: set[str],
               deadline_s: float) -> Output:
    """Consume the usage topic until it holds every expected id; check repeats are equal
    (for tests whose worker is known to be caught up; the crash loop uses
    :func:`read_usage_settled`)."""
    remaining = set(expected)
    read = [0]

    def done(msgs: list[Any]) -> bool:  # looks only at new messages
        for m in msgs[read[0]:]:
            remaining.discard(orjson.loads(m.value)["interval_id"])
        read[0] = len(msgs)
        return not remaining

    return _output(consume(bootstrap, usage_topic, done, deadline_s=deadline_s))


def read_usage_settled(bootstrap: str, app_id: str, input_topic: str, usage_topic: str,
                       expected: set[str], final_ms: int, deadline_s: float
                       ) -> tuple[Output, Settled]:
    """Read the usage topic until it holds every expected id, or until the worker settled.

    The worker has *settled* when, on every partition of its internal events topic, a tick
    reporting every input lane at or past ``final_ms`` (the newest event time of the input:
    the sentinels) is followed by the group's committed offset. Such a tick is applied after
    every forwarded record of that partition (it was produced after they were delivered),
    and the usage it caused was delivered before that offset was committed; so from then on
    the output can no longer change, and anything missing is lost, however slow the machine
    (no wall-clock verdict). ``deadline_s`` only bounds a worker that never settles.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from metering.events import lane_of
    from metering.wire import Tick, decode_wire

    events_topic = f"{app_id}-events"

    async def run() -> tuple[Output, Settled]:
        remaining = set(expected)
        got: list[Any] = []
        final_tick: dict[int, int] = {}  # events partition -> offset of a final tick
        lanes = {lane_of(input_topic, p) for p in range(PARTITIONS)}
        await _wait_topic(bootstrap, usage_topic, deadline_s)
        usage = AIOKafkaConsumer(usage_topic, bootstrap_servers=bootstrap, group_id=None,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        events = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                  auto_offset_reset="earliest", enable_auto_commit=False)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await usage.start()
        await events.start()
        await admin.start()
        started = time.monotonic()
        try:
            tps = [TopicPartition(events_topic, p) for p in range(PARTITIONS)]
            events.assign(tps)
            while True:
                for msgs in (await usage.getmany(timeout_ms=200)).values():
                    got.extend(msgs)
                    for m in msgs:
                        remaining.discard(orjson.loads(m.value)["interval_id"])
                elapsed = time.monotonic() - started
                if not remaining:
                    return _output(got), Settled(True, True, f"all read in {elapsed:.0f} s")
                for tp, msgs in (await events.getmany(timeout_ms=200)).items():
                    for m in msgs:
                        if tp.partition in final_tick or not m.value.startswith(b"[0,"):
                            continue
                        tick = decode_wire(m.value)
                        if isinstance(tick, Tick) and lanes <= tick.lanes.keys() and all(
                                tick.lanes[lane][0] >= final_ms for lane in lanes):
                            final_tick[tp.partition] = m.offset
                if len(final_tick) == PARTITIONS:
                    committed = await admin.list_consumer_group_offsets(app_id, partitions=tps)
                    if all((meta := committed.get(tp)) is not None
                           and meta.offset > final_tick[tp.partition] for tp in tps):
                        # the usage of those ticks is delivered: read the topic to its end
                        ends = await usage.end_offsets(list(usage.assignment()))
                        while [tp for tp, end in ends.items() if await usage.position(tp) < end]:
                            for msgs in (await usage.getmany(timeout_ms=200)).values():
                                got.extend(msgs)
                        return _output(got), Settled(
                            False, True, f"settled after {elapsed:.0f} s: every events "
                            f"partition committed past a tick at the final event time "
                            f"({final_tick})")
                if elapsed > deadline_s:
                    return _output(got), Settled(
                        False, False, f"not settled after {elapsed:.0f} s (final ticks seen "
                        f"on partitions {sorted(final_tick)}): the worker is stuck or slow")
        finally:
            await usage.stop()
            await events.stop()
            await admin.close()

    return asyncio.run(run())


def _output(got: list[Any]) -> Output:
    rows: dict[str, dict[str, Any]] = {}
    for m in got:
        row = orjson.loads(m.value)
        seen = rows.setdefault(row["interval_id"], row)
        assert seen == row, f"a repeat of {row['interval_id']} differs:\n{seen}\n{row}"
    return Output(len(got), rows)


def assert_exact(out: Output, cloud: Cloud) -> None:
    """Deduplicated usage == replay of the same records, and == the simulator's truth."""
    from metering.simulate.truth import totals_from_intervals, truth_totals

    missing = set(cloud.expected) - set(out.rows)
    extra = set(out.rows) - set(cloud.expected)
    assert not missing, f"{len(missing)} intervals lost"
    assert not extra, f"{len(extra)} intervals that replay does not produce"
    for interval_id, row in out.rows.items():
        want = cloud.expected[interval_id]
        assert row == want, ({k: (row[k], want[k]) for k in row if row[k] != want.get(k)},
                             {k: row[k] for k in ("account_id", "usage_type_name", "start",
                                                  "end", "close_reason", "source_partition",
                                                  "source_offset")})
    end = cloud.truth["until_ms"]
    before_end = [dict(r, duration_ms=min(r["end"], end) - r["start"])
                  for r in out.rows.values() if r["start"] < end]
    assert totals_from_intervals(before_end) == truth_totals(cloud.truth)


def wait_progress(bootstrap: str, group: str, topic: str, target: int, proc: Any,
                  deadline_s: float) -> float:
    """Poll the group's committed progress until ``target``; return when it got there."""
    end = time.monotonic() + deadline_s
    while True:
        if committed_progress(bootstrap, group, topic) >= target:
            return time.monotonic()
        assert proc.process is not None
        assert proc.process.poll() is None, f"worker exited:\n{proc.tail()}"
        assert time.monotonic() < end, f"no progress to {target} in {deadline_s}s\n{proc.tail()}"
        time.sleep(0.3)  # poll with a deadline


def summary(counter: Counter[str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items()))


# --- Loss diagnosis: which layer lost a record (input -> events topic -> state -> usage) ---

@dataclass
class Snapshot:
    """Offsets right after a kill: the group's commits and the topics' end offsets."""

    label: str
    committed: dict[str, dict[int, int]]
    """topic -> partition -> committed offset of the worker's group (-1: none)."""
    ends: dict[str, dict[int, int]]
    """topic -> partition -> log-end offset."""


def _app_topics(app_id: str) -> dict[str, str]:
    return {"events": f"{app_id}-events", "entities": f"{app_id}-entities-changelog",
            "accounts": f"{app_id}-accounts-changelog"}


def snapshot(bootstrap: str, app_id: str, input_topic: str, label: str) -> Snapshot:
    """Committed offsets (input and internal events topic) and the end offsets of the
    internal topics and changelogs, e.g. right after a kill (they are final for it)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topics = [input_topic, *_app_topics(app_id).values()]

    async def run() -> Snapshot:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
            got = await admin.list_consumer_group_offsets(app_id, partitions=tps[:2 * PARTITIONS])
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
            await admin.close()
        committed: dict[str, dict[int, int]] = {}
        for tp, meta in got.items():
            committed.setdefault(tp.topic, {})[tp.partition] = -1 if meta is None else meta.offset
        end: dict[str, dict[int, int]] = {}
        for tp, off in ends.items():
            end.setdefault(tp.topic, {})[tp.partition] = off
        return Snapshot(label, committed, end)

    return asyncio.run(asyncio.wait_for(run(), 30))


def _total(snap: Snapshot) -> int:
    return sum(max(0, o) for offsets in snap.committed.values() for o in offsets.values())


def wait_resumed(bootstrap: str, app_id: str, input_topic: str, killed: Snapshot, proc: Any,
                 deadline_s: float) -> float:
    """Poll until the group committed more (input or internal events topic) than at
    ``killed``: the restarted worker restored its state and processed a batch. Ticks keep
    the events topic moving, so this also holds once the input is consumed. Returns when."""
    end = time.monotonic() + deadline_s
    while True:
        if _total(snapshot(bootstrap, app_id, input_topic, "poll")) > _total(killed):
            return time.monotonic()
        assert proc.process is not None
        assert proc.process.poll() is None, f"worker exited:\n{proc.tail()}"
        assert time.monotonic() < end, f"no progress after restart in {deadline_s}s\n{proc.tail()}"
        time.sleep(0.3)  # poll with a deadline


def read_topic(bootstrap: str, topic: str, deadline_s: float = 60.0) -> list[Any]:
    """Every record of ``topic`` (all partitions, from the earliest up to the current end)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            got: list[Any] = []
            end = time.monotonic() + deadline_s
            while time.monotonic() < end:
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                    break
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    got.extend(m for m in msgs if m.offset < ends[TopicPartition(m.topic,
                                                                                 m.partition)])
            return got
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _written_by(offset: int, partition: int, topic_ends: list[dict[int, int]]) -> str:
    """Which process produced a record at ``offset``: the index of the first kill whose
    end offset passed it (``w0`` = the first worker), or ``last`` (the surviving one)."""
    for i, ends in enumerate(topic_ends):
        if offset < ends.get(partition, 0):
            return f"w{i}"
    return "last"


def _committed_by(offset: int, partition: int, commits: list[dict[int, int]]) -> str:
    for i, committed in enumerate(commits):
        if committed.get(partition, -1) > offset:
            return f"w{i}"
    return "last" if commits else "?"


def explain_loss(bootstrap: str, app_id: str, rows: list[dict[str, Any]],
                 snapshots: list[Snapshot], logs: list[str], limit: int = 6) -> str:
    """A report naming, for the resources of the lost ``rows``, the layer that lost them.

    For each resource it lists its records on the internal events topic (which worker
    committed past each), its entity states on the changelog (which worker wrote each, and
    its open slots), and a verdict:

    * ``ingest``: the record that opened the lost interval never reached the events topic;
    * ``meter``: the open is on the events topic and its offset was committed, but no
      changelog state of the resource ever held the slot: committed without being applied
      (issue 18: Faust counted it as acked after a restore), or its state write was lost;
    * ``restore``: the changelog held the open state, yet the next worker did not cut it.
    """
    from metering.codec import decode_entity
    from metering.wire import Routed, Tick, decode_wire

    topics = _app_topics(app_id)
    events = read_topic(bootstrap, topics["events"])
    entities = read_topic(bootstrap, topics["entities"])
    ev_commits = [s.committed.get(topics["events"], {}) for s in snapshots]
    cl_ends = [s.ends.get(topics["entities"], {}) for s in snapshots]
    out = ["--- loss report ---", "offsets after each kill (committed input / committed "
           "events / end events / end entities changelog):"]
    for s in snapshots:
        out.append(f"  {s.label}: " + " | ".join(
            str([m.get(p, -1) for p in range(PARTITIONS)]) for m in (
                next((v for k, v in s.committed.items() if k not in topics.values()), {}),
                s.committed.get(topics["events"], {}), s.ends.get(topics["events"], {}),
                s.ends.get(topics["entities"], {}))))
    resources: dict[str, dict[str, Any]] = {}
    for row in rows:
        resources.setdefault(row["resource_id"], row)
    for rid, row in list(resources.items())[:limit]:
        key = rid.encode()
        out.append(f"resource {rid}: lost e.g. {row['usage_type_name']} "
                   f"[{row['start']}, {row['end']}) lineage p{row['source_partition']}"
                   f"@{row['source_offset']}")
        mine = [m for m in events if m.key == key]
        for m in mine:
            item = decode_wire(m.value)
            if isinstance(item, Tick):
                continue
            v = item.value
            out.append(f"  events p{m.partition}@{m.offset} {type(v).__name__} "
                       f"{getattr(v, 'event_type', '')} t={getattr(v, 'time_ms', '')} "
                       f"src p{item.source.partition}@{item.source.offset}; committed past by "
                       f"{_committed_by(m.offset, m.partition, ev_commits)}")
        states = [m for m in entities if m.key == key]
        for m in states:
            st = decode_entity(m.value) if m.value is not None else None
            slots = "tombstone" if st is None else ", ".join(
                f"{k[0]}@{s.start} by p{s.opened_by.partition}@{s.opened_by.offset}"
                for k, s in st.slots.items()) or "-"
            out.append(f"  changelog p{m.partition}@{m.offset} written by "
                       f"{_written_by(m.offset, m.partition, cl_ends)}: open [{slots}] "
                       f"offsets {None if st is None else st.offsets}")
        opens = [m for m in mine if isinstance(item := decode_wire(m.value), Routed)
                 and getattr(item.value, "time_ms", row["start"] + 1) <= row["start"]]
        holding = [m for m in states if m.value is not None and any(
            s.start <= row["start"] for s in decode_entity(m.value).slots.values())]
        if not opens:
            verdict = "ingest: no record at or before the interval reached the events topic"
        elif not holding:
            verdict = ("meter: the open is on the events topic (committed past, see above) "
                       "but no changelog state ever held its slot: committed without being "
                       "applied, or its state write lost")
        else:
            verdict = ("restore: the changelog held the open slot (see above); the worker "
                       "after it did not cut it")
        out.append(f"  verdict: {verdict}")
    for i, log in enumerate(logs):
        out.append(f"worker {i} log:")
        out.extend(f"  {line}" for line in log.splitlines())
    return "\n".join(out)
