"""Archiving the ``usage`` topic to the Parquet dataset, batch by batch (no Kafka here).

The archive agent (``agents.archive``) hands each batch of one topic-partition to
:meth:`ArchiveWriter.write_batch`, which makes it durable in this order:

1. one Parquet file per ``usage_date`` in the batch, each written to a temporary name,
   fsynced and renamed (``usage_date=D/<topic>-p<partition>-<first>-<last>.parquet``, where
   first/last are the batch's source offsets, zero-padded so names sort by offset; the
   names and the write policy are :mod:`storage.parts`);
2. usage-topic records that are not valid intervals, as JSONL under ``_rejected/`` (nothing
   is dropped);
3. the partition's **checkpoint** ``_archive/<topic>-<partition>.json`` (last archived offset),
   written atomically last.

Only after that does the agent let Faust ack the batch, so Kafka never commits an offset that
is not on disk. Like Kafka Connect's HDFS sink, the checkpoint stored next to the data is
the truth on restart: records at or below it are skipped (already archived), and part
files of the partition whose first offset is above it are leftovers of a batch that crashed
before its checkpoint; :meth:`ArchiveWriter.recover` removes them, since Kafka re-delivers
their records. A crash therefore neither loses nor duplicates rows; rows can repeat only if
``metering compact`` merged such leftovers before the restart, and compaction removes those
repeats by ``interval_id``.

**One writer per directory.** That reasoning holds only if the process that recovers is the
only one writing: the archive process holds :data:`LOCK_NAME` (an exclusive ``flock``) for
its whole life, and a second archive on the same directory is refused at start-up. As a
second line of defence a checkpoint never moves backwards (:meth:`ArchiveWriter.write_batch`
compares with the stored value under a lock in the checkpoint directory), and
:meth:`ArchiveWriter.recover` deletes files only the first time a process is assigned the
partition (later, files past the checkpoint are this process's own batch in flight). Files at
or below the checkpoint are never deleted.

**Rows that cannot be placed.** A record whose instants (``start``, ``end``,
``period_start``) lie outside :data:`MIN_INSTANT_MS`..:data:`MAX_INSTANT_MS` (1970-01-01 to
9999-12-31 UTC), whose ``usage_date`` cannot be computed, or whose values do not fit the
Parquet column types, is rejected with its reason like any malformed record; the valid rows of
its batch are archived and the archive keeps going.

Directories whose names start with ``_`` or ``.`` are ignored by pyarrow, pandas and DuckDB
readers of the dataset. All instants are UTC epoch milliseconds.
"""

from __future__ import annotations

import fcntl
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import orjson
import pyarrow as pa

from metering.intervals import IntervalDecodeError, UsageInterval, decode_interval
from metering.periods import PeriodGrid
from metering.usage_schema import MAX_INSTANT_MS as MAX_INSTANT_MS
from metering.usage_schema import MIN_INSTANT_MS as MIN_INSTANT_MS
from storage.dataset import PARTITION_COLUMN, sorted_table, to_table
from storage.parts import (
    archive_part_name,
    parse_archive_part_name,
    partition_dir,
    write_atomic,
    write_bytes_atomic,
)

CHECKPOINT_DIR: Final = "_archive"
CHECKPOINT_LOCK: Final = ".checkpoints.lock"
"""Lock file in :data:`CHECKPOINT_DIR` serialising checkpoint compare-and-write."""
REJECTED_DIR: Final = "_rejected"
LOCK_NAME: Final = ".metering-archive.lock"
"""Lock file in the dataset root held by the one archive process writing the dataset (a
leading ``.`` hides it from dataset readers; compaction uses its own)."""


def parse_interval(raw: bytes) -> UsageInterval | str:
    """A usage-topic record value -> row, or why it is not one (the reject reason).

    Total: never raises. :func:`metering.intervals.decode_interval` decides.
    """
    try:
        return decode_interval(raw)
    except IntervalDecodeError as exc:
        return str(exc)


@dataclass
class BatchResult:
    """What :meth:`ArchiveWriter.write_batch` did. Bytes are file sizes on disk."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rows: int = 0
    rejected: int = 0
    skipped: int = 0
    """Records at or below the checkpoint: already archived (redelivery after a crash)."""
    checkpoint: int = -1
    """The partition's stored checkpoint after the batch (the batch's last offset, or a
    higher one that another writer stored: a checkpoint never moves backwards)."""
    kept_higher: bool = False
    """True if the stored checkpoint was above this batch's last offset and was kept."""


