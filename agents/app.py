"""The Faust app of the streaming worker: :func:`create_app` builds it from
:class:`metering.settings.Settings`.

Importing this module builds nothing, reads no environment and patches nothing:
:func:`create_app` does all of it (the patches of Faust internals, :mod:`agents.faustapi`;
the app, :func:`agents.faustapp.make_app`; whole-fetch consumption of the input and internal
topics; the topics, tables, tasks, timers and rebalance handlers of one
:class:`agents.pipeline.Pipeline`, :func:`agents.pipeline.register`). Each call builds a new
app with a pipeline of its own: the pipeline keeps no state in module globals.

``metering worker`` calls ``create_app(settings)`` with the settings of its flags and the
``METERING_*`` environment. ``faust -A agents.app worker`` reads the attribute ``app`` of
this module: :data:`app` (and :data:`settings`) are built on first use, by
``create_app(load_settings())`` (as :mod:`agents.archive` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.faustapi import use_batch_fetches
from agents.faustapp import make_app
from agents.pipeline import register
from metering.regions import input_topic_regions
from metering.settings import Settings, load_settings

if TYPE_CHECKING:
    import faust

app: faust.App
"""The worker app of the ``METERING_*`` environment (what ``faust -A agents.app worker``
reads), built on first use."""
settings: Settings
"""The settings :data:`app` was built from."""

_default: tuple[Settings, faust.App] | None = None
"""The settings and the app of :data:`app`, once built."""


def create_app(settings: Settings) -> faust.App:
    """The streaming worker's Faust app for ``settings``, with the topics, tables, tasks,
    timers and rebalance handlers of a new :class:`agents.pipeline.Pipeline` registered
    on it. Each call builds a new app."""
    app = make_app(settings)
    use_batch_fetches(app, [input_topic_regions(settings.input_topic,
                                                settings.input_topics).topics,
                            settings.events_topic])
    register(app, settings)
    return app


def __getattr__(name: str) -> Any:
    """``app`` and ``settings`` (see the module doc); built on first use."""
    global _default
    if name not in ("app", "settings"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _default is None:
        loaded = load_settings()
        _default = (loaded, create_app(loaded))
    return _default[0] if name == "settings" else _default[1]


def state_topics(app: faust.App | None = None) -> dict[str, dict[str, str]]:
    """Topics that must have exactly ``settings.partitions`` partitions, with the config
    Faust would create them with (checked, and created if missing, at start by
    :mod:`agents.preflight`): the internal topics the worker app ``app`` (default: this
    module's :data:`app`) subscribes to (the pipeline's events topic) and its tables'
    changelogs."""
    app = app if app is not None else __getattr__("app")
    internal = sorted((t for t in app.topics if t.internal), key=lambda t: t.get_topic_name())
    topics = [*internal, *(t.changelog_topic for t in app.tables.values())]
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
