"""The engine keeps no unbounded set of resource states of its own.

A worker holds a bounded cache of decoded states over RocksDB (``agents.state``); the
engine's lazily synced open-interval index (``Accounts.touched``) must not keep every state
touched since the last period cut alive, or a million resources opened within one period
hold a million states in memory (measured: peak RSS 2.2 GiB instead of 0.9 GiB).
"""

from __future__ import annotations

import itertools
from typing import Any

from metering.engine import Engine, Policy, Record
from metering.engine.accounts import TOUCHED_MAX
from metering.engine.engine import FINISH_STEP_ROWS
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


def test_a_horizon_years_past_the_input_is_cut_in_bounded_steps() -> None:
    """``metering replay --until`` years past its input gives every open resource a row per
    period up to the horizon; replay (``storage.replay.drive``) takes them in steps of about
    ``FINISH_STEP_ROWS`` rows of whole resources, so the engine's memory stays bounded (in
    one call, 300 resources cut three years ahead are 328 500 rows at once; the bench
    trace's open resources a year ahead, 5.4 million rows: the engine process peaked at
    1 985 MB instead of 202 MB)."""
    from storage.replay import drive

    resources, horizon = 300, T0 + 3 * 365 * 86_400_000
    engine = Engine(Policy(grid=PeriodGrid("day", "UTC")))
    batch = [Record(UsageEvent("VM.CREATE", "acct-1", f"vm-{i:03d}", "z1", T0 + i),
                    Source("cs", 0, i), None, None) for i in range(resources)]
    emitted: list[int] = []
    per_resource: dict[str, int] = {}
    step_of: dict[str, int] = {}  # resource -> the emit its rows came in

    def emit(rows: list[Any]) -> None:
        emitted.append(len(rows))
        for row in rows:
            per_resource[row.resource_id] = per_resource.get(row.resource_id, 0) + 1
            assert step_of.setdefault(row.resource_id, len(emitted)) == len(emitted)

    drive(engine, [batch], horizon, emit)
    per = set(per_resource.values())
    assert len(per_resource) == resources  # every resource ...
    assert len(per) == 1  # ... with all its rows
    (rows_each,) = per
    assert rows_each >= 3 * 365
    assert sum(emitted) == resources * rows_each
    assert len(emitted) >= 3
    assert max(emitted) < FINISH_STEP_ROWS + rows_each  # whole resources, about a step each


def test_the_horizon_cut_reports_its_progress() -> None:
    """``drive`` tells how far the horizon cut is (the replay's progress line and its
    far-horizon notice come from it): once before the cut, after each step, once at the
    end; the resources cut and the rows only grow, and the rows add up to what was
    emitted by the cut."""
    from storage.replay import HorizonProgress, drive

    resources, horizon = 300, T0 + 3 * 365 * 86_400_000
    engine = Engine(Policy(grid=PeriodGrid("day", "UTC")))
    # each resource two open intervals (a VM's RUNNING_VM and ALLOCATED_VM)
    batch = [Record(UsageEvent(event, "acct-1", f"vm-{i:03d}", "z1", T0 + i),
                    Source("cs", 0, 2 * i + k), None, None)
             for i in range(resources) for k, event in enumerate(("VM.CREATE", "VM.START"))]
    reports: list[HorizonProgress] = []
    cut_rows = 0

    def emit(rows: list[Any]) -> None:
        nonlocal cut_rows
        if reports:  # the cut has started
            cut_rows += len(rows)

    drive(engine, [batch], horizon, emit, reports.append)
    first, last = reports[0], reports[-1]
    assert (first.cut, first.rows, first.done) == (0, 0, False)
    assert first.resources == resources
    assert first.intervals == 2 * resources
    assert first.until_ms == horizon
    assert first.newest_ms == T0 + resources - 1
    assert last.done
    assert last.cut == resources
    assert last.rows == cut_rows > 0
    assert [r.done for r in reports].count(True) == 1
    assert len(reports) >= 4  # several steps in between
    for a, b in itertools.pairwise(reports):
        assert a.cut <= b.cut <= resources
        assert a.rows <= b.rows
