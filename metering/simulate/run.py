"""Drive a simulated cloud to bytes: the record stream, files, live pacing, truth.

Progress is reported to a callback; drawing it is the command line's job.
"""

from __future__ import annotations

import gzip
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import orjson

from metering.eventtime import iso
from metering.simulate.cloud import Cloud, SimConfig, SimRecord
from metering.simulate.render import KcatEnvelope, Malformer, Renderer


class Emitted(NamedTuple):
    """One record as published: key, value bytes, publication time (UTC ms), category."""

    position: int
    """0-based position of the record in the output."""
    key: str | None
    value: bytes
    ts_ms: int
    category: str
    reject_reason: str | None
    """For malformed extras: the reason the contract rejects it with; else None."""


@dataclass
class SimSummary:
    """What a run produced (for the closing summary and ``--json``)."""

    records: int = 0
    bytes: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes,
                "categories": dict(sorted(self.categories.items())),
                "seconds": round(self.seconds, 3),
                "records_per_second": round(self.records_per_second, 1)}


def stream(
    cloud: Cloud, live_now: Callable[[], int] | None = None
) -> Iterator[Emitted]:
    """Every record of ``cloud`` in publication order, malformed extras included.

    ``live_now`` (UTC ms clock) moves each record's times to "now" as it is rendered.
    Malformed extras are also noted in ``cloud.truth.malformed``.
    """
    cfg = cloud.config
    renderer = Renderer(cfg.tz_offsets)
    malformer = Malformer(cfg.seed, cfg.malformed)
    index = 0
    rec: SimRecord
    for rec in cloud.records():
        shift = 0
        ts = rec.arrival_ms
        if live_now is not None:
            now = live_now()
            shift, ts = now - rec.arrival_ms, now
        value = renderer.value(rec, shift)
        yield Emitted(index, rec.key, value, ts, rec.category, None)
        index += 1
        bad = malformer.maybe(rec, value)
        if bad is not None:
            raw, reason = bad
            cloud.truth.malformed.append({"index": index, "reason": reason, "key": rec.key,
                                          "raw": raw.decode("utf-8", "replace")})
            yield Emitted(index, rec.key, raw, ts, "malformed", reason)
            index += 1


ProgressCallback = Callable[[int, int, bool], None]
"""``(records written, simulated time reached in UTC ms, done)``."""


def _no_progress(_records: int, _sim_ms: int, _done: bool) -> None:
    pass


def open_output(path: Path, gz: bool | None = None) -> IO[bytes]:
    """A binary writer for ``path`` (gzip when ``gz``, by default when it ends with ``.gz``)."""
    if path.suffix == ".gz" if gz is None else gz:
        return cast(IO[bytes], gzip.open(path, "wb", compresslevel=5))
    return path.open("wb", buffering=1 << 20)


class RecordWriter:
    """Writes emitted records to a file (JSONL values or kcat ``-J`` envelopes) atomically.

    Lines go to a hidden temporary file beside ``path``; :meth:`commit` renames it into
    place, :meth:`abort` removes it. ``path`` None writes nothing (counts only).
    """

    def __init__(self, path: Path | None, fmt: str = "jsonl", topic: str = "cs",
                 partitions: int = 4, flush_each: bool = False) -> None:
        self.path = path
        self.kcat = KcatEnvelope(topic, partitions) if fmt == "kcat" else None
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}") if path else None
        self.fh = open_output(self.tmp, path.suffix == ".gz") if self.tmp and path else None
        self.flush_each = flush_each
        self.summary = SimSummary()

    def write(self, em: Emitted, malformed: list[dict[str, Any]] | None = None) -> None:
        """Write one record; for a malformed extra, note its partition/offset in ``malformed``."""
        if self.fh is not None:
            if self.kcat is not None:
                line, p, offset = self.kcat.line(em.key, em.value, em.ts_ms)
                if em.reject_reason is not None and malformed:
                    malformed[-1].update(partition=p, offset=offset)
            else:
                line = em.value
            self.fh.write(line + b"\n")
            if self.flush_each:
                self.fh.flush()
            self.summary.bytes += len(line) + 1
        self.summary.records += 1
        self.summary.categories[em.category] += 1

    def commit(self) -> None:
        if self.fh is not None and self.tmp is not None and self.path is not None:
            self.fh.close()
            self.tmp.replace(self.path)
            self.fh = None

    def abort(self) -> None:
        if self.fh is not None and self.tmp is not None:
            self.fh.close()
            self.tmp.unlink(missing_ok=True)
            self.fh = None


