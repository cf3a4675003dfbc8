"""Errors of the storage layer (see the tree in :class:`metering.errors.MeteringError`).

Exit codes are assigned at the edge (``agents.cli.exits``), not here; the docstrings name
them for readers.
"""

from __future__ import annotations

from pathlib import Path

from metering.errors import MeteringError


class StorageError(MeteringError):
    """Root of the errors of :mod:`storage`."""


class InputError(StorageError):
    """An input (records file, dataset, day or part file) could not be read (exit code 3)."""


class OutputError(StorageError):
    """The dataset, a part file or a rejects file could not be written (exit code 4)."""


class OpenDayError(StorageError, ValueError):
    """An explicitly selected day is not closed yet and ``force`` is off (exit code 2)."""


class LockedError(StorageError):
    """Another compaction of the same dataset is running (exit code 1)."""


class LockHeldError(StorageError):
    """Another process holds the lock file ``path``; ``holder`` is what it wrote there
    (informational, e.g. its pid and host; empty if it wrote nothing)."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is locked by {holder or 'another process'}")


class ReplayProcessError(StorageError):
    """A process of a replay run in several processes ended before finishing its work
    (killed, or crashed), or the number of processes asked for is not 1 or 3 (exit code 1)."""
