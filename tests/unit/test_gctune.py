"""The collector policies of bulk runs (replay) and long-running workers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from storage.gctune import STREAMING_THRESHOLDS, bulk_gc, tune_long_running


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Whatever a test does to the collector is undone afterwards."""
    old = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def test_bulk_gc_raises_the_thresholds_and_restores_them(restored_gc: None) -> None:
    before = gc.get_threshold()
    with bulk_gc(12_345):
        assert gc.get_threshold() == (12_345, 50, 100)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_long_running_process_freezes_what_lives_at_start_and_collects_rarely(
        restored_gc: None) -> None:
    gc.unfreeze()
    alive_at_start = [[] for _ in range(10)]
    tune_long_running()
    assert gc.get_threshold() == STREAMING_THRESHOLDS
    assert gc.get_freeze_count() >= len(alive_at_start)
    assert gc.is_tracked(alive_at_start)
    assert not any(o is alive_at_start for o in gc.get_objects())  # frozen: never traversed


def test_cycles_made_after_tuning_are_still_collected(restored_gc: None) -> None:
    tune_long_running()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
