"""The engine keeps no unbounded set of resource states of its own.

A worker holds a bounded cache of decoded states over RocksDB (``agents.state``); the
engine's lazily synced open-interval index (``Accounts.touched``) must not keep every state
touched since the last period cut alive, or a million resources opened within one period
hold a million states in memory (measured: peak RSS 2.2 GiB instead of 0.9 GiB).
"""

from __future__ import annotations

from metering.engine import Engine, Policy, Record
from metering.engine.accounts import TOUCHED_MAX
from metering.events import Source, UsageEvent
from metering.periods import PeriodGrid

T0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def test_touched_states_are_bounded_and_the_index_stays_exact() -> None:
    engine = Engine(Policy(grid=PeriodGrid("day", "UTC")))
    batch = 2_000
    n = 3 * TOUCHED_MAX
    for first in range(0, n, batch):
        engine.apply([Record(UsageEvent("VM.CREATE", "acct-1", f"vm-{i}", "z1", T0 + i),
                             Source("cs", 0, i), None, None)
                      for i in range(first, first + batch)])
        assert len(engine.accounts.touched) <= TOUCHED_MAX + batch
    assert len(engine.open_entities) == n  # the index still sees every open resource
    assert engine.accounts.open_of("acct-1") == sorted(f"vm-{i}" for i in range(n))
