"""``metering replay``: the batch front end of the metering core.

Reads CloudStack event-bus records from files (bare JSON values or kcat ``-J`` envelopes,
plain or gzip, or ``-`` for stdin), runs the same core as the streaming worker, and writes:

* the Parquet dataset (``DIR/usage_date=YYYY-MM-DD/replay-<digest>-<n>.parquet``). File names
  derive from a digest of the input bytes and the options, so replaying the same input into
  the same DIR again replaces the same files instead of adding duplicates;
* rejects as JSONL, one :func:`metering.rejects.reject_record` a line (a bounded excerpt of
  ``raw`` with ``raw_length`` and ``raw_sha256``, ``reason``, ``detail``, ``topic``,
  ``partition``, ``offset``, ``key``);
* a summary (:class:`ReplaySummary`): records by category, intervals and hours by usage
  type, rejects by reason, records/s. Progress is reported to a callback; the command line
  (``agents.cli``) draws it and prints the summary.

Errors are :class:`~storage.errors.InputError` (an input cannot be read) and
:class:`~storage.errors.OutputError` (the dataset or rejects file cannot be written).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import compress, repeat
from operator import is_, is_not
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple, cast

import orjson

from metering.decode import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MAX_RECORD_BYTES, decode_batch
from metering.engine import NEVER, Engine, Policy, Record
from metering.events import Category, Ignored, Meterable, Rejected, Source
from metering.intervals import UsageInterval
from metering.periods import PeriodGrid, as_period
from metering.regions import label as label_row
from metering.regions import qualified, qualify, region_problem
from metering.rejects import reject_record
from metering.usage_types import NAMES
from storage.errors import InputError, OutputError, ReplayProcessError
from storage.gctune import bulk_gc, settle
from storage.parts import partition_dir, publish, replay_part_name, staging_dir, write_atomic

if TYPE_CHECKING:  # pyarrow is imported where rows are written: the reader needs none of it
    import pyarrow as pa

FLUSH_ROWS: Final = 250_000
"""Rows buffered per ``usage_date`` before a part file is written (bounds memory)."""
CLOSE_WRITERS: Final = 2
"""Parts sorted and written at once at the end of a replay (threads)."""
BATCH_ROWS: Final = 4096
"""Rows of a ``usage_date`` the writer once converted to an Arrow batch at a time: parts are
still cut at whole multiples of it (:data:`PART_ROWS`), so that file contents stay as they
were."""
PART_ROWS: Final = -(-FLUSH_ROWS // BATCH_ROWS) * BATCH_ROWS
"""Rows of each part file of a ``usage_date`` but its last (:data:`FLUSH_ROWS` rounded up to
whole :data:`BATCH_ROWS`: 253 952)."""
HELD_ROWS: Final = 1_000_000
"""Rows the writer holds in memory across the current parts of all dates (its process
peaked at ~700 MB with it); past it, each date's held rows go to a staged Arrow file, read
back when their part is written. Each date's part fills only at :data:`PART_ROWS` rows, so
without this a replay whose ``--until`` lies far past its input (a row per period for every
open resource, spread over many dates) held every row until the end: 3.5 GB for a year past
the bench trace. Parts and files are the same either way (rows of a date in arrival
order)."""
_PERIOD_START: Final = UsageInterval._fields.index("period_start")


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
    now_ms: int | None = None
    """The wall clock (UTC ms) for the event-time bound of rule 4b; None: read at start."""
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    regions: list[str | None] | None = None
    """The region of each input (same order as ``inputs``; None: no regions). Either every
    input has one or none (:class:`metering.regions.TopicRegions`); rows then carry it and
    each region's state is kept apart."""
    processes: int | None = None
    """1: run every stage in this process; 3: the reader, the engine (this process) and the
    writer in processes of their own (:mod:`storage.pipeline`); None: the environment
    variable :data:`PROCESSES_ENV` if set, else 3 for inputs of at least
    :data:`PIPELINE_MIN_BYTES` (regular files) and 1 otherwise (stdin, small inputs)."""


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
    newest_event_ms: int | None = None
    """The newest event time (UTC ms) the input confirmed (rule 4b), or None if no event
    was applied: with ``--until`` far beyond it, every open resource is cut up to it."""
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
            "newest_event_ms": self.newest_event_ms,
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


READ_BLOCK: Final = 1 << 20
"""Input bytes read, hashed and split into lines at a time."""


class Block(NamedTuple):
    """Consecutive lines of one input file (each without its ``\\n``)."""

    label: str
    """The file's base name (``stdin`` for ``-``): the topic of its bare lines."""
    first: int
    """0-based index in the file of ``lines[0]`` (the offset of a bare line)."""
    lines: list[bytes]
    plain: bool
    """No line is blank, ends in ``\\r`` or is a kcat envelope: each line is a record value
    (the common case, decided for the whole block at once). See :func:`block_records`."""
    input_no: int = 0
    """Position of the block's file in the list of inputs."""