def write_records(
    config: SimConfig,
    output: Path | None,
    fmt: str = "jsonl",
    topic: str = "cs",
    partitions: int = 4,
    on_progress: ProgressCallback | None = None,
) -> tuple[SimSummary, Cloud]:
    """Simulate ``config`` into ``output`` (JSONL values or kcat envelopes), atomically.

    ``on_progress(records, sim_ms, done)`` (if given) is called every 1024 records with the
    records written and the simulated time (UTC ms) reached, and once more with ``done``.
    Returns the summary and the finished cloud (whose ``truth`` is complete).
    """
    cloud = Cloud(config)
    show = on_progress or _no_progress
    writer = RecordWriter(output, fmt, topic, partitions)
    t0 = time.monotonic()
    try:
        for em in stream(cloud):
            writer.write(em, cloud.truth.malformed)
            if em.position & 0x3FF == 0:
                show(writer.summary.records, em.ts_ms, False)
        writer.commit()
    finally:
        writer.abort()
    writer.summary.seconds = time.monotonic() - t0
    show(writer.summary.records, config.until_ms, True)
    return writer.summary, cloud


class Pacer:
    """Real-time pacing of a live run: when each record is due, in seconds of ``clock``.

    * rate only (``rate`` N, no ``speed``): record ``n`` is due ``n / rate`` seconds after
      the start (event times are then stamped "now" by the caller);
    * compressed clock (``speed`` K): a record whose simulated arrival is ``sim_ms`` is due
      ``(sim_ms - start_ms) / 1000 / K`` seconds after the start, so K simulated seconds
      pass per real second and the simulated durations between records are kept;
    * both: the compressed clock, but never more than ``rate`` records per second (a record
      is due at least ``1 / rate`` s after the previous one); when the simulated cloud is
      denser than that, its clock falls behind (:meth:`sim_behind_s` tells by how much).
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic,
                 speed: float | None = None, start_ms: int = 0) -> None:
        if rate is None and speed is None:
            raise ValueError("give a rate, a speed or both")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive")
        self.rate = rate
        self.speed = speed
        self.start_ms = start_ms
        self.clock = clock
        self.t0 = clock()
        self.count = 0
        self.due = self.t0
        self.sim_ms = start_ms
        """Simulated arrival (UTC ms) of the last record counted."""

    def delay(self, sim_ms: int | None = None) -> float:
        """Count one record (simulated arrival ``sim_ms``, UTC ms; needed with a speed);
        return the seconds to wait before sending it (0 when behind)."""
        self.count += 1
        due = self.due
        if self.rate is not None:
            due += 1.0 / self.rate
        if self.speed is not None:
            if sim_ms is None:
                raise ValueError("a compressed clock needs each record's simulated time")
            self.sim_ms = sim_ms
            due = max(due, self.sim_due(sim_ms))
        self.due = due
        return max(0.0, due - self.clock())

    def sim_due(self, sim_ms: int) -> float:
        """When (``clock`` seconds) the compressed clock reaches ``sim_ms`` (UTC ms)."""
        assert self.speed is not None
        return self.t0 + (sim_ms - self.start_ms) / 1000.0 / self.speed

    def sim_behind_s(self) -> float:
        """Real seconds the last record is due after its compressed-clock time (rate cap)."""
        if self.speed is None:
            return 0.0
        return max(0.0, self.due - self.sim_due(self.sim_ms))

    def elapsed(self) -> float:
        return self.clock() - self.t0


_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def relative_instant(text: str, now_ms: int) -> int | None:
    """``now``, ``now-12h``, ``now+30m`` (units s, m, h, d) -> UTC ms, whole seconds, relative
    to ``now_ms`` (the caller's wall clock, UTC ms); None when ``text`` is not of that form.
    Raises ValueError for a malformed ``now...`` expression."""
    t = text.strip().lower()
    if not t.startswith("now"):
        return None
    now_s = now_ms - now_ms % 1000
    rest = t[3:].replace(" ", "")
    if not rest:
        return now_s
    sign, body = rest[0], rest[1:]
    unit = body[-1:] if body[-1:] in _UNITS else "s"
    number = body[:-1] if body[-1:] in _UNITS else body
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if sign not in "+-" or not amount >= 0 or amount != amount or amount > 1e7:
        raise ValueError(f"not an instant relative to now: {text!r} (e.g. now, now-12h)")
    delta = int(amount * _UNITS[unit]) // 1000 * 1000
    return now_s + delta if sign == "+" else now_s - delta


def truth_document(config: SimConfig, cloud: Cloud, summary: SimSummary) -> dict[str, Any]:
    """The ``--truth`` JSON document of a finished run."""
    offsets = [f"{'+' if o >= 0 else '-'}{abs(o) // 60:02d}{abs(o) % 60:02d}"
               for o in config.tz_offsets]
    meta = {
        "generator": "metering simulate", "seed": config.seed, "accounts": config.accounts,
        "start": iso(config.start_ms), "start_ms": config.start_ms,
        "tz_offsets": offsets, "malformed_fraction": config.malformed,
        "records": summary.records, "categories": dict(sorted(summary.categories.items())),
    }
    return cloud.truth.to_json(meta)


def write_truth(path: Path, doc: dict[str, Any]) -> None:
    """Write the truth document atomically (pretty JSON, sorted rows)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    tmp.replace(path)
