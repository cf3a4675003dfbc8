"""``metering compact``: merge the part files of closed days into one sorted file per day.

A dataset (contract section 5) accumulates many small files per ``usage_date=YYYY-MM-DD``
partition: one per archive batch, one per replay run. Compaction rewrites each selected
**closed** day as the single file ``usage_date=D/part-compacted.parquet``:

* rows sorted by :data:`~storage.dataset.SORT_COLUMNS`;
* one row per ``interval_id`` (rule 9 makes the id a deterministic function of usage type,
  resource key and start, so a repeat is the same interval delivered twice);
* written with :func:`~storage.parts.write_atomic` (temporary name, fsync, rename), then
  the files it replaces are removed. A crash in between leaves the merged file next to old
  files whose rows it already holds: readers deduplicating by ``interval_id`` (``metering
  report``) see the same numbers, and running compact again finishes the job (it is
  idempotent: an already compacted day is left alone).

**Closed days.** ``usage_date`` is a date in the period time zone, while "today" is the
current date in **UTC**. A day ``D`` is closed when ``D < today_utc - min_age_days``. With
the default of 1 day a day is compacted from the second UTC midnight after it, when it has
ended in every time zone (UTC-12 to UTC+14) at least 12 hours earlier. Rows that still
arrive for a compacted day (late data, a replay) are added as new files and merged by the
next compaction; nothing is lost.

**Duplicates and conflicts.** Rows sharing an ``interval_id`` whose *content* (every column
except the lineage ``source_topic``, ``source_partition``, ``source_offset``) is identical
are duplicates: one is kept, the others dropped and counted. If the versions of one id
differ in content (for example two replays with different ``--until`` horizons, or a
different ``domain_id``) they are **conflicts**: compaction is a storage operation and must
not change billed numbers on its own guess, so by default (``on_conflict="fail"``) a day
with conflicts is reported and left untouched, and the command exits 1. With
``on_conflict="keep-latest"`` the operator accepts the rule of :data:`PREFERENCE` (the
version emitted by the latest source record, i.e. the highest ``source_offset``) and the
day is compacted; the conflicts are still reported. ``metering report`` counts the same
version.

**Concurrency.** Only the selected day directories are touched, so an archive writer may
keep writing other days. Files whose names start with ``.`` or ``_`` (temporary files of
:func:`~storage.parts.write_atomic`, staging directories) are ignored. A file that
appears or is replaced while a day is compacted is not removed (its stat changed), and the
next run merges it. Two compactions of one dataset exclude each other with a lock file
(``DIR/.metering-compact.lock``, :class:`~storage.dataset.DirectoryLock`; the archive's is
``DIR/.metering-archive.lock``, so compaction and the archive run side by side).

Errors are :mod:`storage.errors` classes; the command line (``agents.cli``) maps them to
exit codes: 1 days left uncompacted because of conflicts (or another compaction holds the
lock), 2 an open day requested without ``--force``, 3 unreadable input (missing DIR or day,
unreadable file), 4 unwritable output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.dataset import (
    ARROW_SCHEMA,
    PARTITION_COLUMN,
    SORT_COLUMNS,
    DirectoryLock,
    with_missing_columns,
)
from storage.errors import InputError, LockedError, LockHeldError, OpenDayError, OutputError
from storage.layout import COMPACTED_NAME
from storage.parts import fsync_dir, list_days, part_files, write_atomic

"""Name of the one file of a compacted day (constant, so a rerun replaces it)."""

LOCK_NAME: Final = ".metering-compact.lock"
"""Lock file in the dataset root (a leading ``.`` hides it from dataset readers)."""

LINEAGE_COLUMNS: Final = ("source_topic", "source_partition", "source_offset")
"""Columns that say where a row came from, not what was used; ignored when comparing."""

PREFERENCE: Final[tuple[tuple[str, Literal["ascending", "descending"]], ...]] = (
    ("source_offset", "descending"),
    ("source_partition", "descending"),
    ("source_topic", "descending"),
    ("end", "descending"),
    ("final", "descending"),
    ("account_id", "ascending"),
)
"""Which row of an ``interval_id`` is kept: the first in this order (highest source offset,
then partition and topic, then the later ``end``, a final row, the smallest account id);
remaining ties are broken by the other columns in ascending order, so the choice is
deterministic. ``metering report`` uses the same order."""

OnConflict = Literal["fail", "keep-latest"]

_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_CONFLICT_DETAILS: Final = 100
"""Conflicting ids described per day (all are counted)."""


# ---------------------------------------------------------------------------- dedup


@dataclass(frozen=True)
class Conflict:
    """One ``interval_id`` whose versions differ in content."""

    interval_id: str
    versions: int
    """Number of distinct contents (lineage ignored)."""
    columns: tuple[str, ...]
    """The columns whose values differ between the versions."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "interval_id": self.interval_id,
            "versions": self.versions,
            "columns": list(self.columns),
        }


