"""``metering worker``, ``archive``, ``route`` and ``check-config``: the commands of the Kafka
apps."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from agents.cli.exits import EXIT_OK, fail


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from metering.settings import ENV_PREFIX, Settings, is_secret, parse_bool

    kinds: dict[str, Callable[[str], object]] = {"int": int, "float": float, "bool": parse_bool}
    g = p.add_argument_group("settings (each also from the environment variable shown)")
    for f in fields(Settings):
        if is_secret(f.name):
            continue  # secrets never on the command line (visible in ps): env or file only
        kind = kinds.get(str(f.type), str)
        g.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f"set_{f.name}", type=kind, default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')} [{ENV_PREFIX}{f.name.upper()}, "
            f"default {f.default!s}]",
        )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("set_") and v is not None}


def _check_config(args: argparse.Namespace) -> int:
    import json

    from metering.settings import SettingsError, load_settings

    try:
        settings = load_settings(overrides=_overrides(args))
    except SettingsError as exc:
        return fail("check-config", exc)
    print(json.dumps(settings.masked(), indent=2, default=str))
    print(f"settings OK (fingerprint {settings.fingerprint()})", file=sys.stderr)
    return EXIT_OK


def _run_app(args: argparse.Namespace, command: str, module: str) -> int:
    """Build the app of ``module`` (its ``create_app(settings)``) from the flags and the
    ``METERING_*`` environment, run the start-up checks, then run it as a Faust worker."""
    import importlib

    from agents import preflight
    from metering.settings import SettingsError, load_settings

    try:
        settings = load_settings(overrides=_overrides(args))
    except SettingsError as exc:
        return fail(command, exc)
    loaded = importlib.import_module(module)
    app = loaded.create_app(settings)
    # Before Faust starts: wait for the broker, refuse settings the existing state cannot
    # take (agents.preflight). The worker's module names its state topics; others only wait.
    state_topics = getattr(loaded, "state_topics", None)
    code = preflight.run(settings, state_topics(app) if state_topics else None,
                         args.loglevel)
    if code is not None:
        return code
    sys.argv = [f"metering-{command}", "worker", "--loglevel", args.loglevel]
    app.main()
    return EXIT_OK


def _worker(args: argparse.Namespace) -> int:
    return _run_app(args, "worker", "agents.app")


def _archive(args: argparse.Namespace) -> int:
    return _run_app(args, "archive", "agents.archive")


def _route(args: argparse.Namespace) -> int:
    import logging

    from agents import preflight
    from metering.settings import SettingsError, load_settings

    try:
        settings = load_settings(overrides=_overrides(args))
        if not settings.routes.strip():
            raise SettingsError(["routes: no route given: set --routes / METERING_ROUTES "
                                 "(PATTERN=TOPIC[,PATTERN=TOPIC...], e.g. "
                                 "ActionEvent.*.Account.*=accounts)"])
    except SettingsError as exc:
        return fail("route", exc)
    code = preflight.run(settings, None, args.loglevel)  # waits for the broker (exit 1)
    if code is not None:
        return code
    logging.basicConfig(level={"warn": "WARNING"}.get(args.loglevel, args.loglevel.upper()),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: "
                        "%(message)s")
    from agents import logfilter
    from agents.route import run

    # aiokafka repeats itself while the broker is down (README, Observability)
    logfilter.install(logging.getLogger().handlers)

    return run(settings)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the Kafka-side subcommands to the ``metering`` parser."""
    w = sub.add_parser(
        "worker", help="run the streaming worker (Faust agents: cs -> usage)",
        description="Run the Faust worker. Same as `faust -A agents.app worker` with the "
        "settings below (flags override METERING_* environment variables), plus start-up "
        "checks before any agent starts: it waits for the broker up to 3 x session_timeout "
        "(exit 1 if unreachable), and refuses (exit 2) a partition count other than the "
        "existing internal topic's and changelogs', or a period/timezone other than the "
        "existing state's (unless --force-period-change true). Exit 70: a batch failed, or "
        "a stop (SIGTERM) did not finish within 20 s; nothing past it is committed.")
    w.add_argument("--loglevel", "-l", default="info",
                   choices=["debug", "info", "warn", "error"])
    _add_settings_flags(w)
    w.set_defaults(func=_worker)
    a = sub.add_parser(
        "archive", help="run the archive worker (usage topic -> Parquet dataset)",
        description="Run the archive worker: its own consumer group reads the usage topic "
        "and writes the Parquet dataset under --archive-dir, committing offsets only after "
        "the files are durable. Same as `faust -A agents.archive worker`.")
    a.add_argument("--loglevel", "-l", default="info",
                   choices=["debug", "info", "warn", "error"])
    _add_settings_flags(a)
    a.set_defaults(func=_archive)
    r = sub.add_parser(
        "route", help="forward input records matching event routes to their topics",
        description="Forward each record of the input topic(s) whose route key "
        "category.type.resourceType.resourceUUID (CloudStack's event-bus key: missing parts "
        "*, dots inside a part -) matches a pattern of --routes to that route's topic, "
        "unchanged (key, value, timestamp; header metering-source). Patterns: * one word, "
        "# zero or more. Own consumer group <app_id>-route; offsets are committed after the "
        "sends are acknowledged (at least once). Exit 0 after SIGTERM, 1 if the broker is "
        "unreachable or a send fails, 2 for bad settings.")
    r.add_argument("--loglevel", "-l", default="info",
                   choices=["debug", "info", "warn", "error"])
    _add_settings_flags(r)
    r.set_defaults(func=_route)
    c = sub.add_parser(
        "check-config", help="print the effective settings (secrets masked); exit 2 if invalid",
        description="Validate the worker settings from METERING_* and flags; every problem "
        "is reported. Exit 0 if valid, 2 otherwise.")
    _add_settings_flags(c)
    c.set_defaults(func=_check_config)
