"""``metering replay`` in three processes: reader, engine and writer run at once.

A replay is CPU-bound in three roughly equal parts; run one after another in one process
they take their sum, run as a pipeline on two or more cores about the longest one.

* **Reader** (a child process, :func:`_reader_main`): :class:`~storage.replay.FrontEnd`:
  reads and hashes the inputs, decodes every record, counts, writes the rejects file, checks
  lane regions. Per block of input (:data:`~storage.replay.READ_BLOCK` bytes) it sends only
  what meters (about a quarter of the records) as plain tuples, with each one's source and
  the progress so far; at the end the counters and the run key (input digest).
* **Engine** (this process, :func:`run_pipeline`): :class:`~metering.engine.Engine` driven
  by :func:`~storage.replay.drive` exactly as in one process (same records, same order, same
  batches). Each batch's rows go to the writer column by column, each column in the form
  Arrow keeps it in memory (:func:`encode_columns`; at most :data:`SEND_ROWS` rows a
  message), with the domains of the accounts created since the last batch.
* **Writer** (a child process, :func:`_writer_main`): :class:`~storage.replay.DatasetWriter`
  (the rows' Arrow batches, from :func:`decode_columns`, by date; spills, the final parts,
  publishing) and the summary's
  intervals and hours. It keeps a copy of the account -> domain map as of the batch it
  writes, so domains are filled exactly as in one process.

Children are started with the ``spawn`` method and connected by ``multiprocessing`` pipes
(each message a pickle). Errors: a child reports an :class:`~storage.errors.InputError` or
:class:`~storage.errors.OutputError` with the message one process would give, raised here;
a child that dies (killed, crashed) raises :class:`~storage.errors.ReplayProcessError` naming
it. Whatever fails, both children are stopped (terminated, then killed) before this returns,
and the caller removes the staging directory.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import sys
import traceback
import types
from array import array
from collections.abc import Callable, Iterator
from itertools import repeat
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from operator import is_not
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from metering.engine import Engine, Record
from metering.events import (
    AccountCreated,
    AccountDeleted,
    Enrichment,
    Meterable,
    Source,
    UsageEvent,
)
from metering.intervals import UsageInterval
from metering.usage_schema import INTERVAL_FIELDS, Kind
from storage.errors import InputError, OutputError, ReplayProcessError
from storage.gctune import bulk_gc, settle
from storage.replay import (
    DatasetWriter,
    FrontEnd,
    Progress,
    ReplaySummary,
    Stage,
    _run_key,
    add_outcomes,
    drive,
    labelled,
    rebatch,
    records_of,
    run_name,
    write_failure,
)

if TYPE_CHECKING:  # pyarrow is imported where rows are written: reader and engine need none
    import pyarrow as pa

_CLASSES: Final[tuple[type, ...]] = (UsageEvent, Enrichment, AccountCreated, AccountDeleted)
"""Meterable value classes; a value travels as its plain tuple and its class's index."""
_KIND: Final = {cls: index for index, cls in enumerate(_CLASSES)}
_CREATED: Final = _KIND[AccountCreated]
_new: Final = tuple.__new__
SEND_ROWS: Final = 16_384
"""Rows sent to the writer per message at most: the rows the engine emits at once (all that
is open when the input ends, ~35 % of a month's daily rows) then cross in pieces, and the
writer converts one while the engine encodes the next."""
STOP_TIMEOUT_S: Final = 5.0
"""Seconds a child is given to end after it was told to (or finished), before it is killed."""


# ---------------------------------------------------------------------------- children


def _failure(exc: BaseException, output: Path) -> tuple[str, str, str]:
    """The message a child sends for ``exc``: ("error", kind, text)."""
    if isinstance(exc, InputError):
        return "error", "input", str(exc)
    if isinstance(exc, OutputError):
        return "error", "output", str(exc)
    if isinstance(exc, OSError):
        return "error", "output", str(write_failure(output, exc))
    lines = traceback.format_exception_only(type(exc), exc)
    return "error", "crash", "".join(lines).strip()