class _Hasher:
    """Feeds ``digest`` on a background thread, strictly in order: hashlib releases the GIL
    while it hashes a large buffer, so hashing a block overlaps decoding the one before."""

    def __init__(self, digest: Any) -> None:
        self._update = digest.update
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-digest")
        self._last: Future[None] | None = None

    def update(self, data: bytes) -> None:
        self._last = self._pool.submit(self._update, data)

    def close(self) -> None:
        """Wait until every update is done (raising what one raised)."""
        self._pool.shutdown(wait=True)
        if self._last is not None:
            self._last.result()


_ENVELOPE: Final = b'{"topic":'
"""How a kcat ``-J`` envelope line starts (:func:`block_records` opens only those)."""


def _plain(data: bytes, lines: list[bytes]) -> bool:
    """:attr:`Block.plain` for ``lines``, which are ``data`` split at ``\n`` but for a
    first line that may start with the end of an earlier block (C-speed scans, no loop)."""
    return (b"\r" not in data and b"\r" not in lines[0] and all(lines)
            and not any(map(bytes.startswith, lines, repeat(_ENVELOPE)))
            and not any(map(bytes.isspace, lines)))


Where = tuple[str, int, int, str | None]
"""Where a record comes from: topic (or file label), partition, offset, key."""


def block_records(block: Block, counters: ReplaySummary
                  ) -> tuple[list[bytes], list[Where] | None]:
    """The record values of a block, and where each comes from; None for a
    :attr:`~Block.plain` block (``(label, 0, first + i, None)`` for value ``i``: no list is
    built). Blank lines are counted and skipped, ``\\r\\n`` endings stripped, kcat envelopes
    opened (they keep their own coordinates)."""
    if block.plain:
        return block.lines, None
    raws: list[bytes] = []
    where: list[Where] = []
    label = block.label
    for index, line in enumerate(block.lines, block.first):
        raw = line.rstrip(b"\r\n")
        if not raw or raw.isspace():
            counters.blank_lines += 1
            continue
        env = _envelope(raw) if raw.startswith(_ENVELOPE) else None
        if env is None:
            raws.append(raw)
            where.append((label, 0, index, None))
            continue
        value, src, key = env
        raws.append(value)
        where.append((label, 0, index, key) if src is None else (*src, key))
    return raws, where


def read_blocks(
    names: list[str], digest: Any, on_bytes: Callable[[int], None] = lambda _n: None
) -> Iterator[Block]:
    """Yield the inputs' lines in order, a block at a time, hashing every byte read into
    ``digest`` (complete when the iterator is exhausted or closed).

    Lines are split at ``\\n`` as iterating over a binary file splits them; a last line
    without one is a line too. ``on_bytes`` is called with the size of each block read.
    """
    hasher = _Hasher(digest)
    try:
        for index, name in enumerate(names):
            label = "stdin" if name == "-" else os.path.basename(name)
            stream = _open_input(name)
            hasher.update(f"\0{label}\0".encode())
            try:
                first = 0
                partial: list[bytes] = []  # the pieces of a line longer than a block
                read = stream.read
                while block := read(READ_BLOCK):
                    hasher.update(block)
                    on_bytes(len(block))
                    if b"\n" not in block:
                        partial.append(block)
                        continue
                    lines = block.split(b"\n")
                    if partial:  # the line begun in an earlier block (not copying this one)
                        partial.append(lines[0])
                        lines[0] = b"".join(partial)
                    tail = lines.pop()
                    partial = [tail] if tail else []
                    yield Block(label, first, lines, _plain(block, lines), index)
                    first += len(lines)
                if partial:
                    lines = [b"".join(partial)]
                    yield Block(label, first, lines, _plain(lines[0], lines), index)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise InputError(f"error reading {name}: {exc}") from exc
            finally:
                if stream is not sys.stdin.buffer:
                    stream.close()
    finally:
        hasher.close()


def read_records(names: list[str], digest: Any, counters: ReplaySummary
                 ) -> Iterator[tuple[bytes, str, int, int, str | None]]:
    """The input records one by one: (value, topic, partition, offset, key), in order.

    Bare lines get the file's base name as topic, partition 0 and their 0-based line index
    as offset; kcat envelopes keep their own coordinates. (Replay itself reads blocks.)
    """
    for block in read_blocks(names, digest):
        raws, where = block_records(block, counters)
        for i, raw in enumerate(raws):
            if where is None:
                yield raw, block.label, 0, block.first + i, None
            else:
                yield (raw, *where[i])


# ---------------------------------------------------------------------------- writing


class DateOf:
    """The ``usage_date`` (``YYYY-MM-DD`` in the grid's time zone) of a ``period_start``
    (UTC ms), remembered per distinct instant."""

    def __init__(self, grid: PeriodGrid) -> None:
        self.grid = grid
        self._cache: dict[int, str] = {}

    def __call__(self, period_start: int) -> str:
        date = self._cache.get(period_start)
        if date is None:
            date = self._cache[period_start] = self.grid.local_date(period_start)
        return date


