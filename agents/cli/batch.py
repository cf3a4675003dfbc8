"""The batch commands ``replay``, ``compact`` and ``report``: argument parsing, exit codes
and printing, at the edge.

The engines live in :mod:`storage` (:func:`storage.replay.run_replay`,
:func:`storage.compact.run_compact`, :func:`storage.report.usage_report`) and are imported
only when a command runs: building these parsers loads neither pyarrow nor pandas, so
``metering replay --help`` starts fast. Errors become exit codes through
:mod:`agents.cli.exits`; results become text through :mod:`agents.cli.formats`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agents.cli.exits import EXIT_FAILED, EXIT_OK, fail
from agents.cli.formats import (
    compact_summary,
    replay_summary,
    report_csv,
    report_json,
    report_table,
)
from agents.cli.progress import ReplayDisplay, want_progress
from metering.decode import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_BYTES
from metering.periods import PERIOD_MS, PERIODS, PeriodGrid
from storage.layout import COMPACTED_NAME, FORMATS, GROUP_BY, ON_CONFLICT, SORT_COLUMNS


def _dump_json(value: object) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")


# --------------------------------------------------------------------------- replay


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay``, ``compact`` and ``report`` to the ``metering`` command line."""
    register_replay(sub)
    register_compact(sub)
    register_report(sub)


