"""The Kubernetes StatefulSet's promise on a real broker: static group membership (KIP-345).

Two workers run as the chart runs them: ``group_instance_id`` metering-0 and metering-1 (in
Kubernetes, the pod names through the downward API), each with its own RocksDB directory (its
volume claim). The input is a simulated cloud copied into the input topic in four chunks.

1. Both workers meter the first chunk, are caught up and idle. metering-0 is killed (kill -9:
   a node failure or an OOM kill), the second chunk is produced while it is down, and it is
   started again with the same id and directory well within ``session_timeout``: the group
   generation does not change (the broker hands the returning member its old assignment),
   metering-1 never joins, syncs or revokes again, and metering-0 restores nothing from the
   changelog topics (its RocksDB directory is current).
2. A rolling update: metering-0 is stopped with SIGTERM (a clean Faust stop; a static member
   sends no LeaveGroup), the third chunk is produced, and the same pod comes back: again
   the same generation, no rebalance of metering-1, nothing restored.
3. For comparison, metering-0 is killed again and the last chunk (with the sentinels that
   close every period) is produced; a stranger (new id metering-2, empty directory: a pod
   rescheduled without its volume) takes its place: a rebalance, which waits for the dead
   static member's session to expire, and a restore from the changelog.

The usage topic after deduplication by ``interval_id`` equals ``metering replay`` of the
input topic (and the simulator's truth). Kill-to-caught-up times of both restarts are
printed and recorded as test properties.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kafkautil import consume, dump_kcat, end_offsets, produce
from tests.integration.reliability import (
    PARTITIONS,
    Cloud,
    assert_exact,
    read_usage,
    simulated_cloud,
)
from tests.integration.test_worker import replay_rows
from tests.integration.workerproc import WorkerProc

SESSION_TIMEOUT = "30"
"""The default session timeout (seconds): the restart must come back within it."""

WORKER_ENV = {"METERING_IDLE_ADVANCE": "100000", "METERING_SESSION_TIMEOUT": SESSION_TIMEOUT}
"""No wall-clock advance: the result depends on the records only (the sentinels close it)."""

JOINED = re.compile(r"Joined group '([^']+)' \(generation (\d+)\)")
SYNCED = "Successfully synced group"
REVOKING = "Revoking previously assigned partitions"
RESTORING = "Restoring state from changelog topics"


@pytest.fixture
def procs() -> Iterator[list[WorkerProc]]:
    started: list[WorkerProc] = []
    yield started
    for w in started:
        w.kill()


def _log(w: WorkerProc) -> str:
    assert w.log_path is not None
    return w.log_path.read_text(errors="replace")


def _generations(w: WorkerProc) -> list[int]:
    """Generations this worker process joined, in order (aiokafka's INFO log)."""
    return [int(m.group(2)) for m in JOINED.finditer(_log(w))]


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Partition -> committed offset of ``group`` on ``topic`` (-1: none)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            got = await admin.list_consumer_group_offsets(group, partitions=tps)
            return {tp.partition: (meta.offset if meta is not None else -1)
                    for tp, meta in got.items()}
        finally:
            await admin.close()

    return asyncio.run(asyncio.wait_for(run(), 20))


def _wait_caught_up(bootstrap: str, group: str, topic: str, workers: list[WorkerProc],
                    deadline_s: float) -> float:
    """Poll until the group committed every input record; return the monotonic time."""
    ends = end_offsets(bootstrap, topic)
    end = time.monotonic() + deadline_s
    while True:
        try:
            got = _committed(bootstrap, group, topic)
        except Exception:  # the group coordinator busy: not known yet
            got = {}
        if got and all(got.get(p, -1) >= off for p, off in ends.items()):
            return time.monotonic()
        for w in workers:
            assert w.process is not None
            assert w.process.poll() is None, f"worker exited:\n{w.tail()}"
        assert time.monotonic() < end, (
            f"not caught up in {deadline_s}s: committed {got}, ends {ends}\n"
            + "\n".join(w.tail(30) for w in workers))
        time.sleep(0.2)  # poll with a deadline


def _wait_quiet(bootstrap: str, topics: list[str], quiet_s: float, deadline_s: float) -> None:
    """Poll until the end offsets of ``topics`` (the changelogs) stay put ``quiet_s``."""
    end = time.monotonic() + deadline_s
    last: dict[str, dict[int, int]] = {}
    since = time.monotonic()
    while time.monotonic() < end:
        now = {t: end_offsets(bootstrap, t) for t in topics}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.3)  # poll with a deadline
    raise AssertionError(f"changelogs still growing after {deadline_s}s: {last}")