class DatasetWriter:
    """Buffers intervals per ``usage_date`` and writes deterministic, atomic part files.

    Rows arrive as Arrow batches (:meth:`add_batch`; :meth:`add` converts the rows of one
    engine batch at once, while fresh in the CPU caches: converting 250 000 rows long after
    they were made cost three times as much) and are grouped by date. A part is
    :data:`PART_ROWS` rows of a date (the last one fewer), in arrival order; it is sorted
    when written.
    """

    def __init__(
        self,
        root: Path,
        grid: PeriodGrid,
        run_key: Callable[[], str],
        domain_of: Callable[[str], str | None] = lambda _a: None,
        regional: bool = False,
    ) -> None:
        self.root = root
        self.domain_of = domain_of
        self.regional = regional
        """Rows carry a region: the engine knows their accounts as ``<region>|<account>``."""
        self.grid = grid
        self.date_of = DateOf(grid)
        self.run_key = run_key
        self.batches: dict[str, list[pa.RecordBatch]] = defaultdict(list)
        """Batches of each date's current part held in memory (its earlier rows may be in
        :attr:`moved`)."""
        self.moved: dict[str, list[Path]] = defaultdict(list)
        """Staged Arrow files of each date's current part, in order (:data:`HELD_ROWS`)."""
        self.held = 0
        """Rows in :attr:`batches`."""
        self.rows: Counter[str] = Counter()
        """Rows in each date's current part (held and moved)."""
        self.parts: Counter[str] = Counter()
        self.pending: list[tuple[str, int, list[pa.RecordBatch | Path]]] = []
        self.tallies: dict[str, Tally | None] = {}
        """Staged file name -> its rows' count and hours by usage type (None: a null)."""

    def add(self, rows: Sequence[UsageInterval]) -> None:
        """Buffer ``rows`` under their ``usage_date`` s, in order (:meth:`add_batch`)."""
        if rows:
            from storage.dataset import to_batch

            self.add_batch(to_batch(rows))

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Buffer the rows of ``batch`` (:data:`~storage.dataset.ARROW_SCHEMA`) under their
        ``usage_date`` s, in order; a part that fills up is closed at once (queued for
        :meth:`spill`)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        starts = batch.column(_PERIOD_START).view(pa.int64())
        distinct = pc.unique(starts)
        instants: list[int] = distinct.to_pylist()  # type: ignore[assignment]  # no nulls
        dates = list(map(self.date_of, instants))
        if len(set(dates)) > 1:  # rows of each date together, in order (a stable sort)
            names = sorted(set(dates))
            number = pa.array(list(map(names.index, dates)), pa.int32())
            of_row = pc.take(number, pc.index_in(starts, value_set=distinct))
            batch = batch.take(pc.sort_indices(of_row))
            counts = pc.value_counts(of_row)
            numbers: list[int] = counts.field(0).to_pylist()  # type: ignore[assignment]
            sizes: dict[int, int] = dict(zip(
                numbers, counts.field(1).to_pylist(), strict=True))  # type: ignore[arg-type]
        else:
            names, sizes = dates[:1], {0: batch.num_rows}
        first = 0
        for number_of_date, date in enumerate(names):
            size = sizes[number_of_date]
            self._append(date, batch.slice(first, size))
            first += size

    def _append(self, date: str, batch: pa.RecordBatch) -> None:
        """Add rows of ``date`` to its current part, closing each part that fills up."""
        while batch.num_rows:
            room = PART_ROWS - self.rows[date]
            head = batch.slice(0, room) if batch.num_rows > room else batch
            self.batches[date].append(head)
            self.rows[date] += head.num_rows
            self.held += head.num_rows
            if self.rows[date] >= PART_ROWS:
                self._end_part(date)
            batch = batch.slice(head.num_rows)

    def _end_part(self, date: str) -> None:
        """Close the current part of ``date`` (it has rows): queue it for :meth:`spill`."""
        batches = self.batches.pop(date, [])
        self.held -= sum(batch.num_rows for batch in batches)
        self.pending.append((date, self.parts[date], [*self.moved.pop(date, []), *batches]))
        self.parts[date] += 1
        self.rows[date] = 0

    @property
    def due(self) -> bool:
        """:meth:`spill` has work: full parts to write, or more than :data:`HELD_ROWS`
        rows held."""
        return bool(self.pending) or self.held > HELD_ROWS

    def _move_held(self, tmpdir: Path) -> None:
        """Every date's held rows to a staged Arrow file each (read back by
        :meth:`_write_part`)."""
        import pyarrow as pa

        from storage.dataset import ARROW_SCHEMA

        for date, batches in self.batches.items():
            if not batches:
                continue
            moved = self.moved[date]
            path = tmpdir / f"held-{date}-{self.parts[date]:05d}-{len(moved):05d}.arrow"
            try:
                with pa.ipc.new_file(str(path), ARROW_SCHEMA) as sink:
                    for batch in batches:
                        sink.write_batch(batch)
            except OSError as exc:
                raise OutputError(f"cannot write to {tmpdir}: {exc.strerror or exc}") from exc
            moved.append(path)
            batches.clear()
        self.held = 0

    def _fill_domains(self, table: pa.Table) -> pa.Table:
        """Fill ``domain_id`` of rows emitted before their account's ACCOUNT.CREATE was read
        (inputs need not be in time order across partitions); unknown stays null."""
        import pyarrow as pa
        import pyarrow.compute as pc

        domains = table.column("domain_id").combine_chunks()  # an Array: masks need one
        if not domains.null_count:
            return table
        missing = pc.is_null(domains)
        accounts: list[str] = (  # account_id is not nullable
            table.column("account_id").filter(missing).to_pylist())  # type: ignore[assignment]
        if self.regional:  # every row has a region (all inputs or none)
            in_region = table.column("region").filter(missing).to_pylist()
            accounts = [qualified(str(r), a) for r, a in zip(in_region, accounts, strict=True)]
        found = [self.domain_of(a) for a in accounts]
        if not any(d is not None for d in found):
            return table
        filled = pc.replace_with_mask(domains, missing, pa.array(found, pa.string()))
        return table.set_column(table.schema.get_field_index("domain_id"),
                                table.schema.field("domain_id"), filled)

    def spill(self, tmpdir: Path, workers: int = 1) -> None:
        """Write full parts to staged files (final names need the whole input's digest,
        known only at the end). With ``workers`` > 1, that many parts are sorted and
        written at once (Arrow and the file system release the GIL): only once no more
        rows come, as a part's missing domains are filled from the accounts known when it
        is written. Past :data:`HELD_ROWS` rows held, the held rows go to staged files
        first."""
        if self.held > HELD_ROWS:
            self._move_held(tmpdir)
        pending, self.pending = self.pending, []
        if workers <= 1 or len(pending) <= 1:
            for date, part, batches in pending:
                self._write_part(tmpdir, date, part, batches)
            return
        with ThreadPoolExecutor(max_workers=workers,
                                thread_name_prefix="replay-write") as pool:
            futures = [pool.submit(self._write_part, tmpdir, date, part, batches)
                       for date, part, batches in pending]
            for future in futures:
                future.result()  # raises what the write raised

    def _write_part(self, tmpdir: Path, date: str, part: int,
                    pieces: list[pa.RecordBatch | Path]) -> None:
        """Write one part: its rows in order, from staged Arrow files (:attr:`moved`,
        removed once read) and batches."""
        import pyarrow as pa

        from storage.dataset import ARROW_SCHEMA, sort_table

        batches: list[pa.RecordBatch] = []
        with contextlib.ExitStack() as maps:  # staged files mapped (the buffers keep them alive)
            for piece in pieces:
                if isinstance(piece, Path):
                    source = maps.enter_context(pa.memory_map(str(piece)))
                    batches += pa.ipc.open_file(source).read_all().to_batches()
                else:
                    batches.append(piece)
            table = pa.Table.from_batches(batches, ARROW_SCHEMA).combine_chunks()
            del batches
        for piece in pieces:
            if isinstance(piece, Path):
                piece.unlink()
        table = sort_table(self._fill_domains(table))
        name = f"{date}-{part:05d}.parquet"
        write_atomic(table, tmpdir / name)
        self.tallies[name] = by_usage_type(table)

    def close(self, tmpdir: Path, summary: ReplaySummary) -> None:
        """Move spilled parts and write the remaining buffers under their final names."""
        key = self.run_key()
        for date in list(self.batches):
            if self.rows[date]:
                self._end_part(date)
        self.spill(tmpdir, workers=CLOSE_WRITERS)
        for spilled in sorted(tmpdir.glob("*.parquet")):
            date, part = spilled.stem.rsplit("-", 1)
            final = partition_dir(self.root, date) / replay_part_name(key, int(part))
            # stale parts of an earlier run of the same input: numbering is deterministic,
            # so the same names are reused and each is replaced atomically
            summary.bytes_written += publish(spilled, final)
            summary.files_written.append(str(final))
            tally(summary, str(final), self.tallies.pop(spilled.name))


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class HorizonProgress:
    """How far the horizon cut of a replay is (rule 10): after the last record, every
    resource still open gets a piece per period up to the horizon, which takes as long as
    the horizon lies beyond the input."""

    until_ms: int | None
    """The ``--until`` instant (UTC ms), or None (the horizon is the last period boundary
    at or before :attr:`newest_ms`)."""
    newest_ms: int | None
    """The newest event time (UTC ms) the input confirmed, or None (no event applied)."""
    resources: int
    """Resources with an open interval when the input ended: what the cut goes through."""
    intervals: int
    """Their open intervals (each gets a piece per period up to the horizon)."""
    cut: int
    """Of those, how many are cut so far."""
    rows: int
    """Rows the cut emitted so far."""
    done: bool = False
    """True for the last report of the cut."""


