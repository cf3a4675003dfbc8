"""The arguments of ``metering simulate`` (the run is :func:`agents.simulate.run`).

Building this parser imports nothing of the simulator, so ``metering simulate --help`` starts
fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_START = "2025-03-01T00:00:00Z"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser(
        "simulate",
        help="generate a realistic CloudStack event stream whose true usage is known",
        description=(
            "Simulate a seeded CloudStack cloud (accounts, VMs, volumes, IPs, templates, "
            "rules, networks, deletions, ...) and write the records its event bus would "
            "publish, in publication order, plus the true usage by construction. The same "
            "options and seed always give the same bytes."
        ),
        epilog=(
            "examples:\n"
            "  metering simulate --accounts 1000 --days 30 --seed 1 --output x.jsonl "
            "--truth t.json\n"
            "  metering simulate --format kcat --output x.kcat.jsonl.gz\n"
            "  metering simulate --to-kafka 127.0.0.1:9092 --topic cs --rate 500\n"
            "  metering simulate --to-kafka 127.0.0.1:9092 --speed 720 --start now-12h "
            "--until now\n"
            "    (12 simulated hours ending now, replayed in 60 s: 1 simulated hour per 5 s)\n"
            "exit codes: 0 ok, 1 Kafka failed, 2 bad options, 4 unwritable output, "
            "130 interrupted"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("the cloud")
    g.add_argument("--accounts", type=int, default=20, help="accounts (default 20)")
    g.add_argument("--days", type=float, default=2.0,
                   help="simulated days from --start (default 2)")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument("--start", default=None,
                   help=f"first instant, ISO 8601, or relative to the wall clock: now, "
                        f"now-12h, now-2d (default {DEFAULT_START}; with --speed: now)")
    g.add_argument("--until", default=None,
                   help="end of the simulation and horizon of the truth, ISO 8601 or "
                        "relative (now, now+1h) (default: --start plus --days)")
    g.add_argument("--tz-offset", default="+0530",
                   help="management-server UTC offsets of eventDateTime, comma separated; "
                        "each record comes from one of them (default +0530)")
    g.add_argument("--malformed", type=float, default=0.001,
                   help="fraction of extra malformed records (default 0.001)")
    g.add_argument("--zones", type=int, default=3, help="zones (default 3)")
    o = p.add_argument_group("outputs")
    o.add_argument("--output", type=Path, help="write records to FILE (.gz compresses)")
    o.add_argument("--format", choices=["jsonl", "kcat"], default="jsonl",
                   help="jsonl: one record value per line; kcat: kcat -J envelopes with "
                        "CloudStack's keys and murmur2 partitions (default jsonl)")
    o.add_argument("--truth", type=Path, help="write the true usage (JSON) to FILE")
    o.add_argument("--to-kafka", metavar="BOOTSTRAP",
                   help="also produce the records to this Kafka broker")
    o.add_argument("--topic", default="cs", help="topic name (Kafka and kcat; default cs)")
    o.add_argument("--partitions", type=int, default=4,
                   help="partitions for kcat envelopes and for creating a missing topic "
                        "(default 4)")
    o.add_argument("--rate", type=float, default=None,
                   help="live mode: N records per second in real time, event times = now; "
                        "with --speed: at most N records per second")
    o.add_argument("--speed", type=float, default=None, metavar="K",
                   help="live mode on a compressed clock: K simulated seconds per real "
                        "second (720: one simulated hour per 5 s). Event times are the "
                        "simulated ones, so a VM that runs 3 h has events 3 h apart and "
                        "hourly periods complete; Kafka record timestamps are the wall "
                        "clock. Event times after the wall clock plus the worker's "
                        "max_clock_skew are rejected: --start now-SPAN --until now keeps "
                        "them in the past")
    o.add_argument("--duration", type=float, default=None,
                   help="live mode: stop after SECONDS of real time (default: at the "
                        "simulated horizon)")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when stderr is a terminal)")
    o.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agents.simulate import run

    return run(args)
