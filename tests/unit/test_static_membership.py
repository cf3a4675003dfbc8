"""Static group membership (Kafka KIP-345): the ``group_instance_id`` setting reaches the
aiokafka consumer Faust builds for the worker and the archive.

Faust (faust-streaming < 0.16) has a public setting for it, ``consumer_group_instance_id``,
which its aiokafka driver passes as ``group_instance_id`` to ``AIOKafkaConsumer``
(``faust/transport/drivers/aiokafka.py``, ``_create_worker_consumer``). These tests build
that consumer (no broker: it is not started) and read what it was given, so a Faust or
aiokafka upgrade that drops the pass-through fails here rather than silently turning every
pod restart back into a rebalance. The behaviour on a real broker is shown by
``tests/integration/test_static_membership.py``.
"""

from __future__ import annotations

import asyncio
import inspect

import aiokafka
import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator

from agents.faustapp import make_app
from metering.settings import Settings, SettingsError, load_settings


def _consumer_instance_id(settings: Settings, app_id: str) -> str | None:
    """The ``group_instance_id`` of the aiokafka consumer Faust builds for a worker."""

    async def build() -> str | None:
        app = make_app(settings, app_id=app_id)
        app.finalize()
        # Faust internals (test only): the consumer thread builds the aiokafka consumer.
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            assert isinstance(consumer, aiokafka.AIOKafkaConsumer)
            value: str | None = consumer._group_instance_id  # aiokafka keeps it here
            return value
        finally:
            await consumer.stop()

    return asyncio.run(build())


def test_the_instance_id_reaches_the_aiokafka_consumer() -> None:
    settings = load_settings({"METERING_GROUP_INSTANCE_ID": "metering-0"})
    assert settings.group_instance_id == "metering-0"
    assert _consumer_instance_id(settings, "static-test") == "metering-0"


def test_unset_means_dynamic_membership() -> None:
    assert Settings().group_instance_id == ""
    assert _consumer_instance_id(Settings(), "dynamic-test") is None


def test_aiokafka_sends_it_and_skips_leave_group_for_static_members() -> None:
    """What static membership relies on in aiokafka 0.14: JoinGroup/SyncGroup carry the id
    (request versions >= 5 / 3) and a stopping static member sends no LeaveGroup, so the
    broker keeps its assignment for ``session_timeout``."""
    from aiokafka.protocol.group import JoinGroupRequest, SyncGroupRequest

    assert "group_instance_id" in inspect.signature(JoinGroupRequest).parameters
    assert "group_instance_id" in inspect.signature(SyncGroupRequest).parameters
    leave = inspect.getsource(GroupCoordinator._maybe_leave_group)
    assert "self._group_instance_id is None" in leave


@pytest.mark.parametrize("bad", ["metering 0", "a/b", "x" * 250])
def test_an_invalid_instance_id_is_refused_with_the_rule(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"group_instance_id: .* not a valid Kafka name"):
        load_settings({"METERING_GROUP_INSTANCE_ID": bad})


def test_faust_assignor_asserts_the_member_url_on_the_way_back() -> None:
    """Faust's assignor puts each member's web URL into its assignment, and a member
    asserts it is its own (``PartitionAssignor.on_assignment``). A static member that
    returns with another URL gets the assignment stored for its old one: the assertion
    kills aiokafka's coordinator routine, heartbeats stop, and the member is evicted after
    ``session_timeout`` while its process stays up. Seen on the real broker with a changed
    web port. So the canonical URL must not change across restarts: it is built from
    ``web_bind`` and ``web_port`` (stable settings), never from the pod IP."""
    from faust.assignor.partition_assignor import PartitionAssignor

    assert "metadata.url == str(self._url)" in inspect.getsource(PartitionAssignor.on_assignment)
    app = make_app(Settings(web_bind="0.0.0.0", web_port=6066), app_id="url-test")
    assert str(app.conf.canonical_url) == "http://0.0.0.0:6066"