def _report_failure(conn: Connection, exc: BaseException, output: Path) -> None:
    """Send the parent ``exc`` (if it still listens)."""
    with contextlib.suppress(OSError, ValueError):  # the parent is gone: nothing to tell
        conn.send(_failure(exc, output))


def _reader_main(conn: Connection, stage: Stage) -> None:
    """The reader process: :class:`~storage.replay.FrontEnd` over the inputs; per block
    ``("b", fields, kinds, sources, records, bytes_read)`` (plain tuples; ``kinds`` one byte
    per value: its index in :data:`_CLASSES`), then ``("end", counters, run key)``."""
    options = stage.options
    try:
        with bulk_gc():
            digest = _run_key(options)
            counters = ReplaySummary()
            try:
                rejects_fh = open(options.rejects, "wb") if options.rejects else None  # noqa: SIM115
            except OSError as exc:
                raise OutputError(f"cannot write to {options.output}: "
                                  f"{exc.strerror or exc}") from exc
            try:
                front = FrontEnd(options, stage.regions, stage.now_ms, digest, counters,
                                 rejects_fh)
                kind = _KIND.__getitem__
                send = conn.send
                for values, sources in front.chunks():
                    send(("b", list(map(tuple, values)), bytes(map(kind, map(type, values))),
                          list(map(tuple, sources)), counters.records, front.bytes_read))
                    settle()
            finally:
                if rejects_fh is not None:
                    rejects_fh.close()
            send(("end", (counters.records, counters.blank_lines, dict(counters.categories),
                          dict(counters.rejects), dict(counters.ignored),
                          counters.after_until), run_name(digest)))
    except KeyboardInterrupt:
        pass  # the parent got it too and stops the run
    except BaseException as exc:  # every failure is reported to the parent
        _report_failure(conn, exc, options.output)
    finally:
        conn.close()


def _writer_main(conn: Connection, inbox: Connection, stage: Stage) -> None:
    """The writer process: ``("rows", domains, n, columns)`` messages (n rows, their
    columns as :func:`encode_columns` makes them) into a
    :class:`~storage.replay.DatasetWriter`; ``("close", domains, run key)`` writes and
    publishes the last parts and answers ``("done", files, bytes, intervals, hours)``."""
    output = stage.options.output
    try:
        with bulk_gc():
            domains: dict[str, str | None] = {}
            key = [""]
            writer = DatasetWriter(output, stage.grid, lambda: key[0], domains.get,
                                   stage.regional)
            recv, tmpdir = inbox.recv, stage.tmpdir
            while True:
                message = recv()
                if message[0] == "rows":
                    _, updates, n, columns = message
                    domains.update(updates)
                    writer.add_batch(decode_columns(n, columns))
                    if writer.due:
                        writer.spill(tmpdir)
                    settle()
                    continue
                _, updates, key[0] = message  # "close"
                domains.update(updates)
                summary = ReplaySummary()
                writer.close(tmpdir, summary)
                conn.send(("done", summary.files_written, summary.bytes_written,
                           dict(summary.intervals), dict(summary.hours)))
                return
    except (KeyboardInterrupt, EOFError):
        pass  # the parent stopped the run (or got the interrupt too)
    except BaseException as exc:  # every failure is reported to the parent
        _report_failure(conn, exc, output)
    finally:
        conn.close()
        inbox.close()


# ---------------------------------------------------------------------------- parent


# ------------------------------------------------------------------ rows, engine -> writer
#
# The engine's rows cross to the writer column by column, each column in a form the writer
# makes its Arrow array of without a Python object per value, and that is made here at C
# speed: the engine's process is the pipeline's busiest, so it does as little per value as
# it can. A column is one of
#
#   ("s", text, valid)   strings: UTF-8, joined by NUL (no value holds one); valid: None, or
#                        one byte per row (0: null; a null is joined as "")
#   ("n", data)          numbers: int64 / int32 / float64 values (native byte order), or one
#                        byte per bool
#   ("0",)               every value null
#   ("l", values)        anything else, the values themselves (converted by the writer as
#                        they always were, ``pa.array(values, type)``)
#
# Every value arrives as it left; "l" carries whatever the other forms do not take (a string
# with NUL or a lone surrogate, an integer out of range, a value of another type), and the
# writer's conversion then accepts or refuses it as before.

