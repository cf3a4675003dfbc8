"""The arguments of ``metering demo`` (the run is :func:`agents.demo.run`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser(
        "demo", help="run the pipeline end to end, live, on the embedded local broker",
        description="Start a local Kafka broker, the metering worker and a live simulated "
        "CloudStack cloud, and show usage flowing. Ctrl-C stops everything.")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after SECONDS (default 0: run until Ctrl-C)")
    p.add_argument("--speed", type=float, default=720.0,
                   help="simulated seconds per real second (default 720: one simulated hour "
                   "per 5 s)")
    p.add_argument("--history", type=float, default=None, metavar="HOURS",
                   help="simulated hours to replay, ending now (default: duration x speed; "
                   "168 without --duration)")
    p.add_argument("--rate", type=float, default=2000.0,
                   help="at most this many records per second (default 2000); a denser "
                   "simulated cloud slows its clock down")
    p.add_argument("--accounts", type=int, default=300, help="simulated accounts (default 300)")
    p.add_argument("--broker", default=None,
                   help="use this running broker (host:port) instead of starting one")
    p.add_argument("--data-dir", type=Path, default=Path("demo-data"),
                   help="worker state, Parquet archive and logs; emptied at start and kept "
                   "afterwards (default ./demo-data)")
    p.add_argument("--web-port", type=int, default=6066, help="worker HTTP port (default 6066)")
    p.add_argument("--every", type=float, default=5.0,
                   help="seconds between summaries (default 5)")
    p.add_argument("--top", type=int, default=5,
                   help="accounts shown in the live summary (default 5)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from agents.demo import run

    return run(args)
