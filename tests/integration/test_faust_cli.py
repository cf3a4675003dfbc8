"""Faust's own command line runs both apps: ``faust -A agents.app worker`` and ``faust -A
agents.archive worker`` (each module's ``app``, built on first use by its ``create_app``
from the ``METERING_*`` environment; no start-up checks, unlike ``metering worker``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import _create_topic
from tests.integration.kafkautil import end_offsets, produce
from tests.integration.test_archive import PARTITIONS, intervals, produce_usage, wait_archived
from tests.integration.test_worker import HOURS, _run_and_compare, sentinel
from tests.integration.workerproc import WorkerProc
from tests.tracegen import build_trace

pytestmark = pytest.mark.kafka


def test_faust_cli_runs_the_worker_app(
    kafka_bootstrap: str, topic_factory: Callable[..., str],
    unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    topic = topic_factory(partitions=4, prefix="cs")
    produce(kafka_bootstrap, topic, build_trace(seed=21, hours=HOURS))
    for p in range(4):
        produce(kafka_bootstrap, topic, [(None, sentinel(p))] * 2, partition=p)
    app = unique_name("fcli")
    worker = WorkerProc(kafka_bootstrap, app, topic, tmp_path / "data", faust_cli=True,
                        extra={"METERING_IDLE_ADVANCE": "100000"})
    try:
        _run_and_compare(kafka_bootstrap, topic, worker, tmp_path)  # rows = replay's
        assert worker.stop() == 0
    finally:
        worker.kill()


def test_faust_cli_runs_the_archive_app(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path,
) -> None:
    archive = WorkerProc(kafka_bootstrap, unique_name("fcli-arch"), "unused-input",
                         tmp_path / "data", partitions=PARTITIONS, command="archive",
                         faust_cli=True, extra={"METERING_ARCHIVE_FLUSH_SECONDS": "0.3"})
    asyncio.run(_create_topic(kafka_bootstrap, archive.usage_topic, PARTITIONS, {}))
    produce_usage(kafka_bootstrap, archive.usage_topic, intervals(500))
    try:
        archive.start()
        wait_archived(archive, end_offsets(kafka_bootstrap, archive.usage_topic))
        assert archive.stop() == 0
    finally:
        archive.kill()
