"""The streaming worker's wiring in process (no broker): each app built by
``agents.pipeline.register`` has its own state, and the rebalance handlers and the metric
families work on that state only."""

from __future__ import annotations

import asyncio
from typing import cast

from faust.types import TP

from agents.faustapi import use_batch_fetches
from agents.faustapp import make_app
from agents.pipeline import Pipeline, register
from agents.state import PartitionMeter
from metering.events import lane_of
from metering.settings import Settings


def _pipeline(app_id: str) -> Pipeline:
    settings = Settings(app_id=app_id)
    app = make_app(settings)
    use_batch_fetches(app, [(settings.input_topic,), settings.events_topic])
    return register(app, settings)


def test_rebalance_handlers_change_only_their_own_pipeline() -> None:
    first, second = _pipeline("wiring-a"), _pipeline("wiring-b")
    settings = first.settings
    lane = lane_of(settings.input_topic, 1)
    for p in (first, second):  # as after an assignment whose recovery finished
        p.owned_lanes.add(lane)
        p.read_to[lane] = 42
        # an engine of partition 0 (a stand-in: a real one opens its RocksDB)
        p.meters.by_partition[0] = cast(PartitionMeter, object())
    events0 = TP(settings.events_topic, 0)

    async def rebalance() -> None:
        await first.on_revoked({TP(settings.input_topic, 1), events0})
        await first.on_assigned({events0})  # no input partition: no recovery started

    asyncio.run(rebalance())
    assert lane not in first.owned_lanes
    assert lane not in first.read_to
    assert first.meters.by_partition == {}
    assert first.pending == []
    assert second.owned_lanes == {lane}
    assert second.read_to == {lane: 42}
    assert list(second.meters.by_partition) == [0]


def test_metric_families_read_the_pipelines_own_counters() -> None:
    first, second = _pipeline("wiring-c"), _pipeline("wiring-d")
    first.stats.intervals["vm_running"] += 3
    first.stats.usage_ms["vm_running"] += 7200_000

    def samples(p: Pipeline) -> dict[str, float]:
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in p.worker_families() for s in family.samples
                if s.name.startswith(("metering_intervals_emitted",
                                      "metering_usage_emitted"))}

    assert samples(first) == {
        "metering_intervals_emitted_total[('usage_type', 'vm_running')]": 3,
        "metering_usage_emitted_seconds_total[('usage_type', 'vm_running')]": 7200.0}
    assert samples(second) == {}
