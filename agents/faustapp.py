"""Construction of Faust apps from :class:`metering.settings.Settings` (shared by the
streaming worker, :mod:`agents.app`, and the archive, :mod:`agents.archive`): every Faust
setting the project chooses, in one call. The patches of Faust internals those apps need
live in :mod:`agents.faustapi` (:func:`agents.faustapi.install_patches`); :func:`make_app`
installs them. Importing this module changes nothing."""

from __future__ import annotations

import faust

from agents.faustapi import EXIT_STUCK as EXIT_STUCK
from agents.faustapi import SHUTDOWN_GRACE as SHUTDOWN_GRACE
from agents.faustapi import install_patches
from agents.kafkaclient import compression_type, faust_options
from metering.settings import Settings


def make_app(s: Settings, app_id: str | None = None, web_port: int | None = None) -> faust.App:
    """A Faust app for these settings (RocksDB store, at-least-once, web on ``web_bind``).

    ``app_id`` (the consumer group) and ``web_port`` default to the worker's settings; the
    archive app passes its own. Installs the patches of Faust internals
    (:func:`agents.faustapi.install_patches`) first.
    """
    install_patches()
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
        producer_compression_type=compression_type(s),
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
