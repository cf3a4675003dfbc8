"""Pins the faust-streaming internals the worker relies on or patches (faust < 0.16).

The consumer commits input offsets after ``producer.flush()``. Faust's own
``ProducerBuffer.flush`` gives up after 0.1 s without a message sent and ignores the message
its sender task is handing to aiokafka, so a commit could pass changelog records still in
the buffer (state lost with the process after kill -9 while its input was committed).
:mod:`agents.faustapi` replaces it with a flush that waits until the buffer is empty and
nothing is in flight, and exits the process when a buffered record is not delivered.

After a restore from the changelogs, Faust's ``Recovery.on_recovery_completed`` resumed the
stream partitions before seeking them to their committed offsets; the records the running
Fetcher delivered in between made the next ones look like a hole in the log, which the
consumer counts as acked, so offsets were committed past records not processed yet (issue
18's loss after kill -9 with RocksDB lost). :mod:`agents.faustapi` replaces the method with
a copy that seeks first.

Every private method :mod:`agents.faustapi` relies on (``PRIVATE_INTERNALS``) is pinned here
by the digest of its source on the pinned versions; nothing is patched at import, only by
``install_patches`` (which ``make_app`` calls).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from agents import faustapi

faustapi.install_patches()  # what make_app does; the tests below exercise the patched classes

ROOT = Path(__file__).resolve().parents[2]


class _SlowChannel:
    """A channel whose publish takes ``delay`` seconds, recording what it published."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.published: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay)
        self.published.append(fut.n)


class _Future(asyncio.Future[Any]):
    """A FutureMessage stand-in: a future with the message it carries."""

    n: int
    message: Any


def _message(channel: _SlowChannel, n: int) -> Any:
    fut = _Future()
    fut.n, fut.message = n, SimpleNamespace(channel=channel)
    return fut


async def _buffer() -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
    await buffer.start()
    return buffer


def test_faust_flush_atmost_gives_up_with_messages_pending() -> None:
    """The Faust behaviour the patch exists for (if this fails, Faust changed: re-check)."""

    async def run() -> tuple[int, int]:
        channel = _SlowChannel(delay=0.3)
        buffer = await _buffer()
        try:
            for n in range(3):
                buffer.put(_message(channel, n))
            await ProducerBuffer.flush_atmost(buffer, None)  # Faust's own loop
            returned_with = len(channel.published)
            while len(channel.published) < 3:
                await asyncio.sleep(0.05)
            return returned_with, len(channel.published)
        finally:
            await buffer.stop()

    returned_with, total = asyncio.run(run())
    assert returned_with < 3
    assert total == 3


def test_patched_flush_waits_for_every_message_and_the_one_in_flight() -> None:
    async def run() -> tuple[int, int]:
        channel = _SlowChannel(delay=0.25)
        buffer = await _buffer()
        try:
            for n in range(5):
                buffer.put(_message(channel, n))
            await asyncio.sleep(0.01)  # the sender task has taken message 0 off the queue
            await buffer.flush()
            return len(channel.published), buffer.size
        finally:
            await buffer.stop()

    published, size = asyncio.run(run())
    assert published == 5
    assert size == 0


def test_patched_flush_of_an_empty_buffer_returns() -> None:
    async def run() -> None:
        buffer = await _buffer()
        try:
            await asyncio.wait_for(buffer.flush(), timeout=5)
        finally:
            await buffer.stop()

    asyncio.run(run())


# --- the delivery of buffered (changelog) records ---------------------------------------

def test_an_undelivered_changelog_record_exits_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's ``_on_published`` sets the exception on the message's future and only logs."""
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)

    async def run() -> None:
        channel = _SlowChannel(delay=0.0)
        buffer = await _buffer()
        try:
            failed, delivered = _message(channel, 1), _message(channel, 2)
            buffer.put(failed)
            buffer.put(delivered)
            await buffer.flush()
            delivered.set_result(None)
            await asyncio.sleep(0)
            assert exits == []
            failed.set_exception(RuntimeError("NotLeaderForPartition"))
            await asyncio.sleep(0)
        finally:
            await buffer.stop()

    asyncio.run(run())
    assert exits == [faustapi.EXIT_STUCK]


# --- Recovery: seek the stream partitions before resuming them -----------------------------

FAUST_ON_RECOVERY_COMPLETED_SHA256 = (
    "6ef567acf072e46da3fccbccc6d662371f634f622c3d510972d5df81f70ae3ac"
)
"""Digest of faust-streaming 0.15.3's ``Recovery.on_recovery_completed`` source, which
:func:`agents.faustapi._seek_then_resume` copies with the seek moved before the resume."""


def test_faust_on_recovery_completed_is_the_copied_version() -> None:
    """If this fails, Faust changed the method: redo the copy (or drop it if Faust fixed the
    order) and update the digest."""
    source = inspect.getsource(faustapi.FAUST_ON_RECOVERY_COMPLETED)
    assert hashlib.sha256(source.encode()).hexdigest() == FAUST_ON_RECOVERY_COMPLETED_SHA256
    assert source.index("consumer.resume_partitions(") < source.index("perform_seek()")
    assert Recovery.on_recovery_completed is faustapi._seek_then_resume


class _Consumer:
    """Records the order of the calls on_recovery_completed makes on the consumer."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def assignment(self) -> set[Any]:
        return {TP("events", 0), TP("app-entities-changelog", 0)}

    def resume_partitions(self, tps: set[Any]) -> None:
        self.calls.append("resume " + ",".join(sorted(tp.topic for tp in tps)))

    async def perform_seek(self) -> None:
        self.calls.append("seek")

    def resume_flow(self) -> None:
        self.calls.append("resume_flow")


