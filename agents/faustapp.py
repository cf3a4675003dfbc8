"""Construction of Faust apps from :class:`metering.settings.Settings` (shared by the
streaming worker, :mod:`agents.app`, and the archive, :mod:`agents.archive`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import weakref
from typing import Any

import faust
from faust.tables.recovery import Recovery
from faust.transport.producer import ProducerBuffer
from faust.worker import Worker as FaustWorker
from mode.worker import Worker as ModeWorker

from agents.kafkaclient import faust_options
from metering.settings import Settings

# Table writes queue one changelog record each in Faust's ProducerBuffer; above
# ``max_messages`` (default 100) every stream step waits for the buffer to drain one message
# at a time ("producer buffer full" warnings), which throttled the meter agent to a few
# thousand states per second. Each batch writes at most one record per changed key, so a
# larger bound is safe. (faust-streaming internals, pinned < 0.16.)
ProducerBuffer.max_messages = 20_000

_send_pending = ProducerBuffer._send_pending

_in_flight: weakref.WeakKeyDictionary[ProducerBuffer, int] = weakref.WeakKeyDictionary()
"""Buffer -> messages its sender took off the queue and has not yet handed to aiokafka."""


async def _counted_send_pending(self: ProducerBuffer, fut: Any) -> None:
    """Faust's ``_send_pending``, counting the message in flight until it reached aiokafka;
    a message the broker refuses stops the process (:func:`_exit_if_failed`)."""
    _in_flight[self] = _in_flight.get(self, 0) + 1
    try:
        await _send_pending(self, fut)
    finally:
        _in_flight[self] -= 1
    fut.add_done_callback(_exit_if_failed)


def _exit_if_failed(fut: Any) -> None:
    """Exit 70 at once if a buffered message (a table's changelog record) was not delivered.

    Faust's ``Topic._on_published`` only logs a failed send, and the offsets would then be
    committed past the state change it carried: the state would be lost with the RocksDB
    directory. Exiting without committing more re-delivers its input after the restart.
    """
    if fut.cancelled() or fut.exception() is None:
        return
    log = logging.getLogger("metering.worker")
    log.critical("changelog record not delivered (%r): exiting %d without committing more "
                 "(at-least-once: restart to resume)", fut.exception(), EXIT_STUCK)
    logging.shutdown()
    os._exit(EXIT_STUCK)


async def _flush_all(self: ProducerBuffer) -> None:
    """Wait until every buffered message has been handed to aiokafka (no give-up).

    Faust's ``ProducerBuffer.flush`` (``flush_atmost(None)``) gives up after 0.1 s without a
    message sent, and does not wait for the message its sender task has taken off the queue
    but not yet handed to aiokafka. The consumer's commit calls ``producer.flush()`` and then
    commits the acknowledged offsets, so a changelog record still in the buffer (a batch
    writes one per changed key: thousands at an hourly cut; a busy CPU slows the sender)
    could be committed past and lost with the process (kill -9 with the RocksDB directory
    lost: state missing, input committed; issue 18's intermittent loss). This waits for the
    queue to be empty and nothing in flight; aiokafka's own ``flush`` (called next by the
    driver) then waits for delivery. A producer that stops running with messages queued
    raises as Faust's did (the commit fails; nothing is committed).
    """
    while self.size or _in_flight.get(self, 0):
        if self.state != "running" and self.size:
            raise RuntimeError("Cannot flush: Producer not Running")
        self.message_sent.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


# mypy flags assignments to methods (method-assign); replacing these Faust methods with
# ones of the same signature is the point, here and in the two patches below.
ProducerBuffer._send_pending = _counted_send_pending  # type: ignore[method-assign]
ProducerBuffer.flush = _flush_all  # type: ignore[method-assign]


def _no_spinner(self: FaustWorker, level: int) -> None:
    self.spinner = None


# At --loglevel warn and above Faust's worker keeps a terminal spinner and sets the *root*
# logger to DEBUG for it, so every log.debug call in aiokafka/Faust builds a LogRecord
# (measured ~12 % of the worker's throughput, BENCHMARKS.md). The spinner is off here at
# every level; the root logger keeps the requested level.
FaustWorker._disable_spinner_if_level_below_WARN = _no_spinner  # type: ignore[method-assign]

SHUTDOWN_GRACE = 20.0
"""Seconds a worker or archive may take to stop after SIGTERM/SIGINT before it exits 70.

A clean stop waits for the batch in progress, and a batch waiting for acknowledgements
that never come (an output topic deleted, the broker gone) would wait for ever. After the
grace the process exits at once without committing anything more: the batch in progress
was not acknowledged, so its records are delivered again after the restart
(at-least-once). 20 s fits inside Kubernetes' default termination grace (30 s)."""
EXIT_STUCK = 70


def _force_exit(signum: int) -> None:
    log = logging.getLogger("metering.worker")
    log.critical("shutdown on signal %d not finished after %.0f s (a batch waits for sends "
                 "the broker does not acknowledge?): exiting %d without committing more "
                 "(at-least-once: the rest is delivered again after restart)",
                 signum, SHUTDOWN_GRACE, EXIT_STUCK)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os._exit(EXIT_STUCK)


_schedule_shutdown = FaustWorker._schedule_shutdown


def _schedule_bounded_shutdown(self: ModeWorker, signal: signal.Signals) -> None:
    if not self._signal_stop_time:  # the first signal starts the grace period
        timer = threading.Timer(SHUTDOWN_GRACE, _force_exit, args=(int(signal),))
        timer.daemon = True  # a clean stop in time exits without waiting for it
        timer.start()
    _schedule_shutdown(self, signal)


FaustWorker._schedule_shutdown = _schedule_bounded_shutdown  # type: ignore[method-assign]

async def _seek_then_resume(self: Recovery, generation_id: int = 0) -> None:
    """Faust's ``Recovery.on_recovery_completed`` with one change: the stream partitions are
    sought to their committed offsets *before* they are resumed (faust-streaming 0.15.3
    resumes them first; pinned by tests/unit/test_faust_internals.py).

    After a restore from the changelogs the Fetcher is already running, so Faust's order let
    it deliver stream records from the committed offset C before ``perform_seek`` reset the
    consumer's read offset to C; the next record of the fetch in progress (offset P > C + 1)
    then looked like a hole in the log and ``Consumer._add_gap`` counted C+1..P as acked.
    The offsets were committed up to P after the first batch, while the records after it were
    still waiting to be processed: a crash then lost them (issue 18: a kill -9 with the RocksDB
    directory lost, the opens of some resources never applied, their hourly pieces missing).
    Sought while paused, the partitions are delivered once, from C, without a gap.
    """
    consumer = self.app.consumer
    self.log.info("Restore complete!")
    await self.app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [
        asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
        for table in self.tables.values()
    ]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if self.app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id "
                         f"{self.app.consumer_generation_id} param {generation_id}")
        return
    if assignment:  # still paused: nothing is fetched from the old position meanwhile
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(),
                         timeout=self.app.conf.broker_request_timeout)
    consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})
    self.completed.set()
    self.app.flow_control.resume()
    consumer.resume_flow()
    await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
    self.tables.on_actives_ready()
    if not self.app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    self.app.on_rebalance_end()
    self.log.info("Worker ready")


