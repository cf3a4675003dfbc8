"""Archiving the ``usage`` topic to the Parquet dataset, batch by batch (no Kafka here).

The archive agent (``agents.archive``) hands each batch of one topic-partition to
:meth:`ArchiveWriter.write_batch`, which makes it durable in this order:

1. one Parquet file per ``usage_date`` in the batch, each written to a temporary name,
   fsynced and renamed (``usage_date=D/<topic>-p<partition>-<first>-<last>.parquet``, where
   first/last are the batch's source offsets, zero-padded so names sort by offset);
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

Directories whose names start with ``_`` or ``.`` are ignored by pyarrow, pandas and DuckDB
readers of the dataset. All instants are UTC epoch milliseconds.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from metering.intervals import FIELDS, UsageInterval
from metering.parquet import (
    PARTITION_COLUMN,
    fsync_dir,
    partition_dir,
    sorted_table,
    write_atomic,
)
from metering.periods import PeriodGrid

CHECKPOINT_DIR: Final = "_archive"
REJECTED_DIR: Final = "_rejected"
_PART: Final = re.compile(
    r"^(?P<topic>.+)-p(?P<partition>\d{4,})-(?P<first>\d{20})-(?P<last>\d{20})"
    r"\.(?:parquet|jsonl)$"
)

_INT_FIELDS: Final = frozenset({"usage_type", "start", "end", "duration_ms", "period_start",
                                "source_partition", "source_offset", "schema_version"})
_STR_FIELDS: Final = frozenset({"interval_id", "account_id", "usage_type_name", "resource_id",
                                "close_reason", "source_topic"})
_OPT_STR_FIELDS: Final = frozenset({"domain_id", "zone_id", "offering_id", "template_id"})


def part_name(topic: str, partition: int, first: int, last: int) -> str:
    """File name of the rows of source offsets ``first..last`` (inclusive) of a partition."""
    return f"{topic}-p{partition:04d}-{first:020d}-{last:020d}.parquet"


def parse_part_name(name: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first, last) of an archive part (or rejects) file name, else None."""
    m = _PART.match(name)
    if m is None:
        return None
    return m["topic"], int(m["partition"]), int(m["first"]), int(m["last"])


def parse_interval(raw: bytes) -> UsageInterval | str:
    """A usage-topic record value (JSON object of the contract) -> row, or why it is not one.

    Total: never raises. Checks presence and JSON types of every contract field.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"[:200]
    if type(obj) is not dict:
        return "not a JSON object"
    values: list[Any] = []
    for name in FIELDS:
        value = obj.get(name)
        if name in _INT_FIELDS:
            ok = type(value) is int
        elif name in _STR_FIELDS:
            ok = type(value) is str
        elif name in _OPT_STR_FIELDS:
            ok = value is None or type(value) is str
        elif name == "raw_usage_hours":
            ok = type(value) in (int, float)
            if ok:
                value = float(value)  # type: ignore[arg-type]  # checked: int or float
        else:  # final
            ok = type(value) is bool
        if not ok:
            return f"field {name!r} missing or of the wrong type"
        values.append(value)
    row = UsageInterval(*values)
    if row.end < row.start or row.duration_ms != row.end - row.start:
        return "end before start, or duration_ms != end - start"
    return row


@dataclass
class BatchResult:
    """What :meth:`ArchiveWriter.write_batch` did. Bytes are file sizes on disk."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    rows: int = 0
    rejected: int = 0
    skipped: int = 0
    """Records at or below the checkpoint: already archived (redelivery after a crash)."""


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


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
        self.on_files_written: Callable[[], None] | None = None
        """Called after a batch's files are durable, before its checkpoint (fault tests)."""

    def _checkpoint_path(self, topic: str, partition: int) -> Path:
        return self.root / CHECKPOINT_DIR / f"{topic}-{partition}.json"

    def checkpoint(self, topic: str, partition: int) -> int:
        """The last archived offset of the partition, -1 if none (read once, then cached)."""
        key = (topic, partition)
        if key not in self._checkpoints:
            path = self._checkpoint_path(topic, partition)
            try:
                last = int(orjson.loads(path.read_bytes())["last_offset"])
            except FileNotFoundError:
                last = -1
            except (ValueError, KeyError, TypeError) as exc:  # damaged: refuse to guess
                raise OSError(f"archive checkpoint {path} is unreadable ({exc}); restore it "
                              "or delete it to re-archive from the committed offset") from exc
            self._checkpoints[key] = last
        return self._checkpoints[key]

    def forget(self, topic: str, partition: int) -> None:
        """Drop the cached checkpoint (the partition was revoked; re-read on assignment)."""
        self._checkpoints.pop((topic, partition), None)

    def recover(self, topic: str, partition: int) -> list[str]:
        """Remove part files of the partition past its checkpoint (a batch that crashed
        before its checkpoint was written; Kafka re-delivers its records). Returns them."""
        self.forget(topic, partition)
        last = self.checkpoint(topic, partition)
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        dirs = [*self.root.glob(f"{PARTITION_COLUMN}=*"), self.root / REJECTED_DIR]
        for day in dirs:
            for path in day.glob(f"{topic}-p*"):
                parsed = parse_part_name(path.name)
                if parsed and parsed[0] == topic and parsed[1] == partition and parsed[2] > last:
                    path.unlink(missing_ok=True)
                    removed.append(str(path))
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
        by_date: dict[str, list[UsageInterval]] = defaultdict(list)
        rejected: list[bytes] = []
        for offset, value in fresh:
            row = parse_interval(value)
            if isinstance(row, str):
                rejected.append(orjson.dumps({
                    "raw": value.decode("utf-8", "replace"), "reason": row,
                    "topic": topic, "partition": partition, "offset": offset}))
                continue
            by_date[self.grid.local_date(row.period_start)].append(row)
        name = part_name(topic, partition, first, last)
        for date in sorted(by_date):
            rows = by_date[date]
            path = partition_dir(self.root, date) / name
            result.bytes += write_atomic(sorted_table(rows), path)
            fsync_dir(path.parent)
            result.files.append(str(path))
            result.rows += len(rows)
        if self.on_files_written is not None:
            self.on_files_written()
        if rejected:
            _write_bytes_atomic(self.root / REJECTED_DIR / name.replace(".parquet", ".jsonl"),
                                b"\n".join(rejected) + b"\n")
            result.rejected = len(rejected)
        _write_bytes_atomic(self._checkpoint_path(topic, partition),
                            orjson.dumps({"topic": topic, "partition": partition,
                                          "last_offset": last}))
        self._checkpoints[(topic, partition)] = last
        return result