@dataclass(frozen=True)
class Deduplicated:
    """The result of :func:`dedupe`."""

    table: pa.Table
    """One row per ``interval_id`` (order unspecified)."""
    duplicates: int
    """Rows dropped."""
    conflict_count: int
    """Ids whose versions differ in content (counted in ``duplicates`` as well)."""
    conflicts: tuple[Conflict, ...]
    """Details of the first :data:`MAX_CONFLICT_DETAILS` conflicting ids, by id."""


def _sort_keys(names: Sequence[str]) -> list[tuple[str, Literal["ascending", "descending"]]]:
    keys: list[tuple[str, Literal["ascending", "descending"]]] = [("interval_id", "ascending")]
    keys += [(n, order) for n, order in PREFERENCE if n in names]
    used = {k for k, _ in keys}
    keys += [(n, "ascending") for n in names if n not in used]
    return keys


def dedupe(table: pa.Table, max_details: int = MAX_CONFLICT_DETAILS) -> Deduplicated:
    """Keep one row per ``interval_id`` of ``table`` (any subset of the contract columns that
    includes ``interval_id``), choosing by :data:`PREFERENCE`, and find conflicts.

    Content is compared on every column of ``table`` except :data:`LINEAGE_COLUMNS`, so a
    caller reading fewer columns detects conflicts only in those columns.
    """
    n = table.num_rows
    ids = table.column("interval_id")
    if n < 2 or pc.count_distinct(ids).as_py() == n:
        return Deduplicated(table, 0, 0, ())
    ordered = table.sort_by(_sort_keys(table.column_names))
    sorted_ids = ordered.column("interval_id").combine_chunks()
    first = pa.concat_arrays(
        [
            pa.array([True]),
            pc.not_equal(sorted_ids.slice(1), sorted_ids.slice(0, n - 1)),
        ]
    )
    kept = ordered.filter(first)
    repeated_ids = pc.unique(sorted_ids.filter(pc.invert(first)))
    repeated = ordered.filter(pc.is_in(sorted_ids, value_set=repeated_ids))
    content = [c for c in table.column_names if c not in LINEAGE_COLUMNS]
    if "duration_ms" in content:
        # Zero-length intervals bill nothing. Two of them at the same instant (a resource
        # opened and closed twice within CloudStack's one-second clock resolution) share an
        # id and may differ in close_reason or final: that is no conflict; one is kept.
        nonzero = pc.not_equal(repeated.column("duration_ms"), pa.scalar(0, pa.int64()))
        repeated = repeated.filter(nonzero)
    distinct = repeated.select(content).group_by(content, use_threads=False).aggregate([])
    versions = distinct.group_by("interval_id", use_threads=False).aggregate(
        [("interval_id", "count")]
    )
    conflicting = versions.filter(pc.greater(versions.column("interval_id_count"), pa.scalar(1)))
    conflicting = conflicting.sort_by("interval_id")
    details: list[Conflict] = []
    if conflicting.num_rows:
        shown = conflicting.slice(0, max_details)
        shown_ids: list[str] = [str(i) for i in shown.column("interval_id").to_pylist()]
        counts = dict(zip(shown_ids, shown.column("interval_id_count").to_pylist(), strict=True))
        rows = distinct.filter(
            pc.is_in(distinct.column("interval_id"), value_set=pa.array(shown_ids, pa.string()))
        )
        by_id: dict[str, list[dict[str, Any]]] = {}
        for row in rows.to_pylist():
            by_id.setdefault(row["interval_id"], []).append(row)
        for iid in shown_ids:
            versions_of = by_id[iid]
            cols = tuple(c for c in content if len({repr(v[c]) for v in versions_of}) > 1)
            details.append(Conflict(iid, int(counts[iid] or 0), cols))
    return Deduplicated(kept, n - kept.num_rows, conflicting.num_rows, tuple(details))


