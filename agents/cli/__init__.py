"""The ``metering`` command line: every subcommand's arguments, exit codes and printing.

The package is the one place where the command line lives:

* this module: :func:`main` (the console script) and the :data:`COMMANDS` table;
* :mod:`agents.cli.exits`: the exit codes and the one error-to-exit-code map;
* :mod:`agents.cli.batch`: ``replay``, ``compact``, ``report`` (engines in :mod:`storage`);
* :mod:`agents.cli.workers`: ``worker``, ``archive``, ``check-config`` (Faust apps);
* :mod:`agents.cli.kafka`: ``kafka up|down|status`` (the embedded broker);
* :mod:`agents.cli.simulate`, :mod:`agents.cli.demo`: the parsers of ``simulate`` and
  ``demo`` (their runs are :mod:`agents.simulate` and :mod:`agents.demo`);
* :mod:`agents.cli.progress`: progress lines on stderr; :mod:`agents.cli.formats`: the text
  of batch results.

Each subcommand module has ``register(subparsers)``; a command's heavy imports happen only
when it runs. Exit codes (every subcommand): 0 success, 1 the command ran but failed,
2 bad usage or invalid options, 3 an input could not be read, 4 an output could not be
written, 130 interrupted (Ctrl-C); see :mod:`agents.cli.exits`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

import metering
from agents.cli.exits import EXIT_FAILED as EXIT_FAILED
from agents.cli.exits import EXIT_INPUT as EXIT_INPUT
from agents.cli.exits import EXIT_INTERRUPTED, EXIT_USAGE, fail
from agents.cli.exits import EXIT_OK as EXIT_OK
from agents.cli.exits import EXIT_OUTPUT as EXIT_OUTPUT
from metering.errors import MeteringError

COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("agents.cli.simulate",
                 "generate a realistic CloudStack event stream whose true usage is known"),
    "replay": ("agents.cli.batch",
               "meter recorded CloudStack events into a Parquet dataset (batch, no broker)"),
    "compact": ("agents.cli.batch", "merge the Parquet files of closed days into one sorted, "
                "deduplicated file per day"),
    "report": ("agents.cli.batch",
               "usage hours and interval counts per account, usage type and/or day"),
    "worker": ("agents.cli.workers", "run the streaming worker (Faust agents: cs -> usage)"),
    "archive": ("agents.cli.workers",
                "run the archive worker (usage topic -> Parquet dataset)"),
    "route": ("agents.cli.workers",
              "forward input records matching event routes to their topics"),
    "check-config": ("agents.cli.workers",
                     "print the effective settings (secrets masked); exit 2 if invalid"),
    "demo": ("agents.cli.demo",
             "run the pipeline end to end, live, on the embedded local broker"),
    "kafka": ("agents.cli.kafka", "start/stop a local single-node Kafka broker (Maven Central "
              "jars, no Docker)"),
}
"""Subcommand -> (module whose ``register`` adds it; its help line).

``metering --help`` is drawn from this table alone and ``metering CMD ...`` imports only
the module of ``CMD``: pyarrow, pandas and faust load only in the commands that use them,
so the help of every command starts in well under a second (tests/unit/test_cli.py)."""

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrar(module_name: str) -> Registrar:
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
    except MeteringError as exc:  # not handled by the command: the one map decides
        return fail(args.command, exc)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
