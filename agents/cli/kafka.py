"""``metering kafka up|down|status``: the embedded local Kafka broker (:mod:`agents.localkafka`)."""

from __future__ import annotations

import argparse
import sys

from agents.cli.exits import EXIT_FAILED, EXIT_OK

HELP = "start/stop a local single-node Kafka broker (Maven Central jars, no Docker)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kafka``."""
    p = sub.add_parser(
        "kafka",
        help=HELP,
        description="Manage the embedded local Kafka broker used by the demo and the tests.",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--secure", action="store_true",
                   help="up: TLS and SASL (SCRAM) listeners, ACLs enforced; prints the client "
                   "settings of user `metering`, which gets the README's ACLs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``metering kafka ACTION``; return the exit code."""
    from agents import localkafka

    if args.action == "up":
        info = localkafka.up_detached(log=lambda m: print(m, file=sys.stderr),
                                      secure=args.secure)
        if info.get("secure"):
            _print_secure(info)
            return EXIT_OK
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


def _print_secure(info: dict[str, object]) -> None:
    """The client settings of a secure local broker (passwords as files, never printed)."""
    sasl = info["sasl_env"]
    tls = info["tls_env"]
    assert isinstance(sasl, dict)
    assert isinstance(tls, dict)
    print(f"Kafka {info['version']} is up, secured: SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256) "
          f"at {info['bootstrap']}, SSL with client certificates at {info['ssl_bootstrap']}; "
          "ACLs enforced (no ACL: denied).")
    print("Client settings over SASL_SSL (user metering):")
    for key, value in sasl.items():
        print(f"  export {key}={value}")
    print("or over mutual TLS (certificate CN=metering):")
    for key, value in tls.items():
        print(f"  export {key}={value}")
    print(f"User metering has the README's ACLs for the default names; the super user admin's "
          f"password is in {info['admin_password_file']}.")
    print("  stop it with: make kafka-down")
