"""The Parquet form of usage intervals (contract section 5): schema, tables, reading, locks.

A dataset directory holds Hive partitions ``usage_date=YYYY-MM-DD`` (the date of
``period_start`` in the period time zone). Columns are the fields of
:data:`metering.usage_schema.INTERVAL_FIELDS` in order (``schemas/usage-interval.schema.json``),
with ``start``, ``end`` and ``period_start`` as ``timestamp[ms, tz=UTC]``. How part files are
named and written (atomically, durably) is :mod:`storage.parts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from metering.intervals import UsageInterval
from metering.usage_schema import INTERVAL_FIELDS, FieldSpec, Kind
from storage.errors import LockHeldError as LockHeldError
from storage.layout import PARTITION_COLUMN as PARTITION_COLUMN
from storage.layout import SORT_COLUMNS as SORT_COLUMNS

TS: Final = pa.timestamp("ms", tz="UTC")

_ARROW_TYPE: Final[dict[Kind, pa.DataType]] = {
    Kind.STRING: pa.string(), Kind.INT32: pa.int32(), Kind.INT64: pa.int64(),
    Kind.FLOAT64: pa.float64(), Kind.BOOL: pa.bool_(), Kind.TIMESTAMP_MS: TS,
}


def arrow_schema(fields: Sequence[FieldSpec] = INTERVAL_FIELDS) -> pa.Schema:
    """The Arrow schema of the usage interval's definition (:mod:`metering.usage_schema`):
    one column per field in order, its kind's type, nullable only where the field is."""
    return pa.schema([pa.field(f.name, _ARROW_TYPE[f.kind], nullable=f.nullable)
                      for f in fields])


ARROW_SCHEMA: Final = arrow_schema()
"""Arrow schema of one Parquet file (the partition column ``usage_date`` is in the path)."""


def to_table(rows: Sequence[UsageInterval]) -> pa.Table:
    """Intervals -> an Arrow table with :data:`ARROW_SCHEMA` (ms integers become timestamps)."""
    if not rows:
        return ARROW_SCHEMA.empty_table()
    return pa.Table.from_batches([to_batch(rows)])


def to_batch(rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """Intervals (at least one; or their values as sequences, e.g. JSON arrays) -> an Arrow
    record batch with :data:`ARROW_SCHEMA`, transposed and converted column by column."""
    return columns_to_batch(list(zip(*rows, strict=True)))


def columns_to_batch(columns: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """The values of each column of :data:`ARROW_SCHEMA` in order (times as UTC ms integers;
    e.g. decoded from a JSON array of arrays) -> an Arrow record batch."""
    return pa.RecordBatch.from_arrays(
        [pa.array(column, f.type) for column, f in zip(columns, ARROW_SCHEMA, strict=True)],
        schema=ARROW_SCHEMA)


def sort_table(table: pa.Table) -> pa.Table:
    """``table`` sorted by account, start, usage type, resource, interval id (stable)."""
    return table.sort_by([(name, "ascending") for name in SORT_COLUMNS])


def sorted_table(rows: Sequence[UsageInterval]) -> pa.Table:
    """:func:`to_table` sorted by account, start, usage type, resource, interval id."""
    return sort_table(to_table(rows))


DATASET_SCHEMA: Final = ARROW_SCHEMA.append(pa.field(PARTITION_COLUMN, pa.string()))
"""Schema of a whole dataset as read: the columns, then the partition column. Given to
readers explicitly, so files written before a nullable column existed (version 1 files have
no ``region``) read with nulls there, whichever file a reader opens first."""


def with_missing_columns(table: pa.Table, schema: pa.Schema = ARROW_SCHEMA) -> pa.Table:
    """``table`` with each *nullable* column of ``schema`` it lacks added as nulls (older
    files: ``region`` is new in version 2); other columns are left as they are."""
    for f in schema:
        if f.nullable and f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return table


def read_dataset(root: Path | str) -> pa.Table:
    """Read a whole dataset (all ``usage_date=`` partitions) as one Arrow table; files of an
    earlier schema version read with nulls in the columns they lack."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(
        str(root), format="parquet", partitioning="hive", exclude_invalid_files=True,
        schema=DATASET_SCHEMA,
    )
    return dataset.to_table()


class DirectoryLock:
    """An exclusive, non-blocking advisory lock (``flock``) on the file ``path``.

    Held until :meth:`release` or the process exits (the kernel drops it on exit, also on
    kill -9, so a crash never leaves a stale lock). The holder's description is written into
    the file for the error message of the next process that tries; it is informational only
    (the file itself stays and proves nothing). Used by ``metering archive`` and ``metering
    compact``, each with its own file, so the two do not exclude each other.
    """

    def __init__(self, path: Path, holder: str) -> None:
        """Take the lock or raise :class:`LockHeldError` (held) or ``OSError`` (cannot
        create ``path``; its directory is created if missing)."""
        import fcntl

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+b")  # noqa: SIM115 - closed by release()
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            try:
                held_by = path.read_text(errors="replace").strip()[:500]
            except OSError:
                held_by = ""
            raise LockHeldError(path, held_by) from None
        except BaseException:
            self._fh.close()
            raise
        try:
            self._fh.truncate(0)
            self._fh.write(holder.encode())
            self._fh.flush()
        except OSError:
            pass  # the description is informational; the lock is what counts

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        self._fh.close()

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
