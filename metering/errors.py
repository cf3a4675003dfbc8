"""The one root of the project's exceptions: :class:`MeteringError`."""

from __future__ import annotations


class MeteringError(Exception):
    """Root of every exception the project raises on purpose (core, storage and agents).

    Catch ``MeteringError`` to handle anything the project itself refused; anything else is
    a bug or an error of the platform (``OSError`` from a file system, ``KeyboardInterrupt``).
    Some classes keep a built-in second base (``ValueError``, ``RuntimeError``) because
    callers catch them by it. The command line maps these classes to exit codes in one
    table, ``agents.cli.exits.EXIT_CODES``. The tree (tests/unit/test_errors.py checks it
    against the code)::

        MeteringError                                  metering.errors
        ├── SettingsError (ValueError)                 metering.errors (also metering.settings)
        ├── StateDecodeError (ValueError)              metering.codec
        ├── WireError (ValueError)                     metering.wire
        ├── IntervalDecodeError (ValueError)           metering.intervals
        ├── RegionError (ValueError)                   metering.regions
        ├── StorageError                               storage.errors
        │   ├── InputError                             storage.errors
        │   ├── OutputError                            storage.errors
        │   ├── OpenDayError (ValueError)              storage.errors
        │   ├── LockedError                            storage.errors
        │   ├── LockHeldError                          storage.errors
        │   └── ReplayProcessError                     storage.errors
        └── AgentError                                 agents.errors
            ├── BrokerError (RuntimeError)             agents.errors (also agents.localkafka)
            │   ├── JarsUnavailableError               agents.errors (also agents.localkafka)
            │   └── BrokerStartError                   agents.errors (also agents.localkafka)
            ├── KafkaFailed                            agents.errors (also agents.simulate)
            ├── DemoError                              agents.errors (also agents.demo)
            ├── BrokerUnreachable                      agents.errors (also agents.kafkacheck)
            ├── RouteError                             agents.errors (also agents.route)
            └── PreflightError                         agents.errors (also agents.preflight)
                └── HandshakeClosed                    agents.errors (also agents.kafkacheck)
    """


class SettingsError(MeteringError, ValueError):
    """Invalid settings; ``problems`` lists every problem found, each naming its setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))
        self.problems = problems