# ---------------------------------------------------------------------------- days


def closed_cutoff(now_ms: int, min_age_days: int) -> str:
    """The first day that is *not* closed: ``today_utc - min_age_days`` as ``YYYY-MM-DD``.

    ``now_ms`` is UTC epoch ms; days before the cutoff are closed.
    """
    today = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
    return (today - dt.timedelta(days=min_age_days)).isoformat()


def valid_date(text: str) -> str:
    """``text`` if it is a real ``YYYY-MM-DD`` date, else ValueError."""
    if not _DATE.match(text):
        raise ValueError(f"not a YYYY-MM-DD date: {text!r}")
    dt.date.fromisoformat(text)
    return text


def read_part(path: Path) -> pa.Table:
    """One part file as a table with exactly :data:`ARROW_SCHEMA` (InputError if not)."""
    try:
        with pq.ParquetFile(path) as pf:
            table = pf.read()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    table = with_missing_columns(table)  # version 1 files: no region
    missing = [n for n in ARROW_SCHEMA.names if n not in table.column_names]
    if missing:
        raise InputError(f"{path} is not a usage-interval file (missing {', '.join(missing)})")
    try:
        return table.select(ARROW_SCHEMA.names).cast(ARROW_SCHEMA)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(f"{path} does not match the interval schema: {exc}") from exc


