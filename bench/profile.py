"""Sampling profiles of missed targets with py-spy (attached to a running process).

``py-spy record --rate 100 --format raw --function --threads`` (attached with
``--pid P --duration S``, or running a command to its end) writes collapsed stacks;
:func:`summarize` turns them into the top functions by *self* samples (the frame on top of
the stack) and by *inclusive* samples (anywhere on the stack), as shares of the main
thread's samples in which it was running Python code (py-spy leaves out idle samples,
e.g. blocked in ``epoll``). Profiles run separately from the timed runs, so sampling never
slows a measured number.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import log

RATE_HZ = 100
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """Path of py-spy: next to this interpreter, else on PATH; None when unavailable."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


@dataclass
class Profile:
    """A summarized py-spy profile: sample counts and the top functions."""

    samples: int
    seconds: float
    self_top: list[tuple[str, int]]
    inclusive_top: list[tuple[str, int]]
    error: str = ""
    other: int = 0
    """Samples of threads other than the main thread (left out of the tables)."""
    by_package: list[tuple[str, int]] = field(default_factory=list)
    """Self samples grouped by the package of the frame on top of the stack."""

    def markdown(self, title: str, top: int = 10) -> list[str]:
        """Lines for BENCHMARKS.md: busy share, then top self and inclusive functions."""
        if self.error:
            return [f"*{title}*: no profile ({self.error})."]
        busy = self.samples / max(1.0, self.seconds * RATE_HZ)
        lines = [f"*{title}*: {self.samples:,} main-thread samples in {self.seconds:.0f} s at "
                 f"{RATE_HZ} Hz (it ran Python {100 * busy:.0f} % of the time; "
                 f"{self.other:,} samples of other threads or native-only left out). "
                 f"Shares are of the main-thread samples; inclusive: the project's, "
                 f"Faust's and aiokafka's frames below the entry chain.", "",
                 "Self time by package: " + ", ".join(
                     f"{name} {100 * n / self.samples:.0f} %" for name, n in self.by_package)
                 + ".",
                 "", "| self % | function (top of stack) | | inclusive % | function |",
                 "|---:|---|---|---:|---|"]
        rows = max(len(self.self_top[:top]), len(self.inclusive_top[:top]))
        for i in range(rows):
            s = self.self_top[i] if i < len(self.self_top[:top]) else None
            c = self.inclusive_top[i] if i < len(self.inclusive_top[:top]) else None
            lines.append(
                f"| {'' if s is None else f'{100 * s[1] / self.samples:.1f}'} | "
                f"{'' if s is None else f'`{s[0]}`'} | | "
                f"{'' if c is None else f'{100 * c[1] / self.samples:.1f}'} | "
                f"{'' if c is None else f'`{c[0]}`'} |")
        return lines


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = m.group("line")
    return f"{m.group('func')} ({path}{':' + line if line else ''})"


def summarize(raw: str, seconds: float, top: int = 12,
              inclusive_filter: tuple[str, ...] = ("metering/", "agents/", "bench/", "faust/",
                                                   "aiokafka/", "mode/")) -> Profile:
    """Aggregate py-spy raw (collapsed) output of the main thread.

    Profiles are recorded with ``--threads``; stacks of threads other than ``MainThread``
    (mode's worker thread, executors) and samples without a Python frame are only counted
    (``other``). ``inclusive_top`` keeps frames of the project and of faust/aiokafka/mode,
    leaving out the entry chain (frames on >= 95 % of the stacks, like ``main``), whose
    share says nothing.
    """
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    samples = other = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        head, _, rest = stack.partition(";")
        if not head.startswith("thread "):  # recorded without --threads
            head, rest = "thread (?): MainThread", stack
        if not rest:  # no Python frame (native code only)
            other += n
            continue
        if not head.endswith(": MainThread"):
            other += n
            continue
        frames = [_name(f) for f in rest.split(";")]
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            if any(tag in name for tag in inclusive_filter):
                incl[name] += n
    chain = [name for name, n in incl.items() if n >= 0.95 * samples]
    for name in chain:
        del incl[name]
    packages: Counter[str] = Counter()
    for name, n in own.items():
        packages[package(name)] += n
    return Profile(samples, seconds, own.most_common(top), incl.most_common(top), other=other,
                   by_package=packages.most_common())


def package(name: str) -> str:
    """Group of a frame name ``func (path:line)``: the project, faust+mode, aiokafka, the
    standard library (asyncio, selectors, logging, ...), or the third-party package."""
    m = _FRAME.match(name)
    path = m.group("file") if m else name
    if path.startswith("<string"):
        return "generated code (<string>: namedtuple, dataclass)"
    top = path.split("/", 1)[0].removesuffix(".py").lstrip("<")
    if top in ("metering", "agents", "bench"):
        return f"{top}/"
    if top in ("faust", "mode"):
        return "faust+mode"
    if top in sys.stdlib_module_names or top.startswith("frozen"):
        return "stdlib (asyncio, selectors, logging, ...)"
    return top


NO_PYSPY = "py-spy not installed (`.venv/bin/pip install py-spy`)"


def _failed(proc_output: str) -> str:
    why = proc_output.strip().splitlines()[-1:] or ["no output"]
    hint = " (py-spy needs ptrace: root or CAP_SYS_PTRACE)" if os.geteuid() != 0 else ""
    return f"py-spy failed: {why[0]}{hint}"


def record(pid: int, seconds: float, out: Path) -> Profile:
    """Sample the running ``pid`` for ``seconds``; a Profile with ``error`` set on failure."""
    exe = py_spy()
    if exe is None:
        return Profile(0, seconds, [], [], NO_PYSPY)
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds)),
           "--rate", str(RATE_HZ), "--format", "raw", "--function", "--threads", "-o", str(out)]
    log(f"py-spy: sampling pid {pid} for {seconds:.0f} s")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                              check=False)
    except subprocess.TimeoutExpired:
        return Profile(0, seconds, [], [], "py-spy timed out")
    if proc.returncode != 0 or not out.exists():
        return Profile(0, seconds, [], [], _failed(proc.stderr or proc.stdout))
    return summarize(out.read_text(errors="replace"), seconds)


def record_command(argv: list[str], out: Path, timeout_s: float) -> Profile:
    """Run ``argv`` under py-spy to its end (killed after ``timeout_s`` seconds)."""
    exe = py_spy()
    if exe is None:
        return Profile(0, 0.0, [], [], NO_PYSPY)
    cmd = [exe, "record", "--rate", str(RATE_HZ), "--format", "raw", "--function",
           "--threads", "-o", str(out), "--", *argv]
    log(f"py-spy: profiling {' '.join(argv[1:4])} ... to its end")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return Profile(0, timeout_s, [], [], f"did not finish within {timeout_s:.0f} s")
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    seconds = time.monotonic() - t0
    if proc.returncode != 0 or not out.exists():
        return Profile(0, seconds, [], [], _failed(output.decode(errors="replace")))
    return summarize(out.read_text(errors="replace"), seconds)
