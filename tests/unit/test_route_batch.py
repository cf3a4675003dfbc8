"""``metering route``'s batch step in process (:func:`agents.route.forward_batch`).

``metering route`` is a plain aiokafka loop (no Faust agent): ``getmany``, forward the
batch, wait for the acknowledgements, commit. The batch step runs here on real aiokafka
``ConsumerRecord``/``TopicPartition`` values with an in-memory producer whose deliveries
the test completes, to show what is sent and that no offset is handed back for commit
before every send is acknowledged. The loop against a real broker (ACLs, kill -9 before
the commit) is tests/integration/test_routes.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from agents.errors import RouteError
from agents.route import RouteCounts, forward_batch
from metering.routes import parse_routes

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
ROUTES = parse_routes("ActionEvent.ACCOUNT-CREATE.#=accounts,UsageEvent.VM-START.#=vms,"
                      "#=everything")


class _Producer:
    """aiokafka's ``send``: queue the record, return its delivery future (completed by
    the test, as the broker's acknowledgement would be)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[None]:
        self.sent.append((topic, value, kwargs))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(future)
        return future


def _record(tp: TopicPartition, offset: int, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic=tp.topic, partition=tp.partition, offset=offset,
                          timestamp=1_741_910_400_000 + offset, timestamp_type=0,
                          key=b"k%d" % offset, value=value, checksum=None,
                          serialized_key_size=2, serialized_value_size=len(value), headers=())


def _batch() -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    account = (GOLDEN / "action_account_create.json").read_bytes()
    vm = (GOLDEN / "usage_vm_start.json").read_bytes()
    a, b = TopicPartition("cs", 0), TopicPartition("cs", 1)
    return {a: [_record(a, 7, account), _record(a, 8, b"not json")],
            b: [_record(b, 3, vm)]}


def test_each_match_is_sent_to_each_route_once_and_offsets_wait_for_the_acks() -> None:
    async def run() -> tuple[_Producer, dict[Any, int], RouteCounts, bool]:
        producer, counts = _Producer(), RouteCounts()
        step = asyncio.ensure_future(forward_batch(producer, ROUTES, _batch(), 1 << 20,
                                                   counts))
        while len(producer.sent) < 4:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        waiting = not step.done()  # no offsets before the broker acknowledged
        for future in producer.deliveries:
            future.set_result(None)
        return producer, await step, counts, waiting

    producer, offsets, counts, waited = asyncio.run(run())
    assert waited
    assert offsets == {TopicPartition("cs", 0): 9, TopicPartition("cs", 1): 4}
    assert [(topic, kw["headers"]) for topic, _v, kw in producer.sent] == [
        ("accounts", [("metering-source", b"cs/0/7")]),
        ("everything", [("metering-source", b"cs/0/7")]),
        ("vms", [("metering-source", b"cs/1/3")]),
        ("everything", [("metering-source", b"cs/1/3")]),
    ]  # "not json" has no route key: matched by no pattern, not even #
    batch = _batch()
    first = batch[TopicPartition("cs", 0)][0]
    _topic, value, kwargs = producer.sent[0]
    assert value == first.value
    assert kwargs["key"] == first.key
    assert kwargs["timestamp_ms"] == first.timestamp
    assert counts.read == 3
    assert counts.routed == {"accounts": 1, "vms": 1, "everything": 2}


def test_a_refused_send_gives_no_offsets() -> None:
    async def run() -> None:
        producer = _Producer()
        step = asyncio.ensure_future(forward_batch(producer, ROUTES, _batch(), 1 << 20,
                                                   RouteCounts()))
        while len(producer.sent) < 4:
            await asyncio.sleep(0)
        producer.deliveries[0].set_result(None)
        producer.deliveries[1].set_exception(RuntimeError("TopicAuthorizationFailed"))
        for future in producer.deliveries[2:]:
            future.set_result(None)
        await step

    with pytest.raises(RouteError, match="forwarding to 'everything' failed"):
        asyncio.run(run())
