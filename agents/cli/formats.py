"""Text of the batch commands' results: summaries for people, report formats for scripts.

Storage returns plain values (:class:`~storage.replay.ReplaySummary`,
:class:`~storage.compact.CompactSummary`, :class:`~storage.report.Report`); turning them into
text is the command line's job. Pure functions: no I/O, no heavy imports (the result
classes are named for type checking only).
"""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

import orjson

from metering.eventtime import iso

if TYPE_CHECKING:
    from storage.compact import CompactSummary
    from storage.replay import ReplayOptions, ReplaySummary
    from storage.report import Report

# ---------------------------------------------------------------------------- replay


def replay_summary(summary: ReplaySummary, options: ReplayOptions) -> str:
    """The human-readable summary printed at the end of a replay."""
    out = io.StringIO()
    w = out.write
    w(f"replayed {summary.records:,} records in {summary.seconds:.2f}s "
      f"({summary.records_per_second:,.0f} records/s)\n")
    w("records by category:\n")
    for k, v in sorted(summary.categories.items()):
        w(f"  {k:<16} {v:>12,}\n")
    if summary.blank_lines:
        w(f"  (blank lines skipped: {summary.blank_lines:,})\n")
    w("intervals and hours by usage type:\n")
    for k in sorted(summary.intervals):
        w(f"  {k:<24} {summary.intervals[k]:>10,}  {summary.hours[k]:>14,.3f} h\n")
    if not summary.intervals:
        w("  (none)\n")
    total_rejects = sum(summary.rejects.values())
    w(f"rejects: {total_rejects:,}")
    w(f" -> {options.rejects}\n" if options.rejects and total_rejects else "\n")
    for k, v in sorted(summary.rejects.items()):
        w(f"  {k:<24} {v:>10,}\n")
    if summary.after_until:
        w(f"records at or after --until (not applied): {summary.after_until:,}\n")
    if summary.newest_event_ms is not None:
        w(f"newest event: {iso(summary.newest_event_ms)}\n")
    w(f"wrote {len(summary.files_written)} Parquet file(s), {summary.bytes_written:,} bytes "
      f"under {options.output}\n")
    return out.getvalue()


# ---------------------------------------------------------------------------- compact


def compact_summary(summary: CompactSummary) -> str:
    """The human-readable summary printed at the end of a compaction."""
    verb = "would compact" if summary.dry_run else "compacted"
    lines = [
        f"{verb} {summary.days_compacted} day(s) under {summary.root}: "
        f"files {summary.files_before:,} -> {summary.files_after:,}, "
        f"rows {summary.rows_before:,} -> {summary.rows_after:,}, "
        f"duplicates dropped {summary.duplicates:,}, conflicts {summary.conflicts:,}"
    ]
    for d in summary.days:
        label = {
            "compacted": verb,
            "already-compacted": "already compacted",
            "conflicts": "CONFLICTS, left unchanged",
            "empty": "empty",
        }[d.action]
        lines.append(
            f"  {d.date}  {label:<25} files {d.files_before:>5,} -> {d.files_after:<3,} "
            f"rows {d.rows_before:>12,} -> {d.rows_after:<12,} duplicates {d.duplicates:,}"
        )
        for c in d.conflicts:
            lines.append(
                f"      conflict {c.interval_id}: {c.versions} versions differ in "
                f"{', '.join(c.columns)}"
            )
        if d.conflict_count > len(d.conflicts):
            lines.append(f"      ... and {d.conflict_count - len(d.conflicts):,} more")
        for kept in d.files_kept:
            lines.append(f"      changed during compaction, kept for the next run: {kept}")
    if summary.days_refused:
        lines.append(
            f"{len(summary.days_refused)} day(s) with conflicting versions of an interval were "
            "not compacted; inspect them, or rerun with --on-conflict keep-latest to keep the "
            "version with the highest source_offset"
        )
    if summary.open_days:
        lines.append(
            f"open days left alone (not before {summary.cutoff}): {', '.join(summary.open_days)}"
        )
    if not summary.days:
        lines.append("nothing to compact")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- report


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def report_table(report: Report) -> str:
    """Aligned columns with a total row; hours with 3 decimals."""
    group_cols = report.columns[:-2]
    header = [*group_cols, "intervals", "hours"]
    body = [
        [*(_cell(r[c]) for c in group_cols), f"{r['intervals']:,}", f"{r['hours']:,.3f}"]
        for r in report.rows
    ]
    total = [
        "TOTAL",
        *([""] * (len(group_cols) - 1)),
        f"{report.total_intervals:,}",
        f"{report.total_hours:,.3f}",
    ]
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(len(header))]
    numeric = {len(header) - 2, len(header) - 1}

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(b) for b in body), rule, line(total)]
    return "\n".join(lines) + "\n"


def report_csv(report: Report) -> str:
    """A header line and one line per group (no total); hours at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(report.columns)
    for r in report.rows:
        writer.writerow([_cell(r[c]) if c != "hours" else repr(r[c]) for c in report.columns])
    return out.getvalue()


def report_json(report: Report) -> str:
    """:meth:`Report.as_dict` as indented JSON."""
    return orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"