class ArchiveWriter:
    """Writes batches of usage-topic records into the dataset under ``root``.

    Args:
        root: the dataset directory (created if missing).
        grid: the period grid of the worker; ``usage_date`` is the date of ``period_start``
            in the grid's time zone, as in ``metering replay``.
    """

    def __init__(self, root: Path, grid: PeriodGrid) -> None:
        self.root = root
        self.grid = grid
        self._checkpoints: dict[tuple[str, int], int] = {}
        self._recovered: set[tuple[str, int]] = set()

    def _checkpoint_path(self, topic: str, partition: int) -> Path:
        return self.root / CHECKPOINT_DIR / f"{topic}-{partition}.json"

    @staticmethod
    def _read_checkpoint(path: Path) -> int:
        try:
            return int(orjson.loads(path.read_bytes())["last_offset"])
        except FileNotFoundError:
            return -1
        except (ValueError, KeyError, TypeError) as exc:  # damaged: refuse to guess
            raise OSError(f"archive checkpoint {path} is unreadable ({exc}); restore it "
                          "or delete it to re-archive from the committed offset") from exc

    def checkpoint(self, topic: str, partition: int) -> int:
        """The last archived offset of the partition, -1 if none (read once, then cached)."""
        key = (topic, partition)
        if key not in self._checkpoints:
            self._checkpoints[key] = self._read_checkpoint(self._checkpoint_path(*key))
        return self._checkpoints[key]

    def _store_checkpoint(self, topic: str, partition: int, last: int) -> int:
        """Store ``last`` as the partition's checkpoint unless the stored one is already at
        or above it (never backwards); return the stored checkpoint afterwards.

        Compare and write happen under an exclusive ``flock`` of
        ``_archive/.checkpoints.lock`` (opened for writing, as NFS requires), so two
        writers cannot interleave them."""
        path = self._checkpoint_path(topic, partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.parent / CHECKPOINT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            stored = self._read_checkpoint(path)
            if stored < last:
                write_bytes_atomic(path, orjson.dumps({
                    "topic": topic, "partition": partition, "last_offset": last}))
                stored = last
        finally:
            os.close(fd)  # releases the flock
        self._checkpoints[(topic, partition)] = stored
        return stored

    def forget(self, topic: str, partition: int) -> None:
        """Drop the cached checkpoint (the partition was revoked; re-read on assignment)."""
        self._checkpoints.pop((topic, partition), None)

    def recover(self, topic: str, partition: int) -> list[str]:
        """Remove part files of the partition past its checkpoint (a batch that crashed
        before its checkpoint was written; Kafka re-delivers its records). Returns them.

        Only the first call for a partition removes anything: the caller holds the
        directory's lock (:data:`LOCK_NAME`) from start-up, so at that first assignment
        every file past the durable checkpoint is a leftover of an earlier process. On a
        later assignment of the same partition, files past the checkpoint can only be this
        process's own batch in flight, which must be kept. Files at or below the
        checkpoint are never removed."""
        self.forget(topic, partition)
        last = self.checkpoint(topic, partition)
        removed: list[str] = []
        if (topic, partition) in self._recovered:
            return removed
        if not self.root.is_dir():
            self._recovered.add((topic, partition))
            return removed
        dirs = [*self.root.glob(f"{PARTITION_COLUMN}=*"), self.root / REJECTED_DIR]
        for day in dirs:
            for path in day.glob(f"{topic}-p*"):
                parsed = parse_archive_part_name(path.name)
                if parsed and parsed[0] == topic and parsed[1] == partition and parsed[2] > last:
                    path.unlink(missing_ok=True)
                    removed.append(str(path))
        self._recovered.add((topic, partition))
        return removed

    def write_batch(
        self, topic: str, partition: int, records: Sequence[tuple[int, bytes]]
    ) -> BatchResult:
        """Make ``(offset, value)`` records of one partition durable; raise OSError if not.

        Records must be in offset order. On an OSError nothing is checkpointed and the
        call can be retried with the same records (file names are the same, so a retry
        overwrites what a failed attempt left).
        """
        result = BatchResult()
        last_done = self.checkpoint(topic, partition)
        fresh = [(o, v) for o, v in records if o > last_done]
        result.skipped = len(records) - len(fresh)
        if not fresh:
            return result
        first, last = fresh[0][0], fresh[-1][0]
        by_date: dict[str, list[tuple[int, bytes, UsageInterval]]] = defaultdict(list)
        rejected: list[tuple[int, bytes]] = []

        def reject(offset: int, value: bytes, reason: str) -> None:
            rejected.append((offset, orjson.dumps({
                "raw": value.decode("utf-8", "replace"), "reason": reason,
                "topic": topic, "partition": partition, "offset": offset})))

        dates: dict[int, str] = {}  # period_start -> usage_date: a batch has few of them
        local_date = self.grid.local_date
        for offset, value in fresh:
            row = parse_interval(value)
            if isinstance(row, str):
                reject(offset, value, row)
                continue
            date = dates.get(row.period_start)
            if date is None:
                try:
                    date = dates[row.period_start] = local_date(row.period_start)
                except (ValueError, OverflowError, OSError) as exc:
                    reject(offset, value, f"period_start {row.period_start} has no usage_date "
                           f"in {self.grid.timezone}: {exc}"[:300])
                    continue
            by_date[date].append((offset, value, row))
        name = archive_part_name(topic, partition, first, last)
        for date in sorted(by_date):
            path = partition_dir(self.root, date) / name
            table = self._table(by_date[date], reject)
            if table is None:
                continue
            rows = table.num_rows
            result.bytes += write_atomic(table, path)
            result.files.append(str(path))
            result.rows += rows
        if rejected:
            write_bytes_atomic(self.root / REJECTED_DIR / name.replace(".parquet", ".jsonl"),
                                b"\n".join(line for _, line in sorted(rejected)) + b"\n")
            result.rejected = len(rejected)
        result.checkpoint = self._store_checkpoint(topic, partition, last)
        result.kept_higher = result.checkpoint > last
        return result

    @staticmethod
    def _table(
        entries: list[tuple[int, bytes, UsageInterval]],
        reject: Callable[[int, bytes, str], None],
    ) -> pa.Table | None:
        """The sorted table of one day's rows; rows Arrow cannot hold are rejected one by
        one (found only if the whole table fails, so the common case costs nothing).
        None if no row is left."""
        try:
            return sorted_table([row for _, _, row in entries])
        except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
            first_error = exc
        kept: list[UsageInterval] = []
        for offset, value, row in entries:
            try:
                to_table([row])
            except (pa.ArrowException, OverflowError, ValueError, TypeError) as exc:
                reject(offset, value, f"not representable in Parquet: {exc}"[:300])
                continue
            kept.append(row)
        if not kept:
            return None
        if len(kept) == len(entries):  # no single row fails: not a data problem
            raise first_error
        return sorted_table(kept)