def _signature(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    holder = f"metering compact, pid {os.getpid()} on {socket.gethostname()}"
    try:
        lock = DirectoryLock(root / LOCK_NAME, holder)
    except LockHeldError as exc:
        raise LockedError(f"another metering compact is running on {root} "
                          f"({exc.holder or 'holder unknown'})") from exc
    except OSError as exc:
        raise OutputError(f"cannot create {root / LOCK_NAME}: {exc.strerror or exc}") from exc
    with lock:
        yield


# ---------------------------------------------------------------------------- compaction


DayAction = Literal["compacted", "already-compacted", "conflicts", "empty"]


@dataclass
class DayResult:
    """What compaction did (or, in a dry run, would do) to one day."""

    date: str
    action: DayAction
    files_before: int = 0
    files_after: int = 0
    rows_before: int = 0
    rows_after: int = 0
    duplicates: int = 0
    conflict_count: int = 0
    conflicts: tuple[Conflict, ...] = ()
    files_kept: list[str] = field(default_factory=list)
    """Old files left in place because they changed while the day was compacted."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "date": self.date,
            "action": self.action,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "duplicates_dropped": self.duplicates,
            "conflicts": self.conflict_count,
            "conflict_details": [c.as_dict() for c in self.conflicts],
            "files_kept": self.files_kept,
        }


@dataclass
class CompactOptions:
    """Options of one compaction. ``now_ms`` (UTC epoch ms) defaults to the clock."""

    root: Path
    dates: list[str] | None = None
    """Explicit days (``YYYY-MM-DD``); None: every closed day."""
    min_age_days: int = 1
    force: bool = False
    """Compact explicitly selected days even if they are not closed."""
    dry_run: bool = False
    on_conflict: OnConflict = "fail"
    now_ms: int | None = None


@dataclass
class CompactSummary:
    """What a compaction did; ``as_dict`` is its machine-readable form."""

    root: str
    dry_run: bool
    cutoff: str
    """First day that is not closed (UTC date minus ``min_age_days``)."""
    days: list[DayResult] = field(default_factory=list)
    open_days: list[str] = field(default_factory=list)
    """Days present but not closed, left alone (only when no explicit days were given)."""
    seconds: float = 0.0

    def _sum(self, attr: str) -> int:
        return sum(int(getattr(d, attr)) for d in self.days)

    @property
    def days_compacted(self) -> int:
        return sum(d.action == "compacted" for d in self.days)

    @property
    def days_with_conflicts(self) -> list[str]:
        return [d.date for d in self.days if d.conflict_count]

    @property
    def days_refused(self) -> list[str]:
        """Days left untouched because of conflicts (``on_conflict="fail"``)."""
        return [d.date for d in self.days if d.action == "conflicts"]

    @property
    def files_before(self) -> int:
        return self._sum("files_before")

    @property
    def files_after(self) -> int:
        return self._sum("files_after")

    @property
    def rows_before(self) -> int:
        return self._sum("rows_before")

    @property
    def rows_after(self) -> int:
        return self._sum("rows_after")

    @property
    def duplicates(self) -> int:
        return self._sum("duplicates")

    @property
    def conflicts(self) -> int:
        return self._sum("conflict_count")

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "dry_run": self.dry_run,
            "cutoff": self.cutoff,
            "days_compacted": self.days_compacted,
            "days_refused": self.days_refused,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "duplicates_dropped": self.duplicates,
            "conflicts": self.conflicts,
            "open_days": self.open_days,
            "days": [d.as_dict() for d in self.days],
            "seconds": round(self.seconds, 3),
        }


def compact_day(
    day_dir: Path, date: str, *, dry_run: bool = False, on_conflict: OnConflict = "fail"
) -> DayResult:
    """Compact one day directory into :data:`COMPACTED_NAME` (see the module docstring)."""
    files = part_files(day_dir)
    if not files:
        return DayResult(date, "empty")
    if len(files) == 1 and files[0].name == COMPACTED_NAME:
        try:
            rows = pq.ParquetFile(files[0]).metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read {files[0]}: {exc}") from exc
        return DayResult(date, "already-compacted", 1, 1, rows, rows)
    signatures: dict[Path, tuple[int, int, int]] = {}
    tables: list[pa.Table] = []
    for path in files:
        try:
            signatures[path] = _signature(path)
        except FileNotFoundError as exc:  # removed since listing: not ours to guess about
            raise InputError(f"{path} vanished while compacting; run again") from exc
        tables.append(read_part(path))
    table = pa.concat_tables(tables)
    result = dedupe(table)
    day = DayResult(
        date,
        "compacted",
        files_before=len(files),
        files_after=1,
        rows_before=table.num_rows,
        rows_after=result.table.num_rows,
        duplicates=result.duplicates,
        conflict_count=result.conflict_count,
        conflicts=result.conflicts,
    )
    if result.conflict_count and on_conflict == "fail":
        day.action = "conflicts"
        day.files_after, day.rows_after, day.duplicates = len(files), table.num_rows, 0
        return day
    if dry_run:
        return day
    merged = result.table.sort_by([(name, "ascending") for name in SORT_COLUMNS])
    target = day_dir / COMPACTED_NAME
    try:
        write_atomic(merged, target)
        fsync_dir(day_dir)  # already durable by write_atomic; kept as the crash point of tests
        for path in files:
            if path == target:
                continue
            try:
                unchanged = _signature(path) == signatures[path]
            except FileNotFoundError:
                continue
            if unchanged:
                path.unlink(missing_ok=True)
            else:
                day.files_kept.append(str(path))
        fsync_dir(day_dir)
    except OSError as exc:
        raise OutputError(f"cannot compact {day_dir}: {exc.strerror or exc}") from exc
    day.files_after = 1 + len(day.files_kept)
    return day


def run_compact(options: CompactOptions) -> CompactSummary:
    """Compact the selected days of ``options.root``; raises InputError, OutputError,
    OpenDayError (before touching anything) or LockedError."""
    started = time.monotonic()
    now_ms = options.now_ms if options.now_ms is not None else time.time_ns() // 1_000_000
    cutoff = closed_cutoff(now_ms, options.min_age_days)
    root = options.root
    summary = CompactSummary(str(root), options.dry_run, cutoff)
    if not root.is_dir():
        raise InputError(f"{root}: no such dataset directory")
    days = list_days(root)
    if options.dates is not None:
        selected: list[str] = sorted(set(options.dates))
        missing = [d for d in selected if d not in days]
        if missing:
            raise InputError(f"no partition {PARTITION_COLUMN}={', '.join(missing)} under {root}")
        too_young = [d for d in selected if d >= cutoff]
        if too_young and not options.force:
            raise OpenDayError(
                f"day(s) not closed yet: {', '.join(too_young)} (days before {cutoff} are "
                "closed; use --force to compact them anyway)"
            )
    else:
        selected = [d for d in days if d < cutoff]
        summary.open_days = [d for d in days if d >= cutoff]
    lock = contextlib.nullcontext() if options.dry_run else _lock(root)
    with lock:
        for date in selected:
            result = compact_day(
                days[date], date, dry_run=options.dry_run, on_conflict=options.on_conflict
            )
            if result.action != "empty":
                summary.days.append(result)
    summary.seconds = time.monotonic() - started
    return summary