HorizonReport = Callable[[HorizonProgress], None]


@dataclass(frozen=True)
class ReplayProgress:
    """How far a running replay is (passed to the ``on_progress`` callback)."""

    records: int
    """Records read so far (blank lines excluded)."""
    bytes_read: int
    """Input bytes read so far (decompressed for ``.gz``)."""
    total_bytes: int | None
    """Size of all inputs, or None when unknown (stdin or a ``.gz`` input)."""
    done: bool
    """True for the one last report, after the dataset is written."""
    horizon: HorizonProgress | None = None
    """Set during the horizon cut (after the last input record: records and bytes are
    final); None before it and after it."""
    writing: bool = False
    """True for the one report after the horizon cut: the last Parquet parts are being
    written (the last step, before the ``done`` report)."""


ProgressCallback = Callable[[ReplayProgress], None]


class _Seen:
    """One distinct :class:`Ignored` value and how often it was decoded."""

    __slots__ = ("n", "value")

    def __init__(self, value: Ignored) -> None:
        self.value = value
        self.n = 1


class FrontEnd:
    """Stage 1 of a replay: read, hash, split and decode the inputs; count every record into
    ``counters`` (records, blank lines, categories, ignored kinds, rejects by reason, records
    after ``until``); write the rejects; check the regions of lanes. :meth:`chunks` yields
    what meters, a block of input (:data:`READ_BLOCK` bytes) at a time.

    Args:
        options: the run's options (inputs, until, limits, rejects).
        regions: the region of each input (all None without regions).
        now_ms: the wall clock (UTC ms) for the event-time bound of rule 4b.
        digest: fed every input byte (the run's file names derive from it).
        counters: the summary the counts go to.
        rejects_fh: the open rejects file, or None.
    """

    def __init__(self, options: ReplayOptions, regions: list[str | None], now_ms: int,
                 digest: Any, counters: ReplaySummary, rejects_fh: IO[bytes] | None) -> None:
        self.options = options
        self.regions = regions
        self.now_ms = now_ms
        self.digest = digest
        self.counters = counters
        self.rejects_fh = rejects_fh
        self.bytes_read = 0
        """Input bytes read so far (decompressed for ``.gz``)."""

    def _read(self, n: int) -> None:
        self.bytes_read += n

    def chunks(self) -> Iterator[tuple[list[Meterable], list[Source]]]:
        """The meterable values of each block of input and where each comes from, in input
        order (possibly empty lists); ``counters.records`` and :attr:`bytes_read` are up to
        date when a block's lists are yielded. Ignored records are folded into the counters
        once the inputs are exhausted. Raises :class:`InputError`, ``OSError`` (rejects)."""
        options, summary, rejects_fh = self.options, self.counters, self.rejects_fh
        max_bytes, max_skew_ms, until = (options.max_record_bytes,
                                         options.max_clock_skew_ms, options.until_ms)
        count = 0
        # Ignored values are few distinct objects: counted by identity (cheap), folded into
        # kinds and categories at the end
        ignored_seen: dict[int, _Seen] = {}
        by_category: Counter[Category] = Counter()
        lane_region: dict[str, str] = {}  # lane -> the region of its first record
        new_source = tuple.__new__  # Source(...) without its __new__'s Python frame
        for block in read_blocks(options.inputs, self.digest, self._read):
            name, first = block.label, block.first
            region = self.regions[block.input_no]
            raws, where = block_records(block, summary)
            count += len(raws)
            values: list[Meterable] = []
            sources: list[Source] = []
            decoded = decode_batch(raws, max_bytes, self.now_ms, max_skew_ms)
            # most values are ignored: counted in bulk, without a loop over them
            types = list(map(type, decoded))
            of_type = Counter(types)
            one_of = dict(zip(types, decoded, strict=True))  # a value of each class
            for cls, n in of_type.items():
                if cls is not Ignored and cls is not Rejected:  # counted one by one
                    by_category[one_of[cls].category] += n
            if of_type[Ignored]:
                ignored = cast(list[Ignored],
                               list(compress(decoded, map(is_, types, repeat(Ignored)))))
                alike = dict(zip(map(id, ignored), ignored, strict=True))
                for ident, n in Counter(map(id, ignored)).items():
                    seen = ignored_seen.get(ident)
                    if seen is None:
                        seen = ignored_seen[ident] = _Seen(alike[ident])
                        n -= 1
                    seen.n += n
            for i in compress(range(len(decoded)), map(is_not, types, repeat(Ignored))):
                value = decoded[i]
                topic, partition, offset, key = (
                    (name, 0, first + i, None) if where is None else where[i])
                if type(value) is Rejected:
                    by_category[value.category] += 1
                    summary.rejects[value.reason.value] += 1
                    if rejects_fh is not None:
                        rejects_fh.write(orjson.dumps(reject_record(
                            raws[i], value, topic, partition, offset, key)) + b"\n")
                    continue
                value = cast(Meterable, value)
                if until is not None and value.time_ms >= until:
                    summary.after_until += 1
                    continue
                src = new_source(Source, (topic, partition, offset))
                if region is not None:  # a regional run: every input has a region
                    if lane_region.setdefault(src.lane, region) != region:
                        raise InputError(
                            f"records of {src.lane} (topic/partition) come from inputs of "
                            f"regions {lane_region[src.lane]} and {region}: each region "
                            "needs its own topic names (kcat -J dumps) or file names (bare "
                            "lines)")
                    value = qualify(value, region)
                values.append(value)
                sources.append(src)
            summary.records = count
            yield values, sources
        for seen in ignored_seen.values():
            by_category[seen.value.category] += seen.n
            summary.ignored[seen.value.kind] += seen.n
        for cat, n in by_category.items():
            summary.categories[cat.value] += n


