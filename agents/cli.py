"""The ``metering`` command line.

Subcommands register themselves through small ``add_arguments(parser)`` / ``run(args)``
pairs: ``replay`` lives in :mod:`metering` (pure), ``simulate`` (which can produce to Kafka)
and the worker commands in :mod:`agents`; heavy imports happen only when a subcommand runs.

Exit codes (every subcommand):

* 0: success
* 1: the command ran but failed (for example a broker that would not start)
* 2: bad usage or invalid options (argparse and option validation)
* 3: an input could not be read
* 4: an output could not be written
* 130: interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import metering

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_INTERRUPTED = 130


def _kafka_command(args: argparse.Namespace) -> int:
    from agents import localkafka

    if args.action == "up":
        info = localkafka.up_detached(log=lambda m: print(m, file=sys.stderr))
        print(f"Kafka {info['version']} is up. Bootstrap: {info['bootstrap']}")
        print(f"  export METERING_BROKER={info['bootstrap']}")
        print(f"  export METERING_TEST_BROKER={info['bootstrap']}   # tests reuse it")
        print("  stop it with: make kafka-down")
        return EXIT_OK
    if args.action == "down":
        localkafka.down_detached(log=print)
        return EXIT_OK
    info_or_none = localkafka.status_detached()
    if info_or_none is None:
        print("no local Kafka broker is running")
        return EXIT_FAILED
    print(f"Kafka is running at {info_or_none['bootstrap']} (pid {info_or_none['pid']})")
    return EXIT_OK


def _add_kafka(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "kafka",
        help="start/stop a local single-node Kafka broker (Maven Central jars, no Docker)",
        description="Manage the embedded local Kafka broker used by the demo and the tests.",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=_kafka_command)


COMMANDS: dict[str, tuple[str | None, str]] = {
    "simulate": ("agents.simulate",
                 "generate a realistic CloudStack event stream whose true usage is known"),
    "replay": ("agents.batchcli",
               "meter recorded CloudStack events into a Parquet dataset (batch, no broker)"),
    "compact": ("agents.batchcli", "merge the Parquet files of closed days into one sorted, "
                "deduplicated file per day"),
    "report": ("agents.batchcli",
               "usage hours and interval counts per account, usage type and/or day"),
    "worker": ("agents.commands", "run the streaming worker (Faust agents: cs -> usage)"),
    "archive": ("agents.commands", "run the archive worker (usage topic -> Parquet dataset)"),
    "check-config": ("agents.commands",
                     "print the effective settings (secrets masked); exit 2 if invalid"),
    "demo": ("agents.demo", "run the pipeline end to end, live, on the embedded local broker"),
    "kafka": (None, "start/stop a local single-node Kafka broker (Maven Central jars, no "
              "Docker)"),
}
"""Subcommand -> (module whose ``register`` adds it, or None for ``kafka``; its help line).

``metering --help`` is drawn from this table alone and ``metering CMD ...`` imports only
the module of ``CMD``: pyarrow, pandas and faust load only in the commands that use them,
so the help of every command starts in well under a second (tests/unit/test_cli.py)."""

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrar(module_name: str | None) -> Registrar:
    if module_name is None:
        return _add_kafka
    module = importlib.import_module(module_name)
    register: Registrar = module.register
    return register


def _top_parser() -> tuple[argparse.ArgumentParser,
                           argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="metering",
        description=(
            "Usage and billing metering for Apache CloudStack: CloudStack event-bus records "
            "in, per-account usage intervals out."
        ),
        epilog="Exit codes: 0 ok, 1 failed, 2 bad usage, 3 unreadable input, "
        "4 unwritable output, 130 interrupted.",
    )
    parser.add_argument(
        "--version", action="version", version=f"metering {metering.__version__}"
    )
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs).

    With ``only`` (a subcommand name) just that subcommand's module is imported and
    registered, and every other subcommand is a stub carrying its help line; without it,
    every module registers (the full parser).
    """
    parser, sub = _top_parser()
    modules = {m for name, (m, _h) in COMMANDS.items() if only is None or name == only}
    for module_name in dict.fromkeys(m for m, _h in COMMANDS.values()):
        if module_name in modules:
            _registrar(module_name)(sub)
    for name, (module_name, help_line) in COMMANDS.items():
        if module_name not in modules:
            sub.add_parser(name, help=help_line)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if known."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metering`` console script; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(words)
    if command is None:  # top-level help, --version or a typo: no subcommand module loads
        parser, sub = _top_parser()
        for name, (_module, help_line) in COMMANDS.items():
            sub.add_parser(name, help=help_line)
    else:
        parser = build_parser(only=command)
    args = parser.parse_args(words)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