_faust_on_recovery_completed = Recovery.on_recovery_completed
Recovery.on_recovery_completed = _seek_then_resume  # type: ignore[method-assign]


def make_app(s: Settings, app_id: str | None = None, web_port: int | None = None) -> faust.App:
    """A Faust app for these settings (RocksDB store, at-least-once, web on ``web_bind``).

    ``app_id`` (the consumer group) and ``web_port`` default to the worker's settings; the
    archive app passes its own.
    """
    return faust.App(
        app_id or s.app_id,
        broker=f"kafka://{s.broker.split(',')[0]}"
        + "".join(f";kafka://{b}" for b in s.broker.split(",")[1:]),
        store="rocksdb://",
        datadir=str(s.data_dir.resolve()),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",  # exactly_once has known bugs in faust 0.15
        table_standby_replicas=s.standby_replicas,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Static membership (KIP-345): Faust passes this to aiokafka's consumer as
        # group_instance_id (faust/transport/drivers/aiokafka.py, _create_worker_consumer;
        # pinned by tests/unit/test_static_membership.py). None: dynamic membership.
        consumer_group_instance_id=s.group_instance_id or None,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=min(3.0, s.session_timeout / 3),
        broker_max_poll_records=s.batch_size,  # the most records per fetch
        stream_buffer_maxsize=16384,
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        web_port=web_port or s.web_port,
        web_bind=s.web_bind,
        web_host=s.web_bind,
        web_tables_enabled=False,  # would expose billing state over HTTP
        autodiscover=False,
        key_serializer="raw",  # metering encodes and decodes every byte itself
        value_serializer="raw",
        recovery_consistency_check=True,
        **faust_options(s),  # SASL / TLS (agents.kafkaclient)
    )