ENGINE_BATCH: Final = 4096
"""Records handed to the engine per :meth:`~metering.engine.Engine.apply` call."""
_new_tuple: Final = tuple.__new__
"""Builds a NamedTuple (a :class:`Record`) from all its fields without the generated
``__new__``'s Python frame."""


def records_of(values: list[Meterable], sources: list[Source]) -> list[Record]:
    """The engine's records of one block's values and their sources (built in C, no Python
    frame per record)."""
    return list(map(_new_tuple, repeat(Record),
                    zip(values, sources, repeat(None), repeat(None), strict=False)))


def rebatch(blocks: Iterable[list[Record]]) -> Iterator[list[Record]]:
    """The records of ``blocks`` in order, :data:`ENGINE_BATCH` at a time (the last batch
    fewer)."""
    batch: list[Record] = []
    for records in blocks:
        batch += records
        while len(batch) >= ENGINE_BATCH:
            yield batch[:ENGINE_BATCH]
            batch = batch[ENGINE_BATCH:]
    if batch:
        yield batch


def drive(
    engine: Engine,
    batches: Iterable[list[Record]],
    until_ms: int | None,
    emit: Callable[[list[UsageInterval]], None],
    on_horizon: HorizonReport | None = None,
) -> None:
    """The engine loop: apply the batches (:func:`rebatch`) in order, then cut what is open
    at the horizon; the completed intervals of each batch go to ``emit``. ``on_horizon``
    (if given) hears how far the horizon cut is: once before it, after each of its steps
    and once at its end."""
    for batch in batches:
        rows = engine.apply(batch).rows
        if rows:
            emit(rows)
    steps = engine.finish_steps(until_ms)  # bounded: the horizon may be years ahead
    if on_horizon is None:
        for step in steps:
            emit(step.rows)
        return
    newest, now_open = engine.newest_ms, engine.open_entities
    uncut = set(now_open)  # a resource counts as cut in the first step that stores it
    progress = HorizonProgress(until_ms, None if newest == NEVER else newest, len(now_open),
                               sum(map(len, now_open.values())), 0, 0)
    on_horizon(progress)
    for step in steps:
        emit(step.rows)
        cut = uncut & step.entities
        uncut -= cut
        progress = replace(progress, cut=progress.cut + len(cut),
                           rows=progress.rows + len(step.rows))
        on_horizon(progress)
    on_horizon(replace(progress, cut=progress.resources, done=True))


