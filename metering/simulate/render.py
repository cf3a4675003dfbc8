"""Turn simulated records into bus bytes: timestamps, malformed extras, kcat envelopes.

* :class:`TimeFormatter`: ``yyyy-MM-dd HH:mm:ss Z`` in a fixed offset, fast (cached per day).
* :class:`Renderer`: the value bytes of a :class:`~metering.simulate.cloud.SimRecord`,
  Gson style, optionally with event times moved to "now" (live mode).
* :class:`Malformer`: a seeded stream of malformed extras, each with the reason the
  contract says it must be rejected with.
* :class:`KcatEnvelope`: kcat ``-J`` lines with the partitions Kafka's default partitioner
  (:mod:`metering.partitioning`) would pick.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

import orjson

from metering.partitioning import partition_for
from metering.simulate.cloud import SimRecord
from metering.simulate.gson import gson_dumps

DAY_MS = 86_400_000


class TimeFormatter:
    """Formats UTC epoch ms as CloudStack's ``eventDateTime`` in one fixed UTC offset."""

    def __init__(self, offset_minutes: int) -> None:
        self.offset_ms = offset_minutes * 60_000
        sign = "+" if offset_minutes >= 0 else "-"
        hh, mm = divmod(abs(offset_minutes), 60)
        self.suffix = f" {sign}{hh:02d}{mm:02d}"
        self._days: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        local = ms + self.offset_ms
        day, rest = divmod(local, DAY_MS)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat() + " "
            self._days[day] = prefix
        secs = rest // 1000
        h, rem = divmod(secs, 3600)
        m, s = divmod(rem, 60)
        return f"{prefix}{h:02d}:{m:02d}:{s:02d}{self.suffix}"


def parse_offset(text: str) -> int:
    """``+0530`` / ``-0700`` / ``+00:00`` -> minutes east of UTC; ValueError when invalid."""
    t = text.strip().replace(":", "")
    if len(t) != 5 or t[0] not in "+-" or not t[1:].isdigit():
        raise ValueError(f"not a UTC offset: {text!r} (expected e.g. +0530 or -0700)")
    hh, mm = int(t[1:3]), int(t[3:5])
    if hh > 14 or mm > 59:
        raise ValueError(f"UTC offset out of range: {text!r}")
    minutes = hh * 60 + mm
    return minutes if t[0] == "+" else -minutes


class Renderer:
    """Record -> value bytes. ``shift_ms`` moves every event time (live mode: to now)."""

    def __init__(self, offsets: Sequence[int]) -> None:
        self.formatters = [TimeFormatter(o) for o in offsets]

    def value(self, rec: SimRecord, shift_ms: int = 0) -> bytes:
        if rec.raw is not None:
            return rec.raw
        assert rec.value is not None
        if rec.event_ms is None:
            return gson_dumps(rec.value)
        value = dict(rec.value)
        value["eventDateTime"] = self.formatters[rec.server](rec.event_ms + shift_ms)
        return gson_dumps(value)


# --------------------------------------------------------------------------- malformed extras

_IMPOSSIBLE_DATES = (
    "2025-02-30 12:00:00 +0000",
    "2025-04-31 08:15:00 +0530",
    "2025-03-14 24:00:00 +0000",
    "2025-03-14 10:61:00 +0000",
    "2025-03-14 10:00:00 +2500",
    "14/03/2025 10:00:00",
)
_NON_OBJECTS = (b"[]", b"42", b'"VM.START"', b"null", b"true", b'[{"event":"VM.START"}]')


class Malformer:
    """Seeded malformed records derived from real ones, with the expected reject reason.

    Uses its own random stream, so the fraction of malformed records never changes the
    simulated cloud itself.
    """

    SHOWCASE_EVERY = 100
    """With a positive fraction, records 100, 200, 300 and 400 (or the next usage or action
    record) are followed by one malformed record of each kind, so every run shows all four."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.rng = random.Random(seed * 7919 + 17)
        self.fraction = fraction
        self.seen = 0
        self.showcase = [0, 1, 2, 3] if fraction > 0 else []

    def maybe(self, rec: SimRecord, rendered: bytes) -> tuple[bytes, str] | None:
        """None, or (malformed bytes, expected reason) to publish right after ``rec``."""
        if self.fraction <= 0:
            return None
        self.seen += 1
        rng = self.rng
        dated = rec.category in ("usage", "action") and rec.value is not None
        due = self.seen >= self.SHOWCASE_EVERY * (5 - len(self.showcase))
        if self.showcase and due and dated:
            kind = self.showcase.pop(0)
        elif rng.random() < self.fraction:
            kind = rng.randrange(4 if dated else 2)
        else:
            return None
        if kind == 0:
            cut = rng.randrange(1, max(2, len(rendered) - 1))
            return rendered[:cut], "invalid_json"
        if kind == 1:
            return rng.choice(_NON_OBJECTS), "not_an_object"
        assert rec.value is not None
        value: dict[str, Any] = dict(rec.value)
        if kind == 2:
            return gson_dumps(value), "missing_event_time"
        value["eventDateTime"] = rng.choice(_IMPOSSIBLE_DATES)
        return gson_dumps(value), "invalid_event_time"


class KcatEnvelope:
    """kcat ``-J`` lines with the partitions and offsets a real producer would give.

    Keyed records go where murmur2 sends them; null keys rotate over partitions (a stand-in
    for the sticky partitioner). Offsets count per partition from 0.
    """

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.offsets = [0] * partitions
        self._rr = 0
        self._cache: dict[str, int] = {}

    def place(self, key: str | None) -> tuple[int, int]:
        if key is None:
            p = self._rr
            self._rr = (self._rr + 1) % self.partitions
        else:
            cached = self._cache.get(key)
            if cached is None:
                if len(self._cache) > 1_000_000:
                    self._cache.clear()
                cached = partition_for(key.encode(), self.partitions)
                self._cache[key] = cached
            p = cached
        offset = self.offsets[p]
        self.offsets[p] = offset + 1
        return p, offset

    def line(self, key: str | None, value: bytes, ts_ms: int) -> tuple[bytes, int, int]:
        p, offset = self.place(key)
        envelope = {
            "topic": self.topic, "partition": p, "offset": offset, "tstype": "create",
            "ts": ts_ms, "broker": 0, "key": key,
            "payload": value.decode("utf-8", "replace"),
        }
        return orjson.dumps(envelope), p, offset
