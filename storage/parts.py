"""Part files of the dataset: how they are named and how each one is written.

One policy for every writer (``replay``, the archive, ``compact``):

* **Where.** ``root/usage_date=YYYY-MM-DD/<name>.parquet`` (:func:`partition_dir`).
* **Names.** Derived from what the file holds, so that writing the same content again
  replaces a file instead of adding one: :func:`replay_part_name` (digest of the input and
  options, part number), :func:`archive_part_name` (topic, partition, first and last source
  offset, zero-padded so names sort by offset), :data:`COMPACTED_NAME` (the one file of a
  compacted day). Names starting with ``.`` or ``_`` are never parts (:func:`is_part_name`):
  temporary files and bookkeeping directories use them, and pyarrow, pandas and DuckDB skip
  them too.
* **Writes.** :func:`write_atomic`: a hidden temporary file in the target directory,
  fsynced, then ``os.replace`` onto the final name, then the directory fsynced
  (:func:`fsync_dir`), so a reader never sees a half-written file and a completed write
  survives a power loss. :func:`publish` moves a file already written (fsynced) elsewhere on
  the same file system into place the same way.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from storage.errors import InputError
from storage.layout import COMPACTED_NAME as COMPACTED_NAME
from storage.layout import PARTITION_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa

_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ARCHIVE_PART: Final = re.compile(
    r"^(?P<topic>.+)-p(?P<partition>\d{4,})-(?P<first>\d{20})-(?P<last>\d{20})"
    r"\.(?:parquet|jsonl)$"
)

# ---------------------------------------------------------------------------- names


def partition_dir(root: Path, usage_date: str) -> Path:
    """``root/usage_date=YYYY-MM-DD``."""
    return root / f"{PARTITION_COLUMN}={usage_date}"


def replay_part_name(run_key: str, part: int) -> str:
    """Name of part ``part`` (0-based, per day) of a replay whose input digest is ``run_key``."""
    return f"replay-{run_key}-{part:05d}.parquet"


def archive_part_name(topic: str, partition: int, first: int, last: int) -> str:
    """Name of the archived rows of source offsets ``first..last`` (inclusive) of a partition."""
    return f"{topic}-p{partition:04d}-{first:020d}-{last:020d}.parquet"


def parse_archive_part_name(name: str) -> tuple[str, int, int, int] | None:
    """(topic, partition, first, last) of an archive part (or rejects) file name, else None."""
    m = _ARCHIVE_PART.match(name)
    if m is None:
        return None
    return m["topic"], int(m["partition"]), int(m["first"]), int(m["last"])


def is_part_name(name: str) -> bool:
    """True for the name of a part file (``*.parquet`` not starting with ``.`` or ``_``)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def list_days(root: Path) -> dict[str, Path]:
    """The ``usage_date`` partitions under ``root``: date -> directory (sorted by date)."""
    prefix = f"{PARTITION_COLUMN}="
    days: dict[str, Path] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"cannot read {root}: {exc.strerror or exc}") from exc
    for entry in entries:
        if entry.name.startswith(prefix) and entry.is_dir():
            date = entry.name[len(prefix) :]
            if _DATE.match(date):
                days[date] = Path(entry.path)
    return days


def part_files(day_dir: Path) -> list[Path]:
    """The part files of a day (:func:`is_part_name`), by name."""
    try:
        names = sorted(os.listdir(day_dir))
    except OSError as exc:
        raise InputError(f"cannot read {day_dir}: {exc.strerror or exc}") from exc
    return [day_dir / n for n in names if is_part_name(n) and (day_dir / n).is_file()]


# ---------------------------------------------------------------------------- writes


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or unlink inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write: Callable[[str], None]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path.stat().st_size


def write_atomic(table: pa.Table, path: Path) -> int:
    """Write ``table`` as Parquet (zstd) to ``path`` atomically and durably; return bytes.

    A hidden temporary file in the same directory is written, fsynced and renamed over
    ``path``, then the directory is fsynced. On failure the temporary file is removed and
    the exception propagates (an unwritten file is never reported as written).
    """
    import pyarrow.parquet as pq

    return _atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_bytes_atomic(path: Path, data: bytes) -> int:
    """Write ``data`` to ``path`` by the same policy as :func:`write_atomic`; return bytes."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return _atomic(path, write)


def publish(staged: Path, final: Path) -> int:
    """Move ``staged`` (written and fsynced, same file system) onto ``final`` atomically,
    replacing an earlier file of that name, and fsync ``final``'s directory; return bytes."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
    fsync_dir(final.parent)
    return final.stat().st_size


def staging_dir(root: Path, prefix: str) -> Path:
    """A private, hidden staging directory inside ``root`` (same file system, so
    :func:`publish` is a rename)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
