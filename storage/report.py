"""``metering report``: usage hours per account, usage type and/or day from a dataset.

Reads the Hive-partitioned Parquet dataset (``DIR/usage_date=YYYY-MM-DD/*.parquet``,
contract section 5) with :mod:`pyarrow.dataset`, keeps only the ``usage_date`` partitions in
``[from, to]`` (both **inclusive**; a date names a whole day in the period time zone the
dataset was written with), and for each group reports:

Usage of one account in several regions (``region``, schema version 2) is summed per
account unless ``region`` is one of the groups: each region's intervals have their own
``interval_id``, so nothing is counted twice.

* ``intervals``: the number of distinct ``interval_id``;
* ``hours``: the sum of ``raw_usage_hours`` over them, computed exactly as
  ``sum(duration_ms) / 3 600 000`` (the contract defines ``raw_usage_hours`` as
  ``duration_ms / 3 600 000``). Summing the integer milliseconds makes the result independent
  of row order and file layout: a day reports the same hours before and after compaction.

The archive may hold an interval more than once until ``metering compact`` has merged its
day, so rows are deduplicated by ``interval_id`` first. If the versions of an id differ, the
one :func:`storage.compact.dedupe` keeps is counted (highest ``source_offset``; the same
version ``compact --on-conflict keep-latest`` keeps) and the number of such ids is reported
on stderr.

The result is a :class:`Report` (plain values); the command line formats it (``table``,
``csv``, ``json``: ``agents.cli.formats``). A DIR missing, without any ``usage_date``
partition, or with a file that cannot be read raises :class:`~storage.errors.InputError`
(exit code 3). A date range that selects no partition is not an error: the report is empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from metering.intervals import MS_PER_HOUR
from storage.compact import PREFERENCE, dedupe
from storage.dataset import DATASET_SCHEMA, PARTITION_COLUMN
from storage.errors import InputError
from storage.layout import GROUP_BY
from storage.parts import list_days, part_files

GROUP_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "account": ("account_id",),
    "usage_type": ("usage_type", "usage_type_name"),
    "day": (PARTITION_COLUMN,),
    "region": ("region",),
}
"""Output columns of each ``--by`` key (the name follows the usage type id)."""

_READ: Final = tuple(
    dict.fromkeys(
        (
            "interval_id",
            "duration_ms",
            "account_id",
            "usage_type",
            "usage_type_name",
            "region",
            *(name for name, _ in PREFERENCE),
        )
    )
)
"""Columns read: the groups, the sum, and what :func:`~storage.compact.dedupe` prefers by."""


@dataclass
class Report:
    """Usage per group. Hours are ``sum(duration_ms) / 3 600 000`` (= the sum of
    ``raw_usage_hours``); dates are ``usage_date`` values ``YYYY-MM-DD``."""

    by: list[str]
    columns: list[str]
    """Group columns, then ``intervals`` and ``hours``."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """One dict per group, sorted by the group columns."""
    date_from: str | None = None
    date_to: str | None = None
    days: int = 0
    """Partitions read."""
    files: int = 0
    rows_read: int = 0
    duplicates: int = 0
    conflicts: int = 0

    total_ms: int = 0
    """Sum of ``duration_ms`` over all groups (exact)."""

    @property
    def total_intervals(self) -> int:
        return sum(int(r["intervals"]) for r in self.rows)

    @property
    def total_hours(self) -> float:
        return self.total_ms / MS_PER_HOUR

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "from": self.date_from,
            "to": self.date_to,
            "to_inclusive": True,
            "groups": self.rows,
            "total": {"intervals": self.total_intervals, "hours": self.total_hours},
            "days": self.days,
            "files": self.files,
            "rows_read": self.rows_read,
            "duplicates_dropped": self.duplicates,
            "conflicting_interval_ids": self.conflicts,
        }


def _normalise_by(by: Sequence[str]) -> list[str]:
    out: list[str] = []
    for key in by:
        if key not in GROUP_COLUMNS:
            raise ValueError(f"cannot group by {key!r} (choose from {', '.join(GROUP_BY)})")
        if key not in out:
            out.append(key)
    return out or ["account"]


def usage_report(
    root: Path,
    by: Sequence[str] = ("account",),
    date_from: str | None = None,
    date_to: str | None = None,
) -> Report:
    """Usage of ``root`` per group of ``by``, for ``usage_date`` in ``[date_from, date_to]``
    (inclusive; None: unbounded). Raises InputError (unreadable input) or ValueError."""
    keys = _normalise_by(by)
    group_cols = [c for k in keys for c in GROUP_COLUMNS[k]]
    report = Report(keys, [*group_cols, "intervals", "hours"], date_from=date_from, date_to=date_to)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset directory")
    days = list_days(root)
    if not days:
        raise InputError(
            f"{root} holds no {PARTITION_COLUMN}=YYYY-MM-DD partition "
            "(not a metering dataset, or nothing written yet)"
        )
    # partition pruning: only the selected day directories are listed and read
    selected = [
        d
        for d in days
        if (date_from is None or d >= date_from) and (date_to is None or d <= date_to)
    ]
    files = [str(p) for d in selected for p in part_files(days[d])]
    report.days, report.files = len(selected), len(files)
    if not files:
        return report
    partitioning = ds.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
    try:
        dataset = ds.dataset(
            files, format="parquet", partitioning=partitioning, partition_base_dir=str(root),
            schema=DATASET_SCHEMA,  # version 1 files (no region) read with nulls there
        )
        expr = None
        if date_from is not None:
            expr = ds.field(PARTITION_COLUMN) >= date_from
        if date_to is not None:
            upper = ds.field(PARTITION_COLUMN) <= date_to
            expr = upper if expr is None else expr & upper
        table = dataset.to_table(columns=[*_READ, PARTITION_COLUMN], filter=expr)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read the dataset under {root}: {exc}") from exc
    report.rows_read = table.num_rows
    result = dedupe(table, max_details=0)
    report.duplicates, report.conflicts = result.duplicates, result.conflict_count
    report.rows = _aggregate(result.table, group_cols)
    report.total_ms = int(pc.sum(result.table.column("duration_ms")).as_py() or 0)
    return report


def _aggregate(table: pa.Table, group_cols: list[str]) -> list[dict[str, Any]]:
    agg = table.group_by(group_cols, use_threads=False).aggregate(
        [("interval_id", "count"), ("duration_ms", "sum")]
    )
    agg = agg.select([*group_cols, "interval_id_count", "duration_ms_sum"])
    agg = agg.rename_columns([*group_cols, "intervals", "hours"])
    agg = agg.sort_by([(c, "ascending") for c in group_cols])
    rows: list[dict[str, Any]] = agg.to_pylist()
    for row in rows:  # exact integer ms -> hours, rounded once
        row["hours"] = int(row["hours"] or 0) / MS_PER_HOUR
    if table.num_rows and pc.sum(agg.column("intervals")).as_py() != table.num_rows:
        raise AssertionError("group counts do not add up to the deduplicated rows")
    return rows
