"""Cyclic garbage-collector tuning for bulk processing.

Metering keeps hundreds of thousands of small, long-lived, acyclic objects (entity states,
interval rows). CPython's default generation-0 threshold (700 allocations) then triggers
full-heap collections far too often: measured on a 1-million-record replay, collection took
about 45 % of the run. Raising the thresholds keeps cycle collection (which nothing here
depends on) while removing most of that cost.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bulk_gc(threshold0: int = 100_000) -> Iterator[None]:
    """Within the block, collect generation 0 every ``threshold0`` allocations, and rarely
    the older generations; objects alive at entry are frozen out of collections."""
    old = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(threshold0, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