_KINDS: Final = tuple(spec.kind for spec in INTERVAL_FIELDS)
_NUMBER_CODES: Final = {Kind.INT64: "q", Kind.TIMESTAMP_MS: "q", Kind.INT32: "i",
                        Kind.FLOAT64: "d"}
if array("q").itemsize != 8 or array("i").itemsize != 4 or array("d").itemsize != 8:
    raise ImportError("storage.pipeline needs 8-byte 'q'/'d' and 4-byte 'i' arrays")
_MAX_TEXT: Final = 2**31 - 1
"""Longest joined text of a string column (Arrow ``string`` has int32 offsets)."""

Column = tuple[Any, ...]
"""One column of a batch of rows on its way to the writer (see above)."""


def _encode_column(values: tuple[Any, ...], kind: Kind) -> Column:
    """``values`` (one column of a batch of rows, at least one) in their wire form."""
    n = len(values)
    try:
        if kind is Kind.STRING:
            try:
                text, valid = "\0".join(values), None
            except TypeError:  # a null (or a value that is no string: "l" below)
                nulls = values.count(None)
                if nulls == n:
                    return ("0",)
                text = "\0".join(["" if v is None else v for v in values])
                valid = bytes(map(is_not, values, repeat(None)))
            if text.count("\0") == n - 1:  # no value holds a NUL
                data = text.encode()  # UnicodeEncodeError (a lone surrogate): "l" below
                if len(data) <= _MAX_TEXT:
                    return "s", data, valid
        elif kind is Kind.BOOL:
            if set(map(type, values)) == {bool}:
                return "n", bytes(values)
        elif type(values[0]) is not bool:  # the engine's numbers are never bools
            return "n", array(_NUMBER_CODES[kind], values).tobytes()
    except (TypeError, OverflowError, ValueError):  # UnicodeEncodeError is a ValueError
        pass
    if values.count(None) == n:
        return ("0",)
    return "l", list(values)


def encode_columns(rows: list[UsageInterval]) -> list[Column]:
    """The columns of ``rows`` (at least one) as the writer receives them
    (:func:`decode_columns`)."""
    return list(map(_encode_column, zip(*rows, strict=True), _KINDS))


def decode_columns(n: int, columns: list[Column]) -> pa.RecordBatch:
    """The batch of ``n`` rows sent as :func:`encode_columns` (:data:`ARROW_SCHEMA`): equal,
    value for value, to :func:`storage.dataset.columns_to_batch` of the rows' columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from storage.dataset import ARROW_SCHEMA

    zero = pa.scalar(0, pa.uint8())

    def flags(data: bytes) -> pa.BooleanArray:
        """One byte per row -> booleans (Arrow keeps them as bits: a validity bitmap)."""
        return pc.not_equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(data)]),
                            zero)

    arrays = []
    for column, field in zip(columns, ARROW_SCHEMA, strict=True):
        tag, typ = column[0], field.type
        if tag == "s":
            _, text, valid = column
            whole = pa.Array.from_buffers(pa.string(), 1, [
                None, pa.array([0, len(text)], pa.int32()).buffers()[1], pa.py_buffer(text)])
            values = pc.split_pattern(whole, "\0").flatten()  # n strings, offset 0
            if valid is not None:
                values = pa.Array.from_buffers(typ, n, [flags(valid).buffers()[1],
                                                        *values.buffers()[1:]])
            arrays.append(values)
        elif tag == "n":
            arrays.append(flags(column[1]) if typ == pa.bool_() else
                          pa.Array.from_buffers(typ, n, [None, pa.py_buffer(column[1])]))
        elif tag == "0":
            arrays.append(pa.nulls(n, typ))
        else:
            arrays.append(pa.array(column[1], typ))
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


def _widen(conn: Connection) -> None:
    """Give ``conn``'s pipe the largest buffer the system allows (Linux: 1 MiB by default
    instead of 64 KiB): a message then crosses in one or two writes instead of a process
    switch per 64 KiB, which on a busy machine can wait a whole time slice each."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setsize is None:
        return
    try:
        with open("/proc/sys/fs/pipe-max-size") as fh:
            size = int(fh.read())
        fcntl.fcntl(conn.fileno(), setsize, size)
    except (OSError, ValueError):
        pass  # the default buffer works, only slower


