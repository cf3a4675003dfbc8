"""Exit codes of ``metering`` and the one map from the project's errors to them.

Every subcommand exits with one of:

* 0 :data:`EXIT_OK`: success
* 1 :data:`EXIT_FAILED`: the command ran but failed (a broker that would not start, days
  left uncompacted, another process holding a lock)
* 2 :data:`EXIT_USAGE`: bad usage or invalid options (argparse and option validation)
* 3 :data:`EXIT_INPUT`: an input could not be read
* 4 :data:`EXIT_OUTPUT`: an output could not be written
* 130 :data:`EXIT_INTERRUPTED`: interrupted (Ctrl-C)

(The worker itself also exits 70 when a batch fails or a stop does not finish in time:
``agents.faustapi.EXIT_STUCK``; it exits from inside Faust, not through this map.)

:data:`EXIT_CODES` is the only place that decides which error gives which code; commands
call :func:`exit_code` (or :func:`fail`, which also prints the message). This module
imports only the error modules, which import nothing heavy.
"""

from __future__ import annotations

import sys
from typing import Final

from agents.errors import AgentError, BrokerError, DemoError, KafkaFailed, PreflightError
from metering.errors import MeteringError, SettingsError
from storage.errors import InputError, LockedError, LockHeldError, OpenDayError, OutputError

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INPUT: Final = 3
EXIT_OUTPUT: Final = 4
EXIT_INTERRUPTED: Final = 130

EXIT_CODES: Final[dict[type[MeteringError], int]] = {
    InputError: EXIT_INPUT,
    OutputError: EXIT_OUTPUT,
    OpenDayError: EXIT_USAGE,
    SettingsError: EXIT_USAGE,
    LockedError: EXIT_FAILED,
    LockHeldError: EXIT_FAILED,
    BrokerError: EXIT_FAILED,
    KafkaFailed: EXIT_FAILED,
    DemoError: EXIT_FAILED,
    AgentError: EXIT_FAILED,
    MeteringError: EXIT_FAILED,
}
"""Error class -> exit code. The nearest class in an error's MRO decides, so a subclass
without an entry gets its parent's code (any other :class:`MeteringError`: 1)."""


def exit_code(exc: MeteringError) -> int:
    """The exit code of ``exc``: its nearest class in :data:`EXIT_CODES`.

    A :class:`~agents.errors.PreflightError` carries its own code (1 unreachable, 2 refused).
    """
    if isinstance(exc, PreflightError):
        return exc.code
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILED  # unreachable: MeteringError is in the map


def fail(command: str, exc: MeteringError) -> int:
    """Print ``metering COMMAND: message`` on stderr; return the exit code of ``exc``."""
    print(f"metering {command}: {exc}", file=sys.stderr)
    return exit_code(exc)