def _chunks(bootstrap: str, stage: str, parts: tuple[float, ...]) -> list[
        dict[int, list[tuple[bytes | None, bytes]]]]:
    """The staged records per partition in order, cut into chunks at the ``parts``."""
    total = sum(end_offsets(bootstrap, stage).values())
    msgs = consume(bootstrap, stage, lambda got: len(got) >= total, deadline_s=120)
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for m in msgs:
        by_partition[m.partition].append(m)
    chunks: list[dict[int, list[tuple[bytes | None, bytes]]]] = [{} for _ in parts]
    for p, ms in by_partition.items():
        ms.sort(key=lambda m: m.offset)
        start = 0
        for i, share in enumerate(parts):
            stop = len(ms) if i == len(parts) - 1 else start + int(len(ms) * share)
            chunks[i][p] = [(m.key, m.value) for m in ms[start:stop]]
            start = stop
    return chunks


def _produce_chunk(bootstrap: str, topic: str,
                   chunk: dict[int, list[tuple[bytes | None, bytes]]]) -> None:
    for p, records in sorted(chunk.items()):
        produce(bootstrap, topic, records, partition=p)


def test_static_member_restart_keeps_its_assignment_and_restores_nothing(
    kafka_bootstrap: str, tmp_path: Path, unique_name: Callable[[str], str],
    topic_factory: Callable[..., str], procs: list[WorkerProc],
    record_property: Callable[[str, object], None],
) -> None:
    bootstrap = kafka_bootstrap
    stage = simulated_cloud(bootstrap, unique_name("csstage"), tmp_path, accounts=40,
                            days=3, seed=345)
    chunks = _chunks(bootstrap, stage.topic, (0.4, 0.2, 0.2, 0.2))
    topic = topic_factory(partitions=PARTITIONS, prefix="csstatic")
    app = unique_name("static")

    def worker(instance: str, data: Path, web_port: int = 0) -> WorkerProc:
        # A returning pod keeps its port: Faust's assignor puts the member's web URL into
        # its assignment and asserts it on the way back (PartitionAssignor.on_assignment);
        # another URL kills aiokafka's coordinator routine (tests/unit/test_static_membership)
        w = WorkerProc(bootstrap, app, topic, data, web_port=web_port,
                       extra={**WORKER_ENV, "METERING_GROUP_INSTANCE_ID": instance})
        procs.append(w)
        return w.start()

    changelogs = [f"{app}-entities-changelog", f"{app}-accounts-changelog"]

    # -- both workers meter the first chunk, then go quiet
    _produce_chunk(bootstrap, topic, chunks[0])
    a = worker("metering-0", tmp_path / "metering-0")
    b = worker("metering-1", tmp_path / "metering-1")
    a.wait_ready()
    b.wait_ready()
    _wait_caught_up(bootstrap, app, topic, [a, b], deadline_s=300)
    _wait_quiet(bootstrap, changelogs, quiet_s=3.0, deadline_s=120)
    generation = max(_generations(a) + _generations(b))
    assert _generations(b), f"metering-1 never joined:\n{b.tail()}"
    b_log_before = _log(b)
    b_rebalances = (b_log_before.count(SYNCED), b_log_before.count(REVOKING))

    def returned_without_rebalance(how: str) -> None:
        """metering-0 (``a``) is back in the same generation; metering-1 never noticed."""
        assert _generations(a) == [generation], (
            f"{how}, the returning static member joined generations {_generations(a)}, "
            f"expected [{generation}] (no rebalance):\n{a.grep('group', 'Revoking', 'assign')}")
        b_log = _log(b)
        assert (b_log.count(SYNCED), b_log.count(REVOKING)) == b_rebalances, (
            f"{how}, metering-1 rebalanced while metering-0 restarted:\n"
            + "\n".join(b_log[len(b_log_before):].splitlines()[-40:]))
        assert _generations(b)[-1] <= generation
        assert RESTORING not in _log(a), (
            f"{how}, metering-0 restored from the changelog although its directory was "
            f"kept:\n{a.grep('Highwater', 'Reading Starts', 'Restor', 'Recovery')}")

    # -- kill -9 metering-0; the second chunk arrives while it is down; same id, same dir
    a.kill()
    killed = time.monotonic()
    _produce_chunk(bootstrap, topic, chunks[1])
    a = worker("metering-0", tmp_path / "metering-0", web_port=a.web_port)
    started = time.monotonic()
    caught_up = _wait_caught_up(bootstrap, app, topic, [a, b], deadline_s=300)
    static_from_kill, static_from_start = caught_up - killed, caught_up - started
    assert started - killed < float(SESSION_TIMEOUT), "restart not within the session"
    returned_without_rebalance("after kill -9")
    _wait_quiet(bootstrap, changelogs, quiet_s=3.0, deadline_s=120)

    # -- a rolling update: SIGTERM (a clean Faust stop; a static member sends no
    #    LeaveGroup), the third chunk arrives, the same pod comes back
    stopping = time.monotonic()
    assert a.stop() == 0, a.tail()
    stopped = time.monotonic()
    _produce_chunk(bootstrap, topic, chunks[2])
    a = worker("metering-0", tmp_path / "metering-0", web_port=a.web_port)
    caught_up = _wait_caught_up(bootstrap, app, topic, [a, b], deadline_s=300)
    rolled_from_stop, stop_took = caught_up - stopping, stopped - stopping
    returned_without_rebalance("after SIGTERM")
    _wait_quiet(bootstrap, changelogs, quiet_s=3.0, deadline_s=120)

    # -- for comparison: kill -9 again, a stranger (new id, empty dir) takes its place
    a.kill()
    killed = time.monotonic()
    _produce_chunk(bootstrap, topic, chunks[3])
    c = worker("metering-2", tmp_path / "metering-2")
    started = time.monotonic()
    caught_up = _wait_caught_up(bootstrap, app, topic, [c, b], deadline_s=600)
    fresh_from_kill, fresh_from_start = caught_up - killed, caught_up - started
    assert max(_generations(c)) > generation, "a stranger joined without a rebalance?"

    # -- the usage after dedup equals replay of the whole input topic, and the truth
    work = tmp_path / "replay-static"
    work.mkdir()
    dump = dump_kcat(bootstrap, topic, deadline_s=120)
    cloud = Cloud(topic, len(dump), stage.truth, replay_rows(dump, work))
    assert cloud.records == stage.records
    out = read_usage(bootstrap, b.usage_topic, set(cloud.expected), deadline_s=240)
    assert_exact(out, cloud)

    figures = {
        "records": cloud.records, "session_timeout_s": float(SESSION_TIMEOUT),
        "static_kill_to_caught_up_s": round(static_from_kill, 1),
        "static_start_to_caught_up_s": round(static_from_start, 1),
        "sigterm_stop_s": round(stop_took, 1),
        "sigterm_stop_to_caught_up_s": round(rolled_from_stop, 1),
        "stranger_kill_to_caught_up_s": round(fresh_from_kill, 1),
        "stranger_start_to_caught_up_s": round(fresh_from_start, 1),
        "ratio_stranger_to_static_from_kill": round(fresh_from_kill / static_from_kill, 2),
        "stranger_restored": RESTORING in _log(c), "duplicates": out.duplicates,
    }
    for k, v in figures.items():
        record_property(k, v)
    print(f"\nstatic membership: {figures}")