class _Child:
    """One child process and the parent's ends of its pipes (one-way, widened)."""

    def __init__(self, what: str, process: BaseProcess, inbox: Connection,
                 outbox: Connection | None) -> None:
        self.what = what
        self.process = process
        self.inbox = inbox
        """What the child sends (its blocks, its result, its failure)."""
        self.outbox = outbox
        """What the child is sent (None: nothing)."""

    def died(self, output: Path) -> ReplayProcessError:
        """The error for a child that is gone (its pipe closed without a last message)."""
        process = self.process
        process.join(STOP_TIMEOUT_S)
        code = process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            try:
                how = f"was killed by signal {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        else:
            how = f"exited with code {code}"
        return ReplayProcessError(
            f"the replay's {self.what} process (pid {process.pid}) {how} before it finished; "
            f"the dataset under {output} may be incomplete: run the replay again (it "
            "replaces the files of an earlier run of the same input)")

    def failed(self, message: tuple[Any, ...], output: Path) -> Exception:
        """The error a child reported (``("error", kind, text)``)."""
        if message[0] != "error":
            return ReplayProcessError(f"the replay's {self.what} process sent "
                                      f"{message[0]!r} out of turn")
        kind, text = message[1], message[2]
        if kind == "input":
            return InputError(text)
        if kind == "output":
            return OutputError(text)
        return ReplayProcessError(f"the replay's {self.what} process (pid "
                                  f"{self.process.pid}) failed: {text}")

    def recv(self, output: Path) -> tuple[Any, ...]:
        """The child's next message; raises if the child died."""
        try:
            message: tuple[Any, ...] = self.inbox.recv()
        except (EOFError, OSError):
            raise self.died(output) from None
        return message

    def _has_message(self) -> bool:
        try:
            return self.inbox.poll()
        except (EOFError, OSError):
            return True  # the pipe closed: recv() tells why

    def send(self, message: tuple[Any, ...], output: Path) -> None:
        """Send ``message``; raise what the child reported if it failed, or that it died
        (the writer speaks before it was told to close only when it failed)."""
        assert self.outbox is not None
        if self._has_message():
            raise self.failed(self.recv(output), output)
        try:
            self.outbox.send(message)
        except OSError:
            if self._has_message():
                raise self.failed(self.recv(output), output) from None
            raise self.died(output) from None

    def stop(self) -> None:
        """End the child (if it still runs) and wait for it: terminate, then kill."""
        process = self.process
        if process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
        process.join(STOP_TIMEOUT_S)
        self.inbox.close()
        if self.outbox is not None:
            self.outbox.close()


def _start(ctx: Any, what: str, target: Callable[..., None], stage: Stage,
           sends_to: bool) -> _Child:
    """Start the child ``what`` running ``target(to_parent[, from_parent], stage)``."""
    inbox, to_parent = ctx.Pipe(duplex=False)  # (receiving end, sending end)
    _widen(inbox)
    ends: list[Connection] = [to_parent]
    outbox = None
    if sends_to:
        from_parent, outbox = ctx.Pipe(duplex=False)
        _widen(outbox)
        ends.append(from_parent)
    process = ctx.Process(target=target, args=(*ends, stage), daemon=True,
                          name=f"metering-replay-{what}")
    # spawn runs the caller's main module again in the child (as ``__mp_main__``) unless
    # it has none: the stages need nothing of it, and a script without the ``if __name__
    # == "__main__"`` guard would replay again in each child. While the child is started,
    # ``__main__`` is an empty module (start() reads it synchronously, in this thread).
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main
    for end in ends:  # the child's ends live in the child only: its death closes the pipes
        end.close()
    return _Child(what, process, inbox, outbox)


