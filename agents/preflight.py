"""Start-up checks of ``metering worker``, run before Faust starts any agent.

1. Wait for the broker (``broker_wait_seconds``: 3 x ``session_timeout``), with a log line
   saying what it waits for; on expiry exit 1 with one clear line, no traceback.
2. Compare ``partitions`` with the real partition counts of the existing internal events
   topic and the tables' changelog topics (:func:`metering.guards.partition_problems`);
   refuse (exit 2) on a mismatch. Missing ones are created here, as Faust would, and
   waited for until every partition has a leader (see :func:`_create_state_topics`); so
   are the usage and rejects topics (``partitions`` partitions, not checked), which the
   agents send to from their first batch.
3. Compare the period grid the state was built with (the last record of the compacted
   grid topic ``<app_id>-grid``) with ``period``/``timezone``
   (:func:`metering.guards.grid_decision`); refuse (exit 2) on a change unless
   ``force_period_change`` is set. The grid is recorded when the state is new.

Why a topic for the grid: it is a property of the whole state (every partition, both
tables), it must survive losing the RocksDB directory (Kafka keeps it, like the
changelogs), and it is read here, before Faust assigns any partition, so no record is ever
processed under a grid the state was not built with. One compacted record, key ``grid``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from agents import kafkacheck
from agents.errors import PreflightError as PreflightError
from agents.kafkaclient import aiokafka_options
from metering.guards import Grid, GridAction, grid_decision, partition_refusal
from metering.settings import Settings

log = logging.getLogger("metering.preflight")

EXIT_UNREACHABLE = 1
"""Broker unreachable within the deadline: a restart may help."""
EXIT_REFUSED = 2
"""Settings refused against the existing state: a restart will not help."""
GRID_KEY = b"grid"


def broker_wait_seconds(settings: Settings) -> float:
    """How long start-up waits for the broker: 3 x ``session_timeout`` (90 s by default)."""
    return 3 * settings.session_timeout


def grid_topic(settings: Settings) -> str:
    """The compacted one-partition topic holding the grid of ``app_id``'s state."""
    return f"{settings.app_id}-grid"


async def _connect(settings: Settings, deadline_s: float) -> Any:
    """A started admin client, retried until ``deadline_s``; PreflightError on expiry."""
    from aiokafka.admin import AIOKafkaAdminClient

    start = time.monotonic()
    announced = 0.0
    while True:
        admin = AIOKafkaAdminClient(**aiokafka_options(settings), request_timeout_ms=5000)
        try:
            # One connection with the security settings first: a wrong password, an unknown
            # CA or the wrong protocol is named at once (exit 2), not waited for.
            await kafkacheck.probe(settings)
            await asyncio.wait_for(admin.start(), max(1.0, deadline_s - (time.monotonic()
                                                                         - start)))
            await asyncio.wait_for(admin.describe_cluster(), 10)
            return admin
        except PreflightError:
            await admin.close()
            raise
        except Exception as exc:
            await admin.close()
            waited = time.monotonic() - start
            if waited >= deadline_s:
                raise PreflightError(EXIT_UNREACHABLE, (
                    f"broker {settings.broker} unreachable after {deadline_s:.0f} s: check "
                    "--broker / METERING_BROKER and that Kafka is running "
                    f"(last error: {exc or type(exc).__name__})")) from None
            if waited - announced >= 10 or not announced:
                log.warning("waiting for broker %s (%.0f of %.0f s; %s)", settings.broker,
                            waited, deadline_s, type(exc).__name__)
                announced = waited or 0.001
            await asyncio.sleep(min(1.0, max(0.0, deadline_s - waited)))