def _recovery(calls: list[str]) -> Any:
    async def noop(*_: Any, **__: Any) -> None:
        return None

    async def wait(coro: Any, timeout: Any = None) -> None:
        await coro

    app = SimpleNamespace(
        consumer=_Consumer(calls), consumer_generation_id=7,
        on_rebalance_complete=SimpleNamespace(send=noop),
        conf=SimpleNamespace(broker_request_timeout=30.0),
        flow_control=SimpleNamespace(resume=lambda: calls.append("flow_control")),
        _fetcher=SimpleNamespace(maybe_start=noop),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: calls.append("end"),
    )
    return SimpleNamespace(
        app=app, log=SimpleNamespace(info=lambda *a: None, warning=lambda *a: None,
                                     dev=lambda *a: None),
        _set_recovery_ended=lambda: None, tables=SimpleNamespace(
            values=lambda: [], on_actives_ready=lambda: None,
            on_standbys_ready=lambda: None),
        actives_for_table={}, standbys_for_table={}, _wait=wait,
        _is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"),
        completed=SimpleNamespace(set=lambda: calls.append("completed")),
    )


def test_stream_partitions_are_sought_before_they_are_resumed() -> None:
    calls: list[str] = []
    asyncio.run(faustapi._seek_then_resume(_recovery(calls), generation_id=7))
    assert calls[:2] == ["seek", "resume events"]
    assert calls.index("resume_flow") > calls.index("resume events")


def test_faust_resumed_them_before_seeking() -> None:
    """The order the patch exists for (Faust's own method on the same stand-in)."""
    calls: list[str] = []
    asyncio.run(faustapi.FAUST_ON_RECOVERY_COMPLETED(_recovery(calls), 7))
    assert calls[:2] == ["resume events", "seek"]


def test_a_newer_generation_resumes_nothing() -> None:
    calls: list[str] = []
    asyncio.run(faustapi._seek_then_resume(_recovery(calls), generation_id=6))
    assert calls == []


# --- every private internal of agents.faustapi, pinned on the pinned versions -------------

PINNED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}
"""faust-streaming, aiokafka and mode-streaming versions the digests below were taken on."""

PINNED_SOURCES = {
    "faust.transport.drivers.aiokafka:Transport._really_create_topic":
        "698806ec237ce0d79243e063ca3913ebed5205e37095932282bf130ee5483fbd",
    "faust.transport.producer:ProducerBuffer._send_pending":
        "4a9d5f932b56bc6842151bfc868aec1570d53cab7ff129ece408d966ac7f7da8",
    "faust.transport.producer:ProducerBuffer.flush":
        "26fbebb124ad9c9890f19b4615585cf3eda102b61203e6aa885d3fabfda9b157",
    "faust.transport.producer:ProducerBuffer.flush_atmost":
        "4966e8c5f9b42eb97abe3f93cbc9bc566a22bdea01ae5328c5a6593414820323",
    "faust.worker:Worker._disable_spinner_if_level_below_WARN":
        "93b33ac68dcc2ce8e2d1ec75be38a64ad8812913cd3d661d7790077bcfa91d0d",
    "faust.worker:Worker.on_setup_root_logger":
        "0d468284fb5c8880059b6d0c1e27128c1409bc3357dfe95fa4eed5885e0ccafa",
    "mode.worker:Worker._schedule_shutdown":
        "1a6a5dfc88c2298b7ddc84be024a4344a54eaca8ba3a2d39e0447fa5b3905aa4",
    "faust.tables.recovery:Recovery.on_recovery_completed":
        FAUST_ON_RECOVERY_COMPLETED_SHA256,
    "faust.transport.consumer:Consumer._drain_messages":
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    "faust.transport.consumer:Consumer._new_offset":
        "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0",
    "faust.transport.consumer:Consumer._filter_tps_with_pending_acks":
        "f6f9239774234e7e230eee7c40c686421a66302be95e59c59a9109c2bba5fbd6",
    "faust.transport.consumer:Consumer.wait_empty":
        "e4662fe24f094819add590b2d75f233840e77823b432aea6504539768572102f",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer":
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
    "faust.transport.drivers.aiokafka:Producer._ensure_producer":
        "5592a4bbdf2513253f98233a4eac931ded2a531a86f269cddcc33bc3f5827db5",
    "faust.stores.rocksdb:Store._db_for_partition":
        "cb7e67d5f9efc4bced7b7ab09a55fe717c352daad5b693594e3f7ca52a98787f",
    "aiokafka.admin.client:AIOKafkaAdminClient._send_request":
        "1ed126f126dd917a2b23d8ca06f2bd955697f7137bcd6a0cba75efe280f9b49d",
    "aiokafka.client:AIOKafkaClient._wait_on_metadata":
        "52b0a5ee78ef3aa0c21c82b69baa20eb6983d9e5871e9e66784198cb2f1bf256",
    "aiokafka.producer.message_accumulator:BatchBuilder.append":
        "657d76f55157d9cac2981d5e76453c688425dbe14f271017a8904df4d5543a76",
}
"""``module:Class.method`` -> SHA-256 of its source on :data:`PINNED_VERSIONS`."""


