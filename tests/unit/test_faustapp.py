"""The Faust app wiring: settings that must hold in every worker and archive process."""

from __future__ import annotations

import logging

import faust

from agents.faustapp import make_app
from metering.settings import Settings


def test_warn_level_keeps_the_root_logger_at_warn() -> None:
    """Faust's spinner would set the root logger to DEBUG at --loglevel warn (every
    ``log.debug`` in aiokafka then builds a record; ~12 % of the worker's throughput)."""
    app = make_app(Settings(), app_id="spinner-test")
    worker = faust.Worker(app, loglevel="warn")
    root = logging.getLogger("spinner-test-root")
    root.addHandler(logging.NullHandler())
    root.setLevel(logging.WARNING)
    worker.on_setup_root_logger(root, logging.WARNING)
    assert worker.spinner is None
    assert root.level == logging.WARNING
    assert len(root.handlers) == 1
