"""The Faust app of the streaming worker: built once from :class:`metering.settings.Settings`.

``faust -A agents.app worker`` and ``metering worker`` both run it. Settings come from the
``METERING_*`` environment (``metering worker`` also takes flags and exports them before
importing this module). Topics, tables and agents live in :mod:`agents.pipeline`.
"""

from __future__ import annotations

from agents.faustapi import use_batch_fetches
from agents.faustapp import make_app
from metering.regions import input_topic_regions
from metering.settings import Settings, load_settings

settings: Settings = load_settings()

app = make_app(settings)
use_batch_fetches(app, [input_topic_regions(settings.input_topic, settings.input_topics).topics,
                        settings.events_topic])

# Importing the pipeline registers topics, tables, agents and timers on ``app``.
from agents import pipeline  # noqa: E402  (registration by import, after app exists)


def state_topics() -> dict[str, dict[str, str]]:
    """Topics that must have exactly ``settings.partitions`` partitions, with the config
    Faust would create them with (checked, and created if missing, at start by
    :mod:`agents.preflight`): the internal events topic and the tables' changelogs."""
    topics = [pipeline.events_topic, *(t.changelog_topic for t in app.tables.values())]
    specs: dict[str, dict[str, str]] = {}
    for topic in topics:
        config = {k: str(v) for k, v in (topic.config or {}).items()}
        flags = ["compact"] * bool(topic.compacting) + ["delete"] * bool(topic.deleting)
        policy = ",".join(flags)
        if policy:
            config["cleanup.policy"] = policy
        if topic.retention:
            config["retention.ms"] = str(int(topic.retention * 1000))
        specs[topic.get_topic_name()] = config
    return specs