def _resolve(path: str) -> Any:
    module_name, _, attrs = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def _original(path: str) -> Any:
    """The method as the library defines it (the value before install_patches replaced it)."""
    originals = {
        "faust.transport.producer:ProducerBuffer._send_pending": faustapi.FAUST_SEND_PENDING,
        "faust.transport.producer:ProducerBuffer.flush": faustapi.FAUST_BUFFER_FLUSH,
        "faust.worker:Worker._disable_spinner_if_level_below_WARN":
            faustapi.FAUST_DISABLE_SPINNER,
        "mode.worker:Worker._schedule_shutdown": faustapi.FAUST_SCHEDULE_SHUTDOWN,
        "faust.worker:Worker.on_setup_root_logger": faustapi.FAUST_ON_SETUP_ROOT_LOGGER,
        "faust.tables.recovery:Recovery.on_recovery_completed":
            faustapi.FAUST_ON_RECOVERY_COMPLETED,
        "faust.transport.drivers.aiokafka:Transport._really_create_topic":
            faustapi.FAUST_REALLY_CREATE_TOPIC,
    }
    return originals.get(path) or _resolve(path)


def test_the_pinned_library_versions() -> None:
    from importlib.metadata import version

    found = {name: version(name) for name in PINNED_VERSIONS}
    assert found == PINNED_VERSIONS, (
        f"faust-streaming/aiokafka/mode-streaming versions changed ({found}, pinned "
        f"{PINNED_VERSIONS}): re-check every entry of agents.faustapi.PRIVATE_INTERNALS, "
        "then update the digests here")


def test_every_private_internal_is_pinned() -> None:
    assert set(faustapi.PRIVATE_INTERNALS) == set(PINNED_SOURCES)


@pytest.mark.parametrize("path", sorted(PINNED_SOURCES))
def test_private_internal_source_is_the_pinned_one(path: str) -> None:
    """If this fails, the library changed a method agents.faustapi relies on: re-check what
    the entry of PRIVATE_INTERNALS says, fix agents/faustapi.py, then update the digest."""
    source = inspect.getsource(_original(path))
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == PINNED_SOURCES[path], (
        f"{path} changed (sha256 {digest}); agents.faustapi relies on it: "
        f"{faustapi.PRIVATE_INTERNALS[path]}")


def test_the_private_attributes_the_patches_read_exist() -> None:
    """Names read inside the patched/copied methods (not covered by a method digest)."""
    from faust.app.base import App
    from faust.stores.rocksdb import Store
    from faust.tables.recovery import Recovery
    from faust.transport.producer import ProducerBuffer
    from mode.worker import Worker as ModeWorker

    assert "self.max_messages" in inspect.getsource(ProducerBuffer)  # raised by the patches
    assert ModeWorker._signal_stop_time is None  # class default: no signal received yet
    assert "_fetcher" in App.__dict__  # a cached_property (the fetcher service)
    for name in ("_set_recovery_ended", "_is_changelog_tp", "_wait"):
        assert callable(getattr(Recovery, name)), name
    assert Store.offset_key == faustapi.OFFSET_KEY


def test_patches_are_installed_only_by_install_patches(tmp_path: Path) -> None:
    """Importing agents.faustapi or agents.faustapp patches nothing (a fresh interpreter)."""
    code = (
        "import agents.faustapp, agents.faustapi as f\n"
        "from faust.tables.recovery import Recovery\n"
        "assert not f.patches_installed(), 'patched at import'\n"
        "assert Recovery.on_recovery_completed is f.FAUST_ON_RECOVERY_COMPLETED\n"
        "from metering.settings import Settings\n"
        "agents.faustapp.make_app(Settings())\n"
        "assert f.patches_installed(), 'make_app did not install the patches'\n"
        "f.install_patches()\n"
        "assert f.patches_installed()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