async def _partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic of ``names``."""
    wanted = set(names)
    described = await asyncio.wait_for(admin.describe_topics(None), 30)
    counts = {t["topic"]: len(t["partitions"]) for t in described
              if t["topic"] in wanted and not t["error_code"]}
    return counts


async def _create_state_topics(admin: Any, settings: Settings,
                               missing: Mapping[str, Mapping[str, str]]) -> None:
    """Create the missing state topics as Faust would, and wait until each has leaders.

    Faust creates them itself when it starts, but its group leader may then assign
    partitions from metadata that does not list a just-created topic yet ("Ignoring missing
    topic"): the worker would never read its internal topic until the next rebalance.
    Created here, and visible with a leader for every partition, they exist before Faust
    subscribes.
    """
    from aiokafka.admin import NewTopic

    if not missing:
        return
    response = await asyncio.wait_for(admin.create_topics([
        NewTopic(name, num_partitions=settings.partitions,
                 replication_factor=settings.replication_factor,
                 topic_configs=dict(config)) for name, config in sorted(missing.items())]), 30)
    for name, code, *_ in response.topic_errors:
        if code == 29:  # TOPIC_AUTHORIZATION_FAILED
            raise kafkacheck.denied(settings, "worker", "topic", name, "Create",
                                    f"create topic {name!r}")
        _refuse_replication(settings, name, code)
    deadline = time.monotonic() + 30
    while True:
        described = await asyncio.wait_for(admin.describe_topics(sorted(missing)), 10)
        ready = {t["topic"] for t in described if not t["error_code"]
                 and len(t["partitions"]) == settings.partitions
                 and all(p["leader"] >= 0 for p in t["partitions"])}
        if ready >= set(missing):
            log.info("created %s with %d partitions", ", ".join(sorted(missing)),
                     settings.partitions)
            return
        if time.monotonic() > deadline:
            raise PreflightError(EXIT_UNREACHABLE, "created topics "
                                 f"{sorted(set(missing) - ready)} have no leader after 30 s")
        await asyncio.sleep(0.2)  # poll with a deadline


def _refuse_replication(settings: Settings, topic: str, code: int) -> None:
    """PreflightError (exit 2) if creating ``topic`` failed with INVALID_REPLICATION_FACTOR
    (error 38: more replicas than brokers)."""
    if code == 38:
        raise PreflightError(EXIT_REFUSED, (
            f"cannot create topic {topic!r} with replication_factor="
            f"{settings.replication_factor}: the cluster has fewer brokers than that. Set "
            "METERING_REPLICATION_FACTOR (--replication-factor) to at most the number of "
            "brokers (1 for a single-node broker such as `metering kafka up`)"))


async def _read_grid(settings: Settings, topic: str) -> tuple[Grid | None, bool]:
    """(the last grid record of ``topic``, whether a record exists this version cannot read)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(**aiokafka_options(settings), group_id=None,
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              request_timeout_ms=10_000)
    await reader.start()
    try:
        reader.assign([tp])
        end = (await asyncio.wait_for(reader.end_offsets([tp]), 15))[tp]
        start = (await asyncio.wait_for(reader.beginning_offsets([tp]), 15))[tp]
        reader.seek(tp, start)
        last: bytes | None = None
        deadline = time.monotonic() + 30
        while await reader.position(tp) < end:
            if time.monotonic() > deadline:
                raise PreflightError(EXIT_UNREACHABLE, f"grid topic {topic!r} not readable")
            got = await reader.getmany(tp, timeout_ms=1000)
            for msg in got.get(tp, []):
                if msg.key == GRID_KEY and msg.value is not None:
                    last = msg.value
    finally:
        await reader.stop()
    if last is None:
        return None, False
    grid = Grid.decode(last)
    return grid, grid is None


async def _write_grid(settings: Settings, admin: Any, topic: str, exists: bool,
                      grid: Grid) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import NewTopic

    if not exists:
        response = await admin.create_topics([NewTopic(
            topic, num_partitions=1, replication_factor=settings.replication_factor,
            topic_configs={"cleanup.policy": "compact"})])
        if any(code == 29 for _name, code, *_ in response.topic_errors):
            raise kafkacheck.denied(settings, "worker", "topic", topic, "Create",
                                    f"create topic {topic!r}")
        for _name, code, *_ in response.topic_errors:
            _refuse_replication(settings, topic, code)
    producer = AIOKafkaProducer(**aiokafka_options(settings), acks="all",
                                request_timeout_ms=10_000)
    await producer.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # a just-created topic may need a moment to have a leader
            try:
                await producer.send_and_wait(topic, grid.encode(), key=GRID_KEY, partition=0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)  # retried with a deadline
    finally:
        await producer.stop()


async def check(settings: Settings,
                state_topics: Mapping[str, Mapping[str, str]] | None) -> None:
    """Run the checks; raise :class:`PreflightError` to refuse.

    ``state_topics``: name -> topic config of the internal events topic and the tables'
    changelog topics (each must have ``settings.partitions`` partitions; missing ones are
    created); None: only wait for the broker.
    """
    deadline = broker_wait_seconds(settings)
    log.info("preflight: connecting to broker %s (waiting up to %.0f s)", settings.broker,
             deadline)
    admin = await _connect(settings, deadline)
    try:
        # Permissions (ACLs) of the role: a missing one is named with its grant (exit 2).
        await kafkacheck.check_access(settings, admin,
                                      "worker" if state_topics is not None else "archive")
        if state_topics is None:
            return
        gtopic = grid_topic(settings)
        outputs = {settings.usage_topic, settings.rejects_topic} - set(state_topics)
        counts = await _partition_counts(admin, [*state_topics, gtopic, *outputs])
        grid_exists = counts.pop(gtopic, None) is not None
        existing_outputs = {name for name in outputs if counts.pop(name, None) is not None}
        if any(n != settings.partitions for n in counts.values()):
            raise PreflightError(EXIT_REFUSED, partition_refusal(settings.partitions, counts))
        configured = Grid(settings.period, settings.timezone)
        stored, unreadable = (await _read_grid(settings, gtopic) if grid_exists
                              else (None, False))
        decision = grid_decision(stored, configured, bool(counts),
                                 settings.force_period_change, unreadable)
        if decision.action is GridAction.REFUSE:
            raise PreflightError(EXIT_REFUSED, decision.message)
        if decision.action is GridAction.FORCE:
            log.warning("%s", decision.message)
        elif decision.action is GridAction.RECORD:
            log.info("grid: %s", decision.message)
        if decision.action is not GridAction.KEEP:
            await _write_grid(settings, admin, gtopic, grid_exists, configured)
        # The output topics too: the agents send to them from their first batch, and Faust
        # would create them only concurrently with those sends (the rejects topic raced).
        await _create_state_topics(admin, settings, {
            **{name: config for name, config in state_topics.items() if name not in counts},
            **{name: {} for name in outputs - existing_outputs}})
        log.info("preflight passed: partitions=%d (%s), %s", settings.partitions,
                 ", ".join(f"{t}: {n}" for t, n in sorted(counts.items())) or "new state",
                 configured)
    finally:
        await admin.close()


def run(settings: Settings, state_topics: Mapping[str, Mapping[str, str]] | None,
        level: str = "info") -> int | None:
    """Run :func:`check` in its own event loop; None if passed, else the exit code.

    Logs to stderr (Faust's logging is not set up yet); a refusal is one CRITICAL message,
    no traceback.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    log.propagate = False
    client_log = logging.getLogger("aiokafka")
    client_level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # each failed connect attempt; summarised here
    try:
        asyncio.run(check(settings, state_topics))
    except PreflightError as exc:
        log.critical("refusing to start: %s", exc)
        return exc.code
    finally:
        log.removeHandler(handler)
        log.propagate = True
        client_log.setLevel(client_level)
    return None
