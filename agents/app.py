"""The Faust app of the streaming worker: :func:`create_app` builds it from
:class:`metering.settings.Settings`.

Importing this module builds nothing, reads no environment and patches nothing:
:func:`create_app` does all of it (the patches of Faust internals, :mod:`agents.faustapi`;
the app, :func:`agents.faustapp.make_app`; whole-fetch consumption of the input and internal
topics; the topics, tables, agents and timers of :mod:`agents.pipeline`).

``metering worker`` calls ``create_app(settings)`` with the settings of its flags and the
``METERING_*`` environment. ``faust -A agents.app worker`` reads the attribute ``app`` of
this module: :data:`app` (and :data:`settings`) are computed on first use, by
``create_app(load_settings())`` unless :func:`create_app` ran before.

One worker app per process: :mod:`agents.pipeline` still declares its topics, tables and
agents as module globals at its import, on the app of this module (``from agents.app import
app, settings``). So :func:`create_app` may build one app per process (a second call with
the same settings returns it; other settings raise), and ``app``/``settings`` here are the
compatibility names through which the pipeline finds it. The next step is a
``register(app, settings)`` in the pipeline (as :func:`agents.archive.create_app` does for
the archive); then these names and the import cycle app <-> pipeline go away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.faustapi import use_batch_fetches
from agents.faustapp import make_app
from metering.regions import input_topic_regions
from metering.settings import Settings, load_settings

if TYPE_CHECKING:
    import faust

app: faust.App
"""The worker's app (compatibility name for :mod:`agents.pipeline` and ``faust -A``): the one
:func:`create_app` built, or ``create_app(load_settings())`` on first use."""
settings: Settings
"""The settings :data:`app` was built from."""

_built: tuple[Settings, faust.App] | None = None
"""The settings and the app :func:`create_app` built in this process (see the module doc)."""


def create_app(settings: Settings) -> faust.App:
    """The streaming worker's Faust app for ``settings``, with the pipeline's topics, tables,
    agents and timers registered on it (:mod:`agents.pipeline`).

    Raises ``RuntimeError`` if this process already built the worker app from other
    settings: the pipeline's registrations are module globals, made once per process.
    """
    global _built
    if _built is not None:
        if _built[0] == settings:
            return _built[1]
        raise RuntimeError(
            "agents.app.create_app: this process already built the worker app from other "
            "settings; agents.pipeline registers its topics, tables and agents once per "
            "process (run one worker app per process)")
    built = make_app(settings)
    use_batch_fetches(built, [input_topic_regions(settings.input_topic,
                                                  settings.input_topics).topics,
                              settings.events_topic])
    _built = (settings, built)
    try:
        # The pipeline registers on the app of this module when it is first imported
        # (``from agents.app import app, settings``: the names below answer with ``built``).
        from agents import pipeline  # noqa: F401
    except BaseException:
        _built = None
        raise
    return built


def __getattr__(name: str) -> Any:
    """``app`` and ``settings`` (see the module doc); built on first use."""
    if name not in ("app", "settings"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _built is None:
        create_app(load_settings())
    assert _built is not None
    return _built[0] if name == "settings" else _built[1]


def state_topics(app: faust.App | None = None) -> dict[str, dict[str, str]]:
    """Topics that must have exactly ``settings.partitions`` partitions, with the config
    Faust would create them with (checked, and created if missing, at start by
    :mod:`agents.preflight`): the internal events topic and the tables' changelogs of the
    worker app ``app`` (default: this module's :data:`app`)."""
    app = app if app is not None else __getattr__("app")
    from agents import pipeline  # built with the app (create_app)

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
