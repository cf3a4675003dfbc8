"""Crash points for kill -9 tests, installed from outside the production code.

``python -m tests.integration.faults FAULT ARGS...`` runs the ``metering`` command line with
``ARGS`` (as ``python -m agents ARGS...`` does) after patching the archive writer so that
the process kills itself with SIGKILL at the named point:

* ``archive_after_files``: a batch's files are durable, its checkpoint is not written;
* ``archive_after_checkpoint``: a batch with rows is checkpointed, but not yet acked or
  committed;
* ``route_before_commit``: ``metering route`` had its first batch's sends acknowledged, and
  dies as it is about to commit the batch's offsets.

The patches are made on the class, before the command imports its app module, so the
running worker is the real one with one method wrapped. :class:`WorkerProc` starts this
module when given a ``fault``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

from storage.archive import ArchiveWriter, BatchResult

FAULTS = ("archive_after_files", "archive_after_checkpoint", "route_before_commit")


def _crash(fault: str) -> None:
    logging.getLogger("metering.archive").warning(
        "fault %s (tests.integration.faults): killing this process (SIGKILL)", fault)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    """Patch :class:`ArchiveWriter` so the process dies at ``fault`` (one of :data:`FAULTS`).

    (The ``method-assign`` ignores below: replacing the method is the point.)"""
    if fault == "archive_after_files":
        store = ArchiveWriter._store_checkpoint

        def crash_before_checkpoint(self: ArchiveWriter, topic: str, partition: int,
                                    last: int) -> int:
            _crash(fault)  # write_batch stores the checkpoint after every file is durable
            return store(self, topic, partition, last)

        ArchiveWriter._store_checkpoint = crash_before_checkpoint  # type: ignore[method-assign]
    elif fault == "archive_after_checkpoint":
        write = ArchiveWriter.write_batch

        def crash_after_checkpoint(self: ArchiveWriter, topic: str, partition: int,
                                   records: Sequence[tuple[int, bytes]]) -> BatchResult:
            result = write(self, topic, partition, records)
            if result.rows:  # checkpointed; the agent has not acked the batch yet
                _crash(fault)
            return result

        ArchiveWriter.write_batch = crash_after_checkpoint  # type: ignore[method-assign]
    elif fault == "route_before_commit":
        from aiokafka import AIOKafkaConsumer

        async def crash_at_commit(self: AIOKafkaConsumer, *args: object,
                                  **kwargs: object) -> None:
            _crash(fault)  # agents.route commits only after every send was acknowledged

        AIOKafkaConsumer.commit = crash_at_commit  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown fault {fault!r} (one of {', '.join(FAULTS)})")


def main(argv: Sequence[str]) -> int:
    """``FAULT ARGS...``: install ``FAULT``, then run ``metering ARGS...``."""
    from agents.cli import main as metering

    fault, *args = argv
    install(fault)
    return metering(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
