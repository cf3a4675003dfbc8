"""``metering replay``: the batch front end of the metering core.

Reads CloudStack event-bus records from files (bare JSON values or kcat ``-J`` envelopes,
plain or gzip, or ``-`` for stdin), runs the same core as the streaming worker, and writes:

* the Parquet dataset (``DIR/usage_date=YYYY-MM-DD/replay-<digest>-<n>.parquet``). File names
  derive from a digest of the input bytes and the options, so replaying the same input into
  the same DIR again replaces the same files instead of adding duplicates;
* rejects as JSONL, one :func:`metering.rejects.reject_record` a line (a bounded excerpt of
  ``raw`` with ``raw_length`` and ``raw_sha256``, ``reason``, ``detail``, ``topic``,
  ``partition``, ``offset``, ``key``);
* a summary: records by category, intervals and hours by usage type, rejects by reason,
  records/s. Progress goes to stderr on a terminal.

Exit codes are those of :mod:`agents.cli`: 0 ok, 2 bad options, 3 unreadable input,
4 unwritable output.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from metering.decode import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_BYTES, decode
from metering.events import Category, Ignored, Rejected, Source
from metering.intervals import UsageInterval
from metering.meter import Meter, MeterPolicy
from metering.periods import PeriodGrid
from metering.rejects import reject_record
from metering.usage_types import NAMES
from storage.dataset import partition_dir, sorted_table, write_atomic
from storage.gctune import bulk_gc

FLUSH_ROWS: Final = 250_000
"""Rows buffered per ``usage_date`` before a part file is written (bounds memory)."""


class InputError(Exception):
    """An input file could not be opened or read (exit code 3)."""


class OutputError(Exception):
    """The dataset or rejects file could not be written (exit code 4)."""


@dataclass
class ReplayOptions:
    """Options of one replay run; instants are UTC ms."""

    inputs: list[str]
    output: Path
    until_ms: int | None = None
    period: str = "hour"
    timezone: str = "UTC"
    lateness_ms: int | None = None
    orphan_close_ttl_ms: int = 86_400_000
    """Event time a close of what is not open is remembered (contract rule 3)."""
    max_watermark_jump_ms: int = 3_600_000  # contract rule 4b, as the worker's setting
    rejects: Path | None = None
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    progress: bool | None = None  # None: only when stderr is a terminal
    now_ms: int | None = None
    """The wall clock (UTC ms) for the event-time bound of rule 4b; None: read at start."""
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS


@dataclass
class ReplaySummary:
    """What a replay did; ``as_dict`` is its machine-readable form."""

    records: int = 0
    blank_lines: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    intervals: Counter[str] = field(default_factory=Counter)
    hours: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    after_until: int = 0
    files_written: list[str] = field(default_factory=list)
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "blank_lines": self.blank_lines,
            "records_by_category": dict(sorted(self.categories.items())),
            "rejects_by_reason": dict(sorted(self.rejects.items())),
            "ignored_by_kind": dict(sorted(self.ignored.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "intervals_by_usage_type": dict(sorted(self.intervals.items())),
            "hours_by_usage_type": {k: round(v, 6) for k, v in sorted(self.hours.items())},
            "after_until": self.after_until,
            "files_written": len(self.files_written),
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.records_per_second, 1),
        }


# ---------------------------------------------------------------------------- reading


def _open_input(name: str) -> IO[bytes]:
    try:
        if name == "-":
            return sys.stdin.buffer
        raw = open(name, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from exc
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _envelope(line: bytes) -> tuple[bytes, Source | None, str | None] | None:
    """If ``line`` is a kcat ``-J`` envelope, return (value bytes, source, key)."""
    if b'"payload"' not in line or b'"partition"' not in line:
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "payload" not in obj or "offset" not in obj:
        return None
    payload = obj.get("payload")
    value = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else b""
    topic, partition, offset = obj.get("topic"), obj.get("partition"), obj.get("offset")
    src = None
    if isinstance(topic, str) and type(partition) is int and type(offset) is int:
        src = Source(topic, partition, offset)
    key = obj.get("key")
    return value, src, key if isinstance(key, str) else None


InputRecord = tuple[bytes, str, int, int, str | None]
"""(value bytes, topic or file label, partition, offset, key) of one input record."""


def read_records(
    names: list[str],
    digest: Any,
    counters: ReplaySummary,
    on_bytes: Callable[[int], None] = lambda _n: None,
) -> Iterator[InputRecord]:
    """Yield records from the inputs in order, hashing every byte read into ``digest``.

    Bare lines get the file's base name as topic, partition 0 and the 0-based line index as
    offset; kcat envelopes keep their own coordinates.
    """
    for name in names:
        label = "stdin" if name == "-" else os.path.basename(name)
        stream = _open_input(name)
        digest.update(f"\0{label}\0".encode())
        try:
            index = -1
            update = digest.update
            for line in stream:
                update(line)
                on_bytes(len(line))
                index += 1
                body = line.rstrip(b"\r\n")
                if not body or body.isspace():
                    counters.blank_lines += 1
                    continue
                env = _envelope(body) if body[:9] == b'{"topic":' else None
                if env is not None:
                    value, src, key = env
                    if src is None:
                        yield value, label, 0, index, key
                    else:
                        yield value, src.topic, src.partition, src.offset, key
                else:
                    yield body, label, 0, index, None
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"error reading {name}: {exc}") from exc
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()


# ---------------------------------------------------------------------------- writing


class DatasetWriter:
    """Buffers intervals per ``usage_date`` and writes deterministic, atomic part files."""

    def __init__(
        self,
        root: Path,
        grid: PeriodGrid,
        run_key: Callable[[], str],
        domain_of: Callable[[str], str | None] = lambda _a: None,
    ) -> None:
        self.root = root
        self.domain_of = domain_of
        self.grid = grid
        self.run_key = run_key
        self.buffers: dict[str, list[UsageInterval]] = defaultdict(list)
        self.parts: Counter[str] = Counter()
        self.pending: list[tuple[str, int, list[UsageInterval]]] = []
        self._date_cache: dict[int, str] = {}

    def _date(self, period_start: int) -> str:
        date = self._date_cache.get(period_start)
        if date is None:
            date = self.grid.local_date(period_start)
            self._date_cache[period_start] = date
        return date

    def add(self, rows: list[UsageInterval]) -> None:
        for row in rows:
            date = self._date(row.period_start)
            buf = self.buffers[date]
            buf.append(row)
            if len(buf) >= FLUSH_ROWS:
                self.pending.append((date, self.parts[date], buf))
                self.parts[date] += 1
                self.buffers[date] = []

    def _fill_domains(self, rows: list[UsageInterval]) -> list[UsageInterval]:
        """Fill ``domain_id`` of rows emitted before their account's ACCOUNT.CREATE was read
        (inputs need not be in time order across partitions); unknown stays null."""
        out = []
        for row in rows:
            if row.domain_id is None:
                domain = self.domain_of(row.account_id)
                if domain is not None:
                    row = row._replace(domain_id=domain)
            out.append(row)
        return out

    def spill(self, tmpdir: Path) -> None:
        """Write full buffers to temporary part files (names need the final input digest)."""
        for date, part, rows in self.pending:
            table = sorted_table(self._fill_domains(rows))
            write_atomic(table, tmpdir / f"{date}-{part:05d}.parquet")
        self.pending.clear()

    def close(self, tmpdir: Path, summary: ReplaySummary) -> None:
        """Move spilled parts and write the remaining buffers under their final names."""
        key = self.run_key()
        for date, rows in self.buffers.items():
            if rows:
                self.pending.append((date, self.parts[date], rows))
                self.parts[date] += 1
        self.buffers.clear()
        self.spill(tmpdir)
        for spilled in sorted(tmpdir.glob("*.parquet")):
            date, part = spilled.stem.rsplit("-", 1)
            final = partition_dir(self.root, date) / f"replay-{key}-{part}.parquet"
            final.parent.mkdir(parents=True, exist_ok=True)
            # stale parts of an earlier run of the same input: numbering is deterministic,
            # so the same names are reused; os.replace makes each switch atomic
            os.replace(spilled, final)
            summary.files_written.append(str(final))
            summary.bytes_written += final.stat().st_size


# ---------------------------------------------------------------------------- running


class _Progress:
    def __init__(self, enabled: bool, total_bytes: int | None) -> None:
        self.enabled = enabled
        self.total = total_bytes
        self.bytes = 0
        self.started = time.monotonic()
        self.next_at = self.started + 0.5

    def add_bytes(self, n: int) -> None:
        self.bytes += n

    def tick(self, records: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now < self.next_at:
            return
        self.next_at = now + 0.5
        rate = records / max(now - self.started, 1e-9)
        pct = f" {100 * self.bytes / self.total:5.1f}%" if self.total else ""
        sys.stderr.write(f"\rreplay:{pct} {records:,} records  {rate:,.0f} rec/s   ")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_replay(options: ReplayOptions) -> ReplaySummary:
    """Replay ``options.inputs`` into ``options.output``. Raises InputError/OutputError."""
    with bulk_gc():
        return _run_replay(options)


def _run_replay(options: ReplayOptions) -> ReplaySummary:
    grid = PeriodGrid(options.period, options.timezone)  # type: ignore[arg-type]
    meter = Meter(MeterPolicy(grid=grid, lateness_ms=options.lateness_ms,
                              orphan_close_ttl_ms=options.orphan_close_ttl_ms,
                              max_watermark_jump_ms=options.max_watermark_jump_ms))
    summary = ReplaySummary()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        f"{options.until_ms}|{options.period}|{options.timezone}|{options.lateness_ms}".encode()
    )
    if options.orphan_close_ttl_ms != ReplayOptions.orphan_close_ttl_ms:  # default: names kept
        digest.update(f"|orphan_close_ttl={options.orphan_close_ttl_ms}".encode())
    if options.max_watermark_jump_ms != ReplayOptions.max_watermark_jump_ms:
        digest.update(f"|jump={options.max_watermark_jump_ms}".encode())
    for name in options.inputs:
        if name != "-" and not os.access(name, os.R_OK):
            reason = "no such file" if not os.path.exists(name) else "permission denied"
            raise InputError(f"cannot read {name}: {reason}")
    total = None
    if "-" not in options.inputs and not any(n.endswith(".gz") for n in options.inputs):
        total = sum(os.path.getsize(n) for n in options.inputs)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    progress = _Progress(show, total)
    try:
        options.output.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile_dir(options.output))
        rejects_fh = open(options.rejects, "wb") if options.rejects else None  # noqa: SIM115
    except OSError as exc:
        raise OutputError(f"cannot write to {options.output}: {exc.strerror or exc}") from exc
    writer = DatasetWriter(options.output, grid, lambda: digest.hexdigest()[:20],
                           meter.domain_of)
    until = options.until_ms
    started = time.monotonic()
    categories = summary.categories
    max_bytes = options.max_record_bytes
    now_ms = int(time.time() * 1000) if options.now_ms is None else options.now_ms
    max_skew_ms = options.max_clock_skew_ms
    ignored: Counter[str] = Counter()
    by_category: Counter[Category] = Counter()
    try:
        count = 0
        for raw, topic, partition, offset, key in read_records(
            options.inputs, digest, summary, progress.add_bytes
        ):
            count += 1
            value = decode(raw, max_bytes, now_ms, max_skew_ms)
            by_category[value.category] += 1
            if isinstance(value, Ignored):
                ignored[value.kind] += 1
                continue
            if isinstance(value, Rejected):
                summary.rejects[value.reason.value] += 1
                if rejects_fh is not None:
                    rejects_fh.write(
                        orjson.dumps(reject_record(raw, value, topic, partition, offset, key))
                        + b"\n"
                    )
                continue
            if until is not None and value.time_ms >= until:
                summary.after_until += 1
                continue
            rows = meter.process(value, Source(topic, partition, offset))
            if rows:
                writer.add(rows)
                if writer.pending:
                    writer.spill(tmpdir)
            if count & 0x3FFF == 0:
                progress.tick(count)
        summary.records = count
        rows = meter.finish(until)
        writer.add(rows)
        writer.close(tmpdir, summary)
    except OSError as exc:
        raise OutputError(f"cannot write the dataset under {options.output}: {exc}") from exc
    finally:
        if rejects_fh is not None:
            rejects_fh.close()
        for leftover in tmpdir.glob("*"):
            leftover.unlink(missing_ok=True)
        tmpdir.rmdir()
    summary.seconds = time.monotonic() - started
    progress.tick(summary.records, force=True)
    summary.ignored.update(ignored)
    for cat, n in by_category.items():
        categories[cat.value] += n
    for name, n in meter.stats.items():
        summary.outcomes[name] += n
    _tally(summary, writer)
    return summary


def tempfile_dir(root: Path) -> str:
    """A private staging directory inside the output (same filesystem: renames are atomic)."""
    import tempfile

    return tempfile.mkdtemp(prefix=".replay-", dir=root)


def _tally(summary: ReplaySummary, writer: DatasetWriter) -> None:
    import pyarrow.parquet as pq

    for path in summary.files_written:
        table = pq.read_table(path, columns=["usage_type", "duration_ms"])
        types = table.column("usage_type").to_pylist()
        durations = table.column("duration_ms").to_pylist()
        for t, d in zip(types, durations, strict=True):
            if t is None or d is None:  # columns are non-nullable; a None is a writer bug
                raise AssertionError(f"null usage_type/duration_ms in {path}")
            name = NAMES[t]
            summary.intervals[name] += 1
            summary.hours[name] += d / 3_600_000


def format_summary(summary: ReplaySummary, options: ReplayOptions) -> str:
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
    w(f"wrote {len(summary.files_written)} Parquet file(s), {summary.bytes_written:,} bytes "
      f"under {options.output}\n")
    return out.getvalue()


# ---------------------------------------------------------------------------- CLI
