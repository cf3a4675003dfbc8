"""Event routes on a real broker (issue 19 item 6): ``metering route`` delivers exactly the
matching records to each route's topic, and commits only what it delivered."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.run import stream
from tests.integration.kafkautil import consume, end_offsets, produce
from tests.refinterp import category as contract_category


def category(obj: Any) -> str | None:
    """The contract's category of a payload (the reference interpreter's reading)."""
    return contract_category(obj) if isinstance(obj, dict) else None

pytestmark = pytest.mark.kafka


def payload(value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return None


ROUTES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    # route name -> (pattern, what it must select, stated on the payload)
    "accounts": ("ActionEvent.*.Account.*",
                 lambda o: category(o) == "action" and o.get("entity") == "Account"),
    "vm-usage": ("UsageEvent.*.com-cloud-vm-VirtualMachine.*",
                 lambda o: category(o) == "usage"
                 and o.get("resource") == "com.cloud.vm.VirtualMachine"),
    "alerts": ("AlertEvent.#", lambda o: category(o) == "alert"),
    "vm-starts": ("#.VM-START.*.*", lambda o: category(o) in ("action", "usage")
                  and o.get("event") == "VM.START"),
}


async def _committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets; {} while its coordinator is not there yet (a fresh
    broker creates the offsets topic on first use)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return {}
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}


Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def route_process(tmp_path: Path) -> Iterator[Starter]:
    """``start(env, fault=None)``: a ``metering route`` process (its log: route.log)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], fault: str | None = None) -> subprocess.Popen[bytes]:
        log = (tmp_path / "route.log").open("ab")
        entry = ["agents"] if fault is None else ["tests.integration.faults", fault]
        proc = subprocess.Popen([sys.executable, "-m", *entry, "route", "--loglevel", "info"],
                                env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _setup(kafka_bootstrap: str, topic_factory: Callable[..., str],
           unique_name: Callable[[str], str]
           ) -> tuple[str, dict[str, str], dict[str, Counter[tuple[bytes | None, bytes]]],
                      dict[str, str]]:
    """A simulated cloud on a new topic: (topic, target topic per route, the records each
    route must deliver, the route process's environment)."""
    source = topic_factory(partitions=3, prefix="cs-route")
    cfg = SimConfig(seed=4, accounts=10, until_ms=SimConfig().start_ms + DAY)
    records = [(e.key.encode() if e.key else None, e.value) for e in stream(Cloud(cfg))]
    produce(kafka_bootstrap, source, records)
    targets = {name: unique_name(name) for name in ROUTES}
    expected = {name: Counter((k, v) for k, v in records if pick(payload(v)))
                for name, (_pattern, pick) in ROUTES.items()}
    sizes = {name: sum(c.values()) for name, c in expected.items()}
    assert min(sizes.values()) >= 3, sizes
    env = {"METERING_BROKER": kafka_bootstrap, "METERING_APP_ID": unique_name("route"),
           "METERING_INPUT_TOPIC": source, "METERING_SESSION_TIMEOUT": "6",
           "METERING_ROUTES": ",".join(f"{pattern}={targets[name]}"
                                       for name, (pattern, _pick) in ROUTES.items())}
    return source, targets, expected, env


def _wait_all_committed(kafka_bootstrap: str, source: str, env: dict[str, str],
                        proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the route group has committed every input record (each batch's sends were
    acknowledged before its commit)."""
    ends = {(source, p): n for p, n in end_offsets(kafka_bootstrap, source).items()}
    deadline = time.monotonic() + 120
    committed: dict[tuple[str, int], int] = {}
    while time.monotonic() < deadline and committed != ends:
        assert proc.poll() is None, log.read_text()
        committed = asyncio.run(_committed(kafka_bootstrap, f"{env['METERING_APP_ID']}-route"))
        time.sleep(0.25)  # poll with a deadline
    assert committed == ends, (committed, ends, log.read_text())


def _delivered(kafka_bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic`` (up to its end offsets now)."""
    total = sum(end_offsets(kafka_bootstrap, topic).values())
    return consume(kafka_bootstrap, topic, lambda m: len(m) >= total, 60)


def test_a_route_delivers_exactly_the_matching_records(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    unique_name: Callable[[str], str], tmp_path: Path, route_process: Starter,
) -> None:
    source, targets, expected, env = _setup(kafka_bootstrap, topic_factory, unique_name)
    proc = route_process(env)
    _wait_all_committed(kafka_bootstrap, source, env, proc, tmp_path / "route.log")
    for name, want in expected.items():
        got = _delivered(kafka_bootstrap, targets[name])
        assert Counter((m.key, m.value) for m in got) == want, name
        sources = {dict(m.headers)["metering-source"].decode() for m in got}
        assert len(sources) == len(got)  # each forwarded once, naming its source record
        assert all(s.startswith(f"{source}/") for s in sources)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, (tmp_path / "route.log").read_text()


def test_a_crash_before_the_commit_forwards_again_and_loses_nothing(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    unique_name: Callable[[str], str], tmp_path: Path, route_process: Starter,
) -> None:
    """kill -9 after a batch's sends were acknowledged, before its commit: the restarted
    route forwards that batch again (at least once), and every other record once."""
    source, targets, expected, env = _setup(kafka_bootstrap, topic_factory, unique_name)
    env["METERING_BATCH_SIZE"] = "50"
    crashed = route_process(env, fault="route_before_commit")
    assert crashed.wait(timeout=120) == -signal.SIGKILL, (tmp_path / "route.log").read_text()
    assert asyncio.run(_committed(kafka_bootstrap, f"{env['METERING_APP_ID']}-route")) == {}
    before = {name: Counter((m.key, m.value) for m in _delivered(kafka_bootstrap, t))
              for name, t in targets.items()}
    assert sum(sum(c.values()) for c in before.values()) > 0, "the first batch was forwarded"
    proc = route_process(env)
    _wait_all_committed(kafka_bootstrap, source, env, proc, tmp_path / "route.log")
    for name, want in expected.items():
        got = Counter((m.key, m.value) for m in _delivered(kafka_bootstrap, targets[name]))
        assert got == want + before[name], name  # the batch in flight twice, nothing lost
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, (tmp_path / "route.log").read_text()
