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


def _registrars() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    regs: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []
    for modname in ("agents.simulate", "metering.replay", "metering.compact", "metering.report",
                    "agents.commands", "agents.demo"):
        try:
            module = __import__(modname, fromlist=["register"])
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        regs.append(module.register)
    regs.append(_add_kafka)
    return regs


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metering`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