def register_replay(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``replay``."""
    p = sub.add_parser(
        "replay",
        help="meter recorded CloudStack events into a Parquet dataset (batch, no broker)",
        description=(
            "Read CloudStack event-bus records (bare JSON values or kcat -J envelopes; plain, "
            ".gz or - for stdin), compute usage intervals and write a Hive-partitioned "
            "Parquet dataset. Replaying the same input into the same DIR gives the same "
            "dataset. Exit codes: 0 ok, 2 bad options, 3 unreadable input, 4 unwritable output."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="input file(s), .gz, or -")
    p.add_argument("--input", action=_InputAction, dest="tagged", default=[], metavar="FILE",
                   help="one more input file (repeatable); may be followed by --region")
    p.add_argument("--region", action=_RegionAction, dest="tagged", metavar="NAME",
                   help="region of the --input just before it (1 to 64 letters, digits, "
                   "'.', '_', '-'): its intervals carry it, and each region's state is kept "
                   "apart. Either every input has a region or none")
    p.add_argument("--output", "-o", required=True, type=Path, metavar="DIR",
                   help="dataset directory (created if missing)")
    p.add_argument("--until", metavar="T",
                   help="horizon (ISO 8601, e.g. 2025-03-11T00:00:00Z): open intervals are cut "
                   "at T and records at or after T are not applied. Default: the last period "
                   "boundary at or before the newest confirmed event time (rule 4b)")
    p.add_argument("--period", choices=PERIODS, default="hour", help="aggregation period")
    p.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone of period boundaries and usage_date (default UTC)")
    p.add_argument("--lateness", type=float, default=None, metavar="SECONDS",
                   help="emulate the worker: cut periods once the watermark passes their end "
                   "plus SECONDS, so events later than that count as late. Default: off (the "
                   "whole input is known; every event applies in order)")
    p.add_argument("--orphan-close-ttl", type=float, default=86_400.0, metavar="SECONDS",
                   help="event time a close of what is not open (e.g. a VM.STOP read before "
                   "its VM.START) is remembered for an earlier open arriving later (contract "
                   "rule 3; default 86400, as the worker's orphan_close_ttl)")
    p.add_argument("--max-watermark-jump", type=float, default=3600.0, metavar="SECONDS",
                   help="a partition's watermark advance larger than this waits for a later "
                   "record to confirm it (contract rule 4b; as the worker's setting). "
                   "Default: 3600")
    p.add_argument("--rejects", type=Path, metavar="FILE", help="write rejected records as JSONL")
    p.add_argument("--max-record-bytes", type=int, default=DEFAULT_MAX_RECORD_BYTES,
                   help="records larger than this are rejected unparsed (default 1000000)")
    p.add_argument("--max-clock-skew", type=float, default=DEFAULT_MAX_CLOCK_SKEW_MS / 1000,
                   metavar="SECONDS",
                   help="records dated more than SECONDS after the wall clock at the start of "
                   "the replay are rejected (invalid_event_time; default 300)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None)
    g.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run_replay_command, _parser=p)


class _InputAction(argparse.Action):
    """``--input FILE``: appends ``[FILE, None]`` (the region, set by a following --region)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        tagged = list(getattr(namespace, self.dest) or [])
        tagged.append([values, None])
        setattr(namespace, self.dest, tagged)


class _RegionAction(argparse.Action):
    """``--region NAME``: the region of the ``--input`` just before it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from metering.regions import region_problem

        tagged = list(getattr(namespace, self.dest) or [])
        if not tagged or tagged[-1][1] is not None:
            parser.error(f"--region {values} must follow an --input FILE without a region")
        why = region_problem(str(values))
        if why:
            parser.error(f"--region: {why}")
        tagged[-1] = [tagged[-1][0], str(values)]
        setattr(namespace, self.dest, tagged)


def run_replay_command(args: argparse.Namespace) -> int:
    """Run ``metering replay`` from parsed arguments; return the exit code."""
    from metering.eventtime import iso, parse_iso_instant
    from storage.errors import StorageError
    from storage.replay import ReplayOptions, run_replay

    parser: argparse.ArgumentParser = args._parser
    try:
        until = parse_iso_instant(args.until) if args.until else None
        PeriodGrid(args.period, args.timezone)
    except ValueError as exc:
        parser.error(str(exc))
    if args.lateness is not None and args.lateness < 0:
        parser.error("--lateness must be >= 0 seconds")
    if not args.orphan_close_ttl >= 0:
        parser.error("--orphan-close-ttl must be >= 0 seconds")
    if args.max_record_bytes <= 0:
        parser.error("--max-record-bytes must be positive")
    if not args.max_clock_skew >= 0:
        parser.error("--max-clock-skew must be >= 0 seconds")
    if not args.max_watermark_jump > 0:
        parser.error("--max-watermark-jump must be > 0 seconds")
    inputs = [*args.inputs, *(name for name, _ in args.tagged)]
    regions: list[str | None] = [*(None for _ in args.inputs),
                                 *(region for _, region in args.tagged)]
    if not inputs:
        parser.error("no input: give INPUT files or --input FILE")
    if any(regions) and not all(regions):
        missing = ", ".join(n for n, r in zip(inputs, regions, strict=True) if not r)
        parser.error(f"some inputs have a region and {missing} has none: give every input "
                     "a region (--input FILE --region NAME), or none")
    options = ReplayOptions(
        inputs=inputs, output=args.output, regions=regions if any(regions) else None,
        until_ms=until, period=args.period,
        timezone=args.timezone,
        lateness_ms=None if args.lateness is None else int(args.lateness * 1000),
        orphan_close_ttl_ms=int(args.orphan_close_ttl * 1000),
        max_watermark_jump_ms=int(args.max_watermark_jump * 1000),
        rejects=args.rejects,
        max_record_bytes=args.max_record_bytes,
        now_ms=int(time.time() * 1000), max_clock_skew_ms=int(args.max_clock_skew * 1000),
    )
    try:
        display = ReplayDisplay(want_progress(args.progress), period_ms=PERIOD_MS[args.period])
        summary = run_replay(options, display)
    except StorageError as exc:
        return fail("replay", exc)
    if args.json:
        _dump_json(summary.as_dict())
    else:
        sys.stdout.write(replay_summary(summary, options))
        if until is not None:
            sys.stdout.write(f"horizon: {iso(until)}\n")
    return EXIT_OK


# --------------------------------------------------------------------------- compact


def register_compact(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``compact``."""
    p = sub.add_parser(
        "compact",
        help="merge the Parquet files of closed days into one sorted, deduplicated file per day",
        description=(
            "Rewrite each closed usage_date=YYYY-MM-DD partition of DIR as one file, "
            f"{COMPACTED_NAME}, sorted by {', '.join(SORT_COLUMNS)}, one row per interval_id. "
            "A day is closed when it is before today's UTC date minus --min-age-days. "
            "The merged file is written atomically before the old files are removed; "
            "rerunning after a crash finishes the job. Only the selected day directories are "
            "touched. Versions of an interval_id that differ in content (lineage columns "
            "aside) are conflicts: such a day is reported and left unchanged unless "
            "--on-conflict keep-latest. Exit codes: 0 ok, 1 conflicts left days uncompacted "
            "(or another compact is running), 2 bad options or an open day without --force, "
            "3 unreadable input, 4 unwritable output."
        ),
    )
    p.add_argument("root", type=Path, metavar="DIR", help="dataset directory")
    p.add_argument("--date", action="append", dest="dates", metavar="YYYY-MM-DD",
                   help="compact this day only (repeatable); open days need --force")
    p.add_argument("--min-age-days", type=int, default=1, metavar="N",
                   help="a day D is closed when D < today (UTC) - N days (default 1: from the "
                   "second UTC midnight after D, when D has ended in every time zone)")
    p.add_argument("--force", action="store_true",
                   help="compact days given with --date even if they are not closed")
    p.add_argument("--on-conflict", choices=ON_CONFLICT, default="fail",
                   help="fail (default): leave a day with conflicting versions unchanged and "
                   "exit 1; keep-latest: keep the version with the highest source_offset")
    p.add_argument("--dry-run", action="store_true",
                   help="read and report what would be done; write and remove nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_compact_command, _parser=p)


def run_compact_command(args: argparse.Namespace) -> int:
    """Run ``metering compact`` from parsed arguments; return the exit code."""
    from storage.compact import CompactOptions, run_compact, valid_date
    from storage.errors import StorageError

    parser: argparse.ArgumentParser = args._parser
    if args.min_age_days < 0:
        parser.error("--min-age-days must be >= 0")
    try:
        dates = [valid_date(d) for d in args.dates] if args.dates else None
    except ValueError as exc:
        parser.error(f"--date: {exc}")
    options = CompactOptions(root=args.root, dates=dates, min_age_days=args.min_age_days,
                             force=args.force, dry_run=args.dry_run,
                             on_conflict=args.on_conflict)
    try:
        summary = run_compact(options)
    except StorageError as exc:
        return fail("compact", exc)
    if args.json:
        _dump_json(summary.as_dict())
    else:
        sys.stdout.write(compact_summary(summary))
    return EXIT_FAILED if summary.days_refused else EXIT_OK


# --------------------------------------------------------------------------- report


def register_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``report``."""
    p = sub.add_parser(
        "report",
        help="usage hours and interval counts per account, usage type and/or day",
        description=(
            "Sum raw_usage_hours and count intervals per group from a metering Parquet "
            "dataset, counting each interval_id once (the archive may hold repeats until "
            "compacted). Exit codes: 0 ok, 2 bad options, 3 unreadable input (DIR missing or "
            "without usage_date partitions)."
        ),
    )
    p.add_argument("root", type=Path, metavar="DIR", help="dataset directory")
    p.add_argument("--by", action="append", choices=GROUP_BY,
                   metavar="{account,usage_type,day,region}",
                   help="group by this key; repeat for several (in that order; default account: "
                   "an account's usage in every region summed; add region to split it)")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD",
                   help="first usage_date included (inclusive)")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD",
                   help="last usage_date included (INCLUSIVE: --from 2025-03-01 --to 2025-03-31 "
                   "is March)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table (people, with a total row), csv or json (scripts)")
    p.set_defaults(func=run_report_command, _parser=p)


def run_report_command(args: argparse.Namespace) -> int:
    """Run ``metering report`` from parsed arguments; return the exit code."""
    from storage.compact import valid_date
    from storage.errors import StorageError
    from storage.report import usage_report

    parser: argparse.ArgumentParser = args._parser
    try:
        date_from = valid_date(args.date_from) if args.date_from else None
        date_to = valid_date(args.date_to) if args.date_to else None
    except ValueError as exc:
        parser.error(str(exc))
    if date_from and date_to and date_from > date_to:
        parser.error(f"--from {date_from} is after --to {date_to}")
    try:
        report = usage_report(args.root, args.by or ["account"], date_from, date_to)
    except StorageError as exc:
        return fail("report", exc)
    formatter = {"table": report_table, "csv": report_csv, "json": report_json}[args.format]
    sys.stdout.write(formatter(report))
    if report.conflicts:
        print(f"metering report: {report.conflicts:,} interval id(s) have versions that "
              "differ; counted the one with the highest source_offset (see metering compact)",
              file=sys.stderr)
    if args.format == "table":
        if report.duplicates:
            print(f"({report.duplicates:,} repeated row(s) counted once; metering compact "
                  "removes them)", file=sys.stderr)
        if not report.files:
            print("(no data in the selected days)", file=sys.stderr)
    return EXIT_OK