def run_replay(
    options: ReplayOptions, on_progress: ProgressCallback | None = None
) -> ReplaySummary:
    """Replay ``options.inputs`` into ``options.output``; raises
    :class:`~storage.errors.InputError` or :class:`~storage.errors.OutputError`.

    ``on_progress`` (if given) is called after each block of input (:data:`READ_BLOCK`
    bytes), during the horizon cut (``horizon`` set: :class:`HorizonProgress`), once as
    the last parts are written (``writing``) and once more, with ``done`` set, at the end.
    """
    with bulk_gc():
        return _run_replay(options, on_progress)


def _run_key(options: ReplayOptions) -> Any:
    """The digest that names the run's files: the options here, every input byte later."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        f"{options.until_ms}|{options.period}|{options.timezone}|{options.lateness_ms}".encode()
    )
    if options.orphan_close_ttl_ms != ReplayOptions.orphan_close_ttl_ms:  # default: names kept
        digest.update(f"|orphan_close_ttl={options.orphan_close_ttl_ms}".encode())
    if options.max_watermark_jump_ms != ReplayOptions.max_watermark_jump_ms:
        digest.update(f"|jump={options.max_watermark_jump_ms}".encode())
    if options.regions and any(options.regions):  # no regions: names kept
        digest.update(f"|regions={options.regions}".encode())
    return digest


def _check_inputs(inputs: list[str]) -> int | None:
    """Raise InputError for an unreadable input; return the inputs' total size if known."""
    for name in inputs:
        if name != "-" and not os.access(name, os.R_OK):
            reason = "no such file" if not os.path.exists(name) else "permission denied"
            raise InputError(f"cannot read {name}: {reason}")
    if "-" in inputs or any(n.endswith(".gz") for n in inputs):
        return None
    return sum(os.path.getsize(n) for n in inputs)


