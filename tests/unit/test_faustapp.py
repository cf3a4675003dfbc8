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


def test_compression_reaches_the_worker_producer_and_off_means_none() -> None:
    """``compression`` is the codec of every batch the app's producer sends (usage, rejects,
    internal topic, changelogs); ``none`` leaves aiokafka's default (uncompressed)."""
    assert make_app(Settings(compression="zstd"), app_id="c1").conf.producer_compression_type \
        == "zstd"
    assert make_app(Settings(), app_id="c2").conf.producer_compression_type is None


def test_every_compression_value_has_its_codec_installed() -> None:
    """lz4, zstd and snappy need cramjam (a dependency); without it aiokafka's producer
    would refuse to start only when the worker runs."""
    import aiokafka.codec as codec

    from metering.settings import COMPRESSIONS

    have = {"none": True, "gzip": codec.has_gzip(), "snappy": codec.has_snappy(),
            "lz4": codec.has_lz4(), "zstd": codec.has_zstd()}
    assert {c: have[c] for c in COMPRESSIONS} == dict.fromkeys(COMPRESSIONS, True)


def test_an_unknown_compression_is_refused_naming_the_choices() -> None:
    import pytest

    from metering.settings import SettingsError

    with pytest.raises(SettingsError, match=r"compression: 'brotli' is not one of none, gzip, "
                       r"snappy, lz4, zstd"):
        Settings(compression="brotli").validate()
