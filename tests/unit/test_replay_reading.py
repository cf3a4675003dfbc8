"""Replay reads its inputs in blocks (and hashes them on a thread); the records, their
coordinates, the blank-line count and the input digest are exactly those of reading the
files line by line, whatever the block size, line endings, blank lines, kcat envelopes,
lines longer than a block, a missing last newline or gzip."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import replay
from storage.replay import ReplaySummary, read_records


def reference(names: list[str], digest: Any, counters: ReplaySummary
              ) -> list[tuple[bytes, str, int, int, str | None]]:
    """Line by line, as replay read before blocks (the specification)."""
    out: list[tuple[bytes, str, int, int, str | None]] = []
    for name in names:
        label = os.path.basename(name)
        opener = gzip.open if name.endswith(".gz") else open
        digest.update(f"\0{label}\0".encode())
        with opener(name, "rb") as stream:
            for index, line in enumerate(stream):
                digest.update(line)
                body = line.rstrip(b"\r\n")
                if not body or body.isspace():
                    counters.blank_lines += 1
                    continue
                env = replay._envelope(body) if body[:9] == b'{"topic":' else None
                if env is None:
                    out.append((body, label, 0, index, None))
                else:
                    value, src, key = env
                    out.append((value, label, 0, index, key) if src is None
                               else (value, src.topic, src.partition, src.offset, key))
    return out


def envelope(value: str, partition: int | None, key: str | None) -> bytes:
    env: dict[str, Any] = {"topic": "cs", "payload": value, "key": key, "offset": 7}
    if partition is not None:
        env["partition"] = partition
    return orjson.dumps(env)


lines = st.one_of(
    st.sampled_from([b'{"old-state":"a"}', b"", b"  ", b"\t", b"\x0b", b"{}", b"[1,2]",
                     b'{"topic":"x"}', b"\r", b"x\ry"]),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.builds(envelope, st.text(max_size=10), st.none() | st.integers(0, 3),
              st.none() | st.text(max_size=4)),
)


@st.composite
def files(draw: st.DrawFn) -> bytes:
    body = [draw(lines) + draw(st.sampled_from([b"\n", b"\r\n", b"\r\r\n"]))
            for _ in range(draw(st.integers(0, 30)))]
    if draw(st.booleans()):
        body.append(draw(lines))  # no newline at the end
    if draw(st.booleans()):
        body.insert(draw(st.integers(0, len(body))), b"L" * draw(st.integers(1, 200)) + b"\n")
    return b"".join(body)


def compare(paths: list[str]) -> None:
    want_digest, got_digest = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
    want_counts, got_counts = ReplaySummary(), ReplaySummary()
    want = reference(paths, want_digest, want_counts)
    got = list(read_records(paths, got_digest, got_counts))
    assert got == want
    assert got_counts.blank_lines == want_counts.blank_lines
    assert got_digest.hexdigest() == want_digest.hexdigest()


@given(st.lists(files(), min_size=1, max_size=3), st.sampled_from([1, 2, 7, 64, 1 << 20]),
       st.booleans())
def test_blocks_give_the_records_of_reading_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, contents: list[bytes], block: int, gz: bool
) -> None:
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for n, content in enumerate(contents):
        path = folder / (f"in{n}.jsonl.gz" if gz else f"in{n}.jsonl")
        path.write_bytes(gzip.compress(content) if gz else content)
        paths.append(str(path))
    saved = replay.READ_BLOCK
    replay.READ_BLOCK = block
    try:
        compare(paths)
    finally:
        replay.READ_BLOCK = saved


def test_a_line_longer_than_many_blocks_is_one_record(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "READ_BLOCK", 1000)
    long = b'{"old-state":"' + b"x" * 250_000 + b'"}'
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"{}\n" + long + b"\n\n" + long)
    records = list(read_records([str(path)], hashlib.blake2b(), ReplaySummary()))
    assert [(r[0], r[3]) for r in records] == [(b"{}", 0), (long, 1), (long, 3)]
    compare([str(path)])


def test_the_digest_is_complete_when_reading_stops_early(tmp_path: Path) -> None:
    """The digest thread is joined when the reader is closed, not only when exhausted."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"{}\n" * 10)
    digest = hashlib.blake2b(digest_size=16)
    reader = replay.read_blocks([str(path)], digest)
    next(reader)
    reader.close()
    want = hashlib.blake2b(digest_size=16)
    want.update(b"\0in.jsonl\0" + b"{}\n" * 10)
    assert digest.hexdigest() == want.hexdigest()
