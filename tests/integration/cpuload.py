"""CPU saturation for the reliability tests (``METERING_CPU_LOAD=N``).

``make test-reliability`` runs the reliability suite with every core busy, so the crash and
rebalance tests also pass when the worker, the broker and the test compete for the CPU (the
intermittent loss of issue 18 showed only then). :func:`cpu_load` starts ``N`` CPU hogs for
the test session: ``stress-ng --cpu N`` when it is found (``$METERING_STRESS_NG``, ``PATH``,
or the copy ``make stress-ng`` puts in ``~/.cache/metering/stress-ng/``), otherwise ``N``
Python busy-loop processes. Each hog runs in a process group of its own and is killed (by
its id) when the session ends, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "METERING_CPU_LOAD"
"""Number of CPU hogs to run (0 or unset: none; ``nproc``: one per core)."""


def stress_ng() -> str | None:
    """Path of a stress-ng that runs (``--version`` exits 0), or None."""
    cache = Path(os.environ.get("METERING_CACHE_DIR", Path.home() / ".cache" / "metering"))
    for candidate in (os.environ.get("METERING_STRESS_NG"), shutil.which("stress-ng"),
                      str(cache / "stress-ng" / "stress-ng")):
        if candidate and os.access(candidate, os.X_OK) and subprocess.run(
                [candidate, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                timeout=30, check=False).returncode == 0:
            return candidate
    return None


def requested() -> int:
    """Hogs asked for by ``METERING_CPU_LOAD`` (``nproc`` or ``all``: one per core)."""
    value = os.environ.get(ENV, "").strip()
    if value in ("nproc", "all"):
        return os.cpu_count() or 1
    try:
        return max(0, int(value or 0))
    except ValueError:
        raise SystemExit(f"{ENV}={value!r}: give a number of CPU hogs (or 'nproc')") from None


@contextmanager
def cpu_load(n: int) -> Iterator[str]:
    """Keep ``n`` CPUs busy while the block runs; yields a description of the load."""
    if n <= 0:
        yield "none"
        return
    tool = stress_ng()
    if tool is not None:
        commands = [[tool, "--cpu", str(n), "--cpu-method", "matrixprod", "--quiet"]]
        what = f"stress-ng --cpu {n} ({tool})"
    else:
        commands = [[sys.executable, "-c", "while True: pass"]] * n
        what = f"{n} busy-loop processes (stress-ng not found: make stress-ng)"
    hogs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            for cmd in commands]
    try:
        yield what
    finally:
        for hog in hogs:
            if hog.poll() is None:
                os.killpg(hog.pid, signal.SIGKILL)  # stress-ng forks one worker per CPU
            hog.wait(timeout=30)
