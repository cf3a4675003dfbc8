"""The Faust app of the streaming worker: built once from :class:`metering.settings.Settings`.

``faust -A agents.app worker`` and ``metering worker`` both run it. Settings come from the
``METERING_*`` environment (``metering worker`` also takes flags and exports them before
importing this module). Topics, tables and agents live in :mod:`agents.pipeline`.
"""

from __future__ import annotations

from agents.faustapp import make_app
from metering.settings import Settings, load_settings

settings: Settings = load_settings()

app = make_app(settings)

# Importing the pipeline registers topics, tables, agents and timers on ``app``.
from agents import pipeline  # noqa: E402  (registration by import, after app exists)


def state_topics() -> list[str]:
    """Topics that must have exactly ``settings.partitions`` partitions (checked at start by
    :mod:`agents.preflight`): the internal events topic and the tables' changelogs."""
    return [pipeline.events_topic.get_topic_name(),
            *(table.changelog_topic.get_topic_name() for table in app.tables.values())]
