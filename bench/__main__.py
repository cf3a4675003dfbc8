"""``python -m bench``: measure, print a table, and rewrite the results part of BENCHMARKS.md.

Scenarios (more land with the benchmark issue):

* ``replay``: ``metering replay`` over a simulated ~1-million-record trace, next to a bare
  "read lines + orjson.loads" loop over the same file, in the same run (the ratio is what
  travels between machines; absolute numbers drift on shared hosts).

The trace is generated once with ``metering simulate`` and cached under
``~/.cache/metering/bench/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import orjson

from metering.replay import ReplayOptions, run_replay
from metering.simulate.cloud import DAY, SimConfig
from metering.simulate.run import write_records

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metering" / "bench"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def trace(accounts: int, days: int, seed: int = 1) -> tuple[Path, SimConfig]:
    """The cached simulated trace (generated on first use)."""
    cfg = SimConfig(seed=seed, accounts=accounts, until_ms=SimConfig().start_ms + days * DAY)
    path = CACHE / f"trace-s{seed}-a{accounts}-d{days}.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"generating {path} (once) ...", file=sys.stderr, flush=True)
        summary, _ = write_records(cfg, path, progress=sys.stderr.isatty())
        print(f"  {summary.records:,} records at {summary.records_per_second:,.0f}/s",
              file=sys.stderr)
    return path, cfg


def bare_loop(path: Path) -> tuple[int, float]:
    """Read every line and parse it with orjson: the ceiling of any Python JSON consumer."""
    t0 = time.perf_counter()
    n = 0
    loads, error = orjson.loads, orjson.JSONDecodeError
    with path.open("rb") as fh:
        for line in fh:
            try:  # noqa: SIM105 (try/except is cheaper than suppress() in a hot loop)
                loads(line)
            except error:
                pass
            n += 1
    return n, time.perf_counter() - t0


def replay(path: Path, cfg: SimConfig, period: str) -> tuple[int, int, float]:
    out = Path(tempfile.mkdtemp(prefix="metering-bench-"))
    try:
        t0 = time.perf_counter()
        summary = run_replay(ReplayOptions(inputs=[str(path)], output=out,
                                           until_ms=cfg.until_ms, period=period,
                                           progress=False))
        seconds = time.perf_counter() - t0
        intervals = sum(summary.as_dict()["intervals_by_usage_type"].values())
        return summary.records, intervals, seconds
    finally:
        shutil.rmtree(out, ignore_errors=True)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in
                         ("orjson", "pyarrow", "faust-streaming", "rocksdict"))
    return (f"{os.cpu_count()} cores ({cpu}){mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; {versions}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--accounts", type=int, default=3000,
                   help="simulated accounts (3000 x 30 days ~ 1 million records)")
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = p.parse_args(argv)

    path, cfg = trace(args.accounts, args.days)
    n_bare, t_bare = min((bare_loop(path) for _ in range(2)), key=lambda r: r[1])  # warm
    rows = [("bare read + orjson.loads", n_bare, None, t_bare)]
    for period in ("day",):
        n, intervals, secs = replay(path, cfg, period)
        rows.append((f"metering replay --period {period}", n, intervals, secs))
    bare_rate = n_bare / t_bare
    lines = [
        "| scenario | records | intervals | seconds | records/s | % of bare loop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, n, intervals, secs in rows:
        rate = n / secs
        lines.append(f"| {name} | {n:,} | {'' if intervals is None else f'{intervals:,}'} | "
                     f"{secs:.1f} | {rate:,.0f} | {100 * rate / bare_rate:.1f} % |")
    table = "\n".join(lines)
    print(table)
    if args.no_write:
        return 0
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = "?"
    block = (f"{BEGIN}\n### Replay ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit "
             f"{commit or '?'})\n\nMachine: {machine()}\n\nTrace: `metering simulate "
             f"--accounts {args.accounts} --days {args.days} --seed 1` "
             f"({path.stat().st_size / 1e6:,.0f} MB), replayed with `--until` at its end.\n\n"
             f"{table}\n{END}")
    doc = ROOT / "BENCHMARKS.md"
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