def _input_regions(options: ReplayOptions) -> list[str | None]:
    """The region of each input (all None without regions); InputError if inconsistent."""
    regions = options.regions or [None] * len(options.inputs)
    if len(regions) != len(options.inputs):
        raise InputError(f"{len(regions)} regions for {len(options.inputs)} inputs")
    for region in regions:
        why = None if region is None else region_problem(region)
        if why:
            raise InputError(f"--region {why}")
    if any(regions) and not all(regions):
        missing = ", ".join(n for n, r in zip(options.inputs, regions, strict=True) if not r)
        raise InputError(f"some inputs have a region and {missing} has none: give every "
                         "input a region (--input FILE --region NAME), or none")
    return regions


PROCESSES_ENV: Final = "METERING_REPLAY_PROCESSES"
"""Environment variable read when :attr:`ReplayOptions.processes` is None: ``1`` or ``3``."""
PIPELINE_MIN_BYTES: Final = 64 << 20
"""Input size (bytes on disk) from which a replay runs in three processes by default:
starting them costs ~0.5 s, which a smaller input does not win back."""


def replay_processes(options: ReplayOptions) -> int:
    """How many processes a replay of ``options`` runs in: 1 or 3 (see
    :attr:`ReplayOptions.processes`); stdin is always read in this process, and so is
    everything in a daemonic process (it may not start any). Raises
    :class:`~storage.errors.ReplayProcessError` for another number."""
    wanted: int | str | None = options.processes
    origin = "ReplayOptions.processes"
    if wanted is None and os.environ.get(PROCESSES_ENV, "").strip():
        wanted, origin = os.environ[PROCESSES_ENV].strip(), PROCESSES_ENV
    if wanted is None:
        if "-" in options.inputs or multiprocessing.current_process().daemon:
            return 1
        on_disk = sum(os.path.getsize(n) for n in options.inputs)
        return 3 if on_disk >= PIPELINE_MIN_BYTES else 1
    if str(wanted) not in ("1", "3"):
        raise ReplayProcessError(f"{origin}={wanted!r}: give 1 (every stage in one process) "
                                 "or 3 (reader, engine and writer processes), or leave it "
                                 "unset (3 from 64 MiB of input)")
    if "-" in options.inputs or multiprocessing.current_process().daemon:
        return 1
    return int(wanted)


def run_name(digest: Any) -> str:
    """The run key in the names of a replay's files (:func:`replay_part_name`), from its
    digest (:func:`_run_key` fed every input byte)."""
    return str(digest.hexdigest()[:20])


def labelled(rows: list[UsageInterval], regional: bool) -> list[UsageInterval]:
    """The engine's ``rows`` as written: :func:`metering.regions.label` d in a regional run."""
    return [label_row(row) for row in rows] if regional else rows


def add_outcomes(summary: ReplaySummary, meter: Engine) -> None:
    """Count the engine's outcomes (lifecycle notes and record kinds) into ``summary``."""
    for name, n in meter.stats.items():
        summary.outcomes[str(name)] += n  # lifecycle notes are str enums


def write_failure(output: Path, exc: OSError) -> OutputError:
    """The error of a dataset (or rejects) write that failed with ``exc``."""
    return OutputError(f"cannot write the dataset under {output}: {exc}")


class Stage:
    """What every stage of one run is given: options, regions, grid, policy and where the
    parts are staged (a hidden directory inside the output, same file system)."""

    def __init__(self, options: ReplayOptions, regions: list[str | None], now_ms: int,
                 tmpdir: Path) -> None:
        self.options = options
        self.regions = regions
        self.regional = any(regions)
        self.now_ms = now_ms
        """The wall clock (UTC ms) of the event-time bound (rule 4b)."""
        self.tmpdir = tmpdir
        self.grid = PeriodGrid(as_period(options.period), options.timezone)
        self.policy = Policy(grid=self.grid, lateness_ms=options.lateness_ms,
                             orphan_close_ttl_ms=options.orphan_close_ttl_ms,
                             max_watermark_jump_ms=options.max_watermark_jump_ms)


class Progress:
    """Where the stages of a running replay say how far they are: each call becomes a
    :class:`ReplayProgress` for the caller's ``callback`` (if any); the horizon's newest
    event time goes to ``summary``."""

    def __init__(self, callback: ProgressCallback | None, total_bytes: int | None,
                 summary: ReplaySummary) -> None:
        self.callback = callback
        self.total_bytes = total_bytes
        self.summary = summary
        self.records = self.bytes_read = 0

    def _tell(self, done: bool = False, horizon: HorizonProgress | None = None,
              writing: bool = False) -> None:
        if self.callback is not None:
            self.callback(ReplayProgress(self.records, self.bytes_read, self.total_bytes,
                                         done, horizon, writing))

    def read(self, records: int, bytes_read: int) -> None:
        """After a block of input: records and input bytes read so far."""
        self.records, self.bytes_read = records, bytes_read
        self._tell()

    def horizon(self, progress: HorizonProgress) -> None:
        """During the horizon cut (:func:`drive`'s ``on_horizon``)."""
        self.summary.newest_event_ms = progress.newest_ms
        self._tell(horizon=progress)

    def writing(self) -> None:
        """The engine is done; the last Parquet parts are being written."""
        self._tell(writing=True)

    def done(self, records: int, bytes_read: int) -> None:
        """Once, at the end, after the dataset is written."""
        self.records, self.bytes_read = records, bytes_read
        self._tell(done=True)


