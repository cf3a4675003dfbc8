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


@pytest.fixture
def route_process(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / "route.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "agents", "route", "--loglevel", "info"],
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


def test_a_route_delivers_exactly_the_matching_records(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    unique_name: Callable[[str], str], tmp_path: Path,
    route_process: Callable[[dict[str, str]], subprocess.Popen[bytes]],
) -> None:
    source = topic_factory(partitions=3, prefix="cs-route")
    cfg = SimConfig(seed=4, accounts=10, until_ms=SimConfig().start_ms + DAY)
    records = [(e.key.encode() if e.key else None, e.value) for e in stream(Cloud(cfg))]
    produce(kafka_bootstrap, source, records)
    targets = {name: unique_name(name) for name in ROUTES}
    expected = {name: Counter((k, v) for k, v in records if pick(payload(v)))
                for name, (_pattern, pick) in ROUTES.items()}
    sizes = {name: sum(c.values()) for name, c in expected.items()}
    assert min(sizes.values()) >= 3, sizes
    app = unique_name("route")
    proc = route_process({
        "METERING_BROKER": kafka_bootstrap, "METERING_APP_ID": app,
        "METERING_INPUT_TOPIC": source, "METERING_SESSION_TIMEOUT": "6",
        "METERING_ROUTES": ",".join(f"{pattern}={targets[name]}"
                                    for name, (pattern, _pick) in ROUTES.items())})

    # everything read and committed: the sends of every batch were acknowledged before
    ends = {(source, p): n for p, n in end_offsets(kafka_bootstrap, source).items()}
    deadline = time.monotonic() + 120
    committed: dict[tuple[str, int], int] = {}
    while time.monotonic() < deadline and committed != ends:
        assert proc.poll() is None, (tmp_path / "route.log").read_text()
        committed = asyncio.run(_committed(kafka_bootstrap, f"{app}-route"))
        time.sleep(0.25)  # poll with a deadline
    assert committed == ends, (committed, ends, (tmp_path / "route.log").read_text())

    for name, want in expected.items():
        total = sum(end_offsets(kafka_bootstrap, targets[name]).values())
        got = consume(kafka_bootstrap, targets[name], lambda m, n=total: len(m) >= n, 60)
        assert Counter((m.key, m.value) for m in got) == want, name
        sources = {dict(m.headers)["metering-source"].decode() for m in got}
        assert len(sources) == len(got)  # each forwarded once, naming its source record
        assert all(s.startswith(f"{source}/") for s in sources)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, (tmp_path / "route.log").read_text()