def run_pipeline(stage: Stage, summary: ReplaySummary, progress: Progress) -> int:
    """Run the replay of ``stage`` (a :class:`storage.replay.Stage`) in three processes,
    filling ``summary`` and telling ``progress`` how far it is, as one process does. Returns
    the input bytes read. Raises :class:`InputError`, :class:`OutputError` (as one process
    would) or :class:`ReplayProcessError`."""
    options = stage.options
    output = options.output
    ctx = multiprocessing.get_context("spawn")
    children: list[_Child] = []
    try:
        reader = _start(ctx, "reader", _reader_main, stage, sends_to=False)
        children.append(reader)
        writer = _start(ctx, "writer", _writer_main, stage, sends_to=True)
        children.append(writer)
        bytes_read = _meter(stage, reader, writer, summary, progress)
        progress.writing()
        done = writer.recv(output)
        if done[0] != "done":
            raise writer.failed(done, output)
        _, files, written, intervals, hours = done
        summary.files_written.extend(files)
        summary.bytes_written += written
        summary.intervals.update(intervals)
        for name, h in hours.items():
            summary.hours[name] += h
        return bytes_read
    finally:
        for child in children:
            child.stop()


def _meter(stage: Stage, reader: _Child, writer: _Child, summary: ReplaySummary,
           progress: Progress) -> int:
    """The engine's part of :func:`run_pipeline`: the reader's records through the engine,
    its rows to the writer, then the writer told to close; returns the input bytes read.
    The engine's state (millions of objects) is freed when this returns, while the writer
    sorts and writes the last parts, not after."""
    output = stage.options.output
    meter = Engine(stage.policy)
    domain_of = meter.accounts.domain_of
    created: list[str] = []  # accounts created by records applied, domains not yet sent
    key = [""]
    regional = stage.regional

    def blocks() -> Iterator[list[Record]]:
        while True:
            message = reader.recv(output)
            tag = message[0]
            if tag == "b":
                _, fields, kinds, where, records, bytes_read = message
                values: list[Meterable] = list(
                    map(_new, map(_CLASSES.__getitem__, kinds), fields))
                yield records_of(values, list(map(_new, repeat(Source), where)))
                settle()
                summary.records = records
                progress.read(records, bytes_read)
            elif tag == "end":
                _merge_counters(summary, message[1])
                key[0] = message[2]
                return
            else:
                raise reader.failed(message, output)

    def batches() -> Iterator[list[Record]]:
        for batch in rebatch(blocks()):
            # drive() applies the batch, then emits its rows: the accounts it creates
            # are applied by then (their domains go with those rows)
            created.extend([record[0].account_id for record in batch
                            if type(record[0]) is AccountCreated])
            yield batch

    def domains() -> list[tuple[str, str | None]]:
        updates = [(account, domain_of(account)) for account in created]
        created.clear()
        return updates

    def emit(rows: list[UsageInterval]) -> None:
        rows = labelled(rows, regional)
        for first in range(0, len(rows), SEND_ROWS):  # the writer starts on the first
            chunk = rows[first:first + SEND_ROWS]     # while the next is encoded
            writer.send(("rows", domains(), len(chunk), encode_columns(chunk)), output)

    drive(meter, batches(), stage.options.until_ms, emit, progress.horizon)
    writer.send(("close", domains(), key[0]), output)
    add_outcomes(summary, meter)
    return progress.bytes_read


def _merge_counters(summary: ReplaySummary, counters: tuple[Any, ...]) -> None:
    """Add the reader's counters (see :func:`_reader_main`) to ``summary``."""
    records, blank_lines, categories, rejects, ignored, after_until = counters
    summary.records = records
    summary.blank_lines += blank_lines
    summary.categories.update(categories)
    summary.rejects.update(rejects)
    summary.ignored.update(ignored)
    summary.after_until += after_until

