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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the Kafka-side subcommands to the ``metering`` parser."""
    p = sub.add_parser("demo", help="run the pipeline end to end on the embedded local broker")
    p.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)"
    )
    p.set_defaults(func=_demo)
