"""Subcommands of ``metering`` that need Kafka: ``demo``."""

from __future__ import annotations

import argparse
import sys
import threading


def _demo(args: argparse.Namespace) -> int:
    from agents.localkafka import BrokerError, LocalKafka

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    broker = LocalKafka()
    try:
        broker.start(log)
    except BrokerError as exc:
        log(f"error: {exc}")
        return 1
    try:
        print(f"Local Kafka broker ready in {broker.startup_seconds:.1f}s at {broker.bootstrap}")
        print(f"  try: METERING_TEST_BROKER={broker.bootstrap} make test-integration")
        print("Press Ctrl-C to stop.", flush=True)
        stop = threading.Event()
        while not stop.wait(args.duration if args.duration else 3600):
            if args.duration:
                break
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
        log("broker stopped")
    return 0


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from metering.settings import ENV_PREFIX, Settings

    g = p.add_argument_group("settings (each also from the environment variable shown)")
    for f in fields(Settings):
        kind = {"int": int, "float": float}.get(str(f.type), str)
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
        print(f"metering check-config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(settings.masked(), indent=2, default=str))
    print(f"settings OK (fingerprint {settings.fingerprint()})", file=sys.stderr)
    return 0


def _export(overrides: dict[str, object]) -> None:
    import os

    from metering.settings import ENV_PREFIX

    for name, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{name.upper()}"] = str(value)


def _worker(args: argparse.Namespace) -> int:
    from metering.settings import SettingsError, load_settings

    overrides = _overrides(args)
    try:
        load_settings(overrides=overrides)
    except SettingsError as exc:
        print(f"metering worker: {exc}", file=sys.stderr)
        return 2
    _export(overrides)  # agents.app reads the environment when imported
    from agents.app import app

    sys.argv = ["metering-worker", "worker", "--loglevel", args.loglevel]
    app.main()
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the Kafka-side subcommands to the ``metering`` parser."""
    w = sub.add_parser(
        "worker", help="run the streaming worker (Faust agents: cs -> usage)",
        description="Run the Faust worker. Same as `faust -A agents.app worker` with the "
        "settings below (flags override METERING_* environment variables).")
    w.add_argument("--loglevel", "-l", default="info",
                   choices=["debug", "info", "warning", "error"])
    _add_settings_flags(w)
    w.set_defaults(func=_worker)
    c = sub.add_parser(
        "check-config", help="print the effective settings (secrets masked); exit 2 if invalid",
        description="Validate the worker settings from METERING_* and flags; every problem "
        "is reported. Exit 0 if valid, 2 otherwise.")
    _add_settings_flags(c)
    c.set_defaults(func=_check_config)

    p = sub.add_parser("demo", help="run the pipeline end to end on the embedded local broker")
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)"
    )
    p.set_defaults(func=_demo)
