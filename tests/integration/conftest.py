"""Real-broker fixtures.

A session-scoped broker: ``$METERING_TEST_BROKER`` (``host:port``) when set, otherwise a fresh
single-node KRaft Kafka started from Maven Central jars (:mod:`agents.localkafka`), stopped at
the end of the session. The JVM is started with PR_SET_PDEATHSIG, so even a killed pytest
leaves no broker behind. Each test gets unique topic and consumer-group names.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from agents.localkafka import LocalKafka
from tests.integration.cpuload import cpu_load, requested


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session", autouse=True)
def saturated_cpu() -> Iterator[str]:
    """``METERING_CPU_LOAD=N`` (``make test-reliability``: one per core): N CPU hogs run
    for the whole session (:mod:`tests.integration.cpuload`); unset: none."""
    with cpu_load(requested()) as what:
        if what != "none":
            print(f"\nCPU load for this session: {what}")
        yield what


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    existing = os.environ.get("METERING_TEST_BROKER")
    if existing:
        yield existing
        return
    broker = LocalKafka()
    broker.start(log=print)
    print(f"\nlocal Kafka broker {broker.bootstrap} started in {broker.startup_seconds:.1f}s")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


async def _create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, topic_configs=config)]
        )
    finally:
        await admin.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("topic")`` -> ``topic-<test name>-<random>`` (valid Kafka name)."""
    base = request.node.name.replace("[", "-").replace("]", "")[:80]

    def make(prefix: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in base)
        return f"{prefix}-{safe}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def topic_factory(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> Callable[..., str]:
    """Create a uniquely named topic: ``topic_factory(partitions=4, prefix="cs")``."""

    def make(partitions: int = 1, prefix: str = "t", config: dict[str, str] | None = None) -> str:
        name = unique_name(prefix)
        asyncio.run(_create_topic(kafka_bootstrap, name, partitions, config or {}))
        return name

    return make


@pytest.fixture
def group_id(unique_name: Callable[[str], str]) -> str:
    """A consumer group id no other test uses."""
    return unique_name("g")