def _run_in_process(stage: Stage, summary: ReplaySummary, rejects_fh: IO[bytes] | None,
                    progress: Progress) -> int:
    """Every stage in this process; returns the input bytes read."""
    options = stage.options
    meter = Engine(stage.policy)
    digest = _run_key(options)
    front = FrontEnd(options, stage.regions, stage.now_ms, digest, summary, rejects_fh)
    writer = DatasetWriter(options.output, stage.grid, lambda: run_name(digest),
                           meter.accounts.domain_of, stage.regional)
    regional, tmpdir = stage.regional, stage.tmpdir

    def emit(rows: list[UsageInterval]) -> None:
        writer.add(labelled(rows, regional))
        if writer.due:
            writer.spill(tmpdir)

    def blocks() -> Iterator[list[Record]]:
        for values, sources in front.chunks():
            yield records_of(values, sources)
            settle()
            progress.read(summary.records, front.bytes_read)

    drive(meter, rebatch(blocks()), options.until_ms, emit, progress.horizon)
    progress.writing()
    writer.close(tmpdir, summary)
    add_outcomes(summary, meter)
    return front.bytes_read


def _run_replay(options: ReplayOptions, on_progress: ProgressCallback | None) -> ReplaySummary:
    regions = _input_regions(options)
    summary = ReplaySummary()
    total = _check_inputs(options.inputs)
    processes = replay_processes(options)
    try:
        options.output.mkdir(parents=True, exist_ok=True)
        tmpdir = staging_dir(options.output, ".replay-")
        rejects_fh = open(options.rejects, "wb") if options.rejects else None  # noqa: SIM115
    except OSError as exc:
        raise OutputError(f"cannot write to {options.output}: {exc.strerror or exc}") from exc

    progress = Progress(on_progress, total, summary)
    started = time.monotonic()
    now_ms = int(time.time() * 1000) if options.now_ms is None else options.now_ms
    stage = Stage(options, regions, now_ms, tmpdir)
    try:
        if processes == 1:
            bytes_read = _run_in_process(stage, summary, rejects_fh, progress)
        else:
            from storage.pipeline import run_pipeline

            if rejects_fh is not None:  # created (and checked) here, written by the reader
                rejects_fh.close()
                rejects_fh = None
            bytes_read = run_pipeline(stage, summary, progress)
    except OSError as exc:
        raise write_failure(options.output, exc) from exc
    finally:
        if rejects_fh is not None:
            rejects_fh.close()
        for leftover in tmpdir.glob("*"):
            leftover.unlink(missing_ok=True)
        tmpdir.rmdir()
    summary.seconds = time.monotonic() - started
    progress.done(summary.records, bytes_read)
    return summary


Tally = dict[int, tuple[int, "pa.Array[Any]"]]
"""The rows of a table by usage type: their number and their hours (``duration_ms /
3 600 000``, in table order)."""


def by_usage_type(table: pa.Table) -> Tally | None:
    """:data:`Tally` of ``table`` (a part as written); None if a usage type or duration is
    null (the columns are not nullable: a writer bug)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types, durations = table.column("usage_type"), table.column("duration_ms")
    if types.null_count or durations.null_count:
        return None
    # int64 -> float64 is exact below 2**53 ms, and the division is IEEE's, as Python's
    hours = pc.divide(durations.cast(pa.float64()), pa.scalar(3_600_000.0))
    out: Tally = {}
    for t in pc.unique(types).to_pylist():
        mine = pc.equal(types, pa.scalar(t, pa.int32()))
        out[int(t)] = (int(pc.sum(mine.cast(pa.int64())).as_py()),  # type: ignore[arg-type]
                       pc.filter(hours, mine).combine_chunks())
    return out


def tally(summary: ReplaySummary, path: str, rows: Tally | None) -> None:
    """Count the rows of the part file ``path`` (:func:`by_usage_type`) into ``summary``'s
    intervals and hours by usage type; the hours are added one by one, in file order, to
    the sums of the files counted before (as ``hours[name] += d / 3_600_000`` row by row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if rows is None:  # columns are non-nullable; a null is a writer bug
        raise AssertionError(f"null usage_type/duration_ms in {path}")
    intervals, hours = summary.intervals, summary.hours
    for t, (n, values) in rows.items():
        name = NAMES[t]
        intervals[name] += n
        sums = pc.cumulative_sum(pa.concat_arrays(
            [pa.array([hours[name]], pa.float64()), values]))  # a sequential scan
        hours[name] = sums[-1].as_py()
