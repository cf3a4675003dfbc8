"""``metering demo``: the whole pipeline, live, on the embedded local Kafka broker.

1. starts a local single-node KRaft broker (Maven Central jars; or uses ``--broker``),
2. creates the input topic,
3. starts ``metering worker`` (a subprocess, its own RocksDB data directory) and
   ``metering archive`` (the usage topic -> the Parquet dataset ``<data-dir>/archive``),
4. feeds it a simulated cloud on a compressed clock (``metering simulate --to-kafka --speed``,
   default 720: one simulated hour per 5 real seconds). The simulated span ends now: it
   starts ``duration x speed`` ago (``--history``, 7 days without ``--duration``), so every
   event time lies in the past, as in a real cloud, and the worker needs no
   ``max_clock_skew`` beyond its default; VMs run for simulated hours and hourly periods
   complete every few seconds,
5. prints a live summary every few seconds: records in and records/s, consumer lag, the
   simulated clock, intervals and usage hours by usage type and by top accounts (read back
   from the ``usage`` topic), period cuts as they land, rejects by reason,
6. stops everything cleanly on Ctrl-C (or after ``--duration`` seconds), prints the archived
   usage hours per usage type and per account (``metering report``) and writes a chart of the
   usage hours per usage type per simulated hour (``<data-dir>/usage-by-type.png``); the
   data directory stays, so the dataset can be explored afterwards.

Every wait has a deadline; a failure says which part failed and where its log is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from agents.errors import DemoError as DemoError
from agents.kafkaclient import client_options

CHART_NAME = "usage-by-type.png"
CHART_TYPES = 9
"""Usage types drawn one by one; the others are summed as "other types"."""
REPORT_TOP = 10
DEFAULT_HISTORY_H = 168
"""Simulated hours replayed by a demo without --duration (14 min at the default speed)."""
DRAIN_S = 20.0
"""After --duration: the most seconds to wait for the worker to catch up."""
DRAIN_QUIET_S = 3.0
"""... and it has caught up once its lag is 0 and no usage came for this long."""
DEMO_LATENESS_S = 60
"""Lateness (event-time seconds): the simulator's disorder is a few simulated seconds."""
DEMO_IDLE_ADVANCE_S = 5
"""Idle advance (wall-clock seconds): a lane without records moves on after this."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it ran and stopped cleanly, 1 when a part failed."""
    from agents.localkafka import BrokerError, LocalKafka, free_port
    from agents.simulate import ensure_topic

    broker: LocalKafka | None = None
    data_dir: Path = args.data_dir
    problems = _check_args(args)
    if problems:
        for problem in problems:
            _log(f"metering demo: {problem}")
        return 2
    _fresh_dir(data_dir)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if args.broker:
            bootstrap = args.broker
        else:
            _log("starting the local Kafka broker (first run downloads the jars with mvn) ...")
            broker = LocalKafka()
            try:
                broker.start(_log)
            except BrokerError as exc:
                raise DemoError(f"the Kafka broker did not start: {exc}") from exc
            bootstrap = broker.bootstrap
            _log(f"broker ready at {bootstrap} in {broker.startup_seconds:.1f} s")
        port = args.web_port if _port_free(args.web_port) else free_port()
        env = _worker_env(bootstrap, data_dir, port)
        asyncio.run(asyncio.wait_for(ensure_topic(bootstrap, env["METERING_INPUT_TOPIC"], 4), 60))
        worker_log = data_dir / "worker.log"
        procs.append(_spawn([sys.executable, "-m", "agents", "worker", "--loglevel", "info"],
                            env, worker_log))
        _wait_http(f"http://127.0.0.1:{port}/healthz", procs[0], worker_log, deadline_s=120)
        _log(f"worker ready: http://127.0.0.1:{port}/healthz  (log: {worker_log})")
        archive_log = data_dir / "archive.log"
        env["METERING_ARCHIVE_WEB_PORT"] = str(archive_port := free_port())
        procs.append(_spawn([sys.executable, "-m", "agents", "archive", "--loglevel", "info"],
                            env, archive_log))
        _wait_http(f"http://127.0.0.1:{archive_port}/healthz", procs[1], archive_log,
                   deadline_s=120)
        _log(f"archive ready: Parquet under {env['METERING_ARCHIVE_DIR']}  (log: {archive_log})")
        sim_log = data_dir / "simulate.log"
        clock = SimClock.ending_now(time.time_ns() // 1_000_000, _history_ms(args),
                                    args.speed)
        procs.append(_spawn(
            [sys.executable, "-m", "agents", "simulate", "--to-kafka", bootstrap,
             "--topic", env["METERING_INPUT_TOPIC"], "--speed", str(args.speed),
             "--rate", str(args.rate), "--start", _iso(clock.start_ms),
             "--until", _iso(clock.until_ms), "--accounts", str(args.accounts),
             "--seed", "1", "--progress"],
            dict(os.environ), sim_log))
        clock.started = time.monotonic()
        _log(f"simulator feeding topic {env['METERING_INPUT_TOPIC']} (log: {sim_log})")
        _print_where(bootstrap, env, port, archive_port, data_dir)
        _print_clock(clock, env)
        asyncio.run(_monitor(bootstrap, env, procs, args, clock))
        return 0
    except DemoError as exc:
        _log(f"metering demo: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            _log("stopping: simulator, worker, broker ...")
            for proc in reversed(procs):
                _stop(proc)
            if broker is not None:
                broker.stop()
            _log("demo stopped")
            _report(data_dir / "archive", data_dir / CHART_NAME)


def _worker_env(bootstrap: str, data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        METERING_BROKER=bootstrap, METERING_APP_ID="metering-demo", METERING_INPUT_TOPIC="cs",
        METERING_USAGE_TOPIC="usage", METERING_REJECTS_TOPIC="metering.rejected",
        METERING_EVENTS_TOPIC="metering-demo.events", METERING_DATA_DIR=str(data_dir / "state"),
        METERING_WEB_PORT=str(port), METERING_IDLE_ADVANCE=str(DEMO_IDLE_ADVANCE_S),
        METERING_LATENESS=str(DEMO_LATENESS_S),
        METERING_SESSION_TIMEOUT="10", METERING_ARCHIVE_DIR=str(data_dir / "archive"),
        METERING_ARCHIVE_FLUSH_SECONDS="5",
    )
    return env


def _fresh_dir(data_dir: Path) -> None:
    """Empty the demo's data directory (state of an earlier demo belongs to another broker);
    refuse directories that do not look like one of ours."""
    if data_dir.exists() and any(data_dir.iterdir()):
        ours = {"state", "archive", "worker.log", "archive.log", "simulate.log", CHART_NAME,
                f".{CHART_NAME}.tmp"}
        foreign = sorted(p.name for p in data_dir.iterdir() if p.name not in ours)
        if foreign:
            raise SystemExit(f"metering demo: {data_dir} holds files the demo did not write "
                             f"({', '.join(foreign[:5])}); choose another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def _report(dataset: Path, chart: Path) -> None:
    """Print the archived usage hours per usage type and per account (as ``metering report``
    computes them: each ``interval_id`` once) and write the chart."""
    from agents.cli.formats import report_table
    from storage.errors import InputError
    from storage.report import usage_report

    if not any(dataset.glob("usage_date=*/*.parquet")):
        _log(f"no usage archived under {dataset} yet (let the demo run longer)")
        return
    try:
        by_type = usage_report(dataset, ["usage_type"])
        by_account = usage_report(dataset, ["account"])
    except (InputError, ValueError) as exc:
        _log(f"cannot read the archive {dataset}: {exc}")
        return
    print(f"\nArchived usage ({dataset}); explore it with:\n"
          f"  metering report {dataset} --by account --by usage_type\n"
          f"  METERING_DATASET={dataset.resolve()} jupyter lab notebooks/usage-analysis.ipynb\n"
          f"\nArchived usage per usage type\n{report_table(by_type)}", flush=True)
    print(f"Archived usage per account (top {REPORT_TOP} of {len(by_account.rows):,} by hours)\n"
          + _top_table(by_account.rows, by_account.total_intervals, by_account.total_hours),
          flush=True)
    try:
        hours, periods = write_chart(dataset, chart)
    except ImportError:
        _log("no chart: matplotlib is missing (pip install -e '.[dev]' installs it)")
        return
    except OSError as exc:
        _log(f"no chart: cannot write {chart}: {exc}")
        return
    if periods:
        print(f"Chart: usage hours per usage type per simulated hour ({periods} hours, "
              f"{hours:,.1f} h): {chart.resolve()}", flush=True)
    else:
        _log("no chart: no archived usage yet")


def _top_table(rows: list[dict[str, Any]], intervals: int, hours: float) -> str:
    """The ``REPORT_TOP`` accounts with the most hours, and a total row over all accounts."""
    top = sorted(rows, key=lambda r: (-r["hours"], str(r["account_id"])))[:REPORT_TOP]
    body = [[str(r["account_id"]), f"{r['intervals']:,}", f"{r['hours']:,.3f}"] for r in top]
    rest = len(rows) - len(top)
    header = ["account_id", "intervals", "hours"]
    total = ["TOTAL", f"{intervals:,}", f"{hours:,.3f}"]
    widths = [max(len(row[i]) for row in [header, *body, total]) for i in range(3)]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), cells[1].rjust(widths[1]),
                          cells[2].rjust(widths[2])]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    more = [f"... and {rest:,} more accounts"] if rest > 0 else []
    return "\n".join([line(header), rule, *(line(b) for b in body), *more, rule,
                      line(total)]) + "\n"


def write_chart(dataset: Path, path: Path) -> tuple[float, int]:
    """Write a PNG of the usage hours per usage type per period (simulated hour, UTC) of the
    archived intervals (each ``interval_id`` once), as stacked bars; return (total hours,
    number of periods). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import datetime as dt

    import matplotlib.pyplot as plt
    import pyarrow.dataset as ds

    table = ds.dataset(str(dataset), format="parquet", partitioning="hive").to_table(
        columns=["interval_id", "period_start", "usage_type_name", "duration_ms",
                 "close_reason"])
    frame = table.to_pandas().drop_duplicates("interval_id")
    if frame.empty:
        return 0.0, 0
    frame["hours"] = frame["duration_ms"] / 3_600_000
    pivot = frame.pivot_table(index="period_start", columns="usage_type_name",
                              values="hours", aggfunc="sum", fill_value=0.0).sort_index()
    order = pivot.sum().sort_values(ascending=False)
    keep = list(order.index[:CHART_TYPES])
    if len(order) > CHART_TYPES:
        pivot["other types"] = pivot[list(order.index[CHART_TYPES:])].sum(axis=1)
        keep.append("other types")
    pivot = pivot[keep]
    cut = set(frame.loc[frame["close_reason"] == "period", "period_start"])
    complete = [start in cut for start in pivot.index]
    import pandas as pd

    index = pivot.index  # period_start: a UTC timestamp column (or epoch ms)
    stamps = (pd.to_datetime(index, unit="ms", utc=True) if pd.api.types.is_integer_dtype(index)
              else pd.to_datetime(index, utc=True))
    starts = [t.to_pydatetime() for t in stamps]
    labels = [t.strftime("%H:00") if i and t.hour else t.strftime("%b %d\n%H:00")
              for i, t in enumerate(starts)]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(pivot) + 4), 5.5), dpi=110)
    bottom = [0.0] * len(pivot)
    palette = plt.get_cmap("tab10")  # ten colours; palette(i) is the i-th (RGBA)
    for i, name in enumerate(pivot.columns):
        values = list(pivot[name])
        bars = ax.bar(range(len(pivot)), values, bottom=bottom, width=0.85, label=name,
                      color=palette(i % palette.N))
        for bar, done in zip(bars, complete, strict=True):
            if not done:  # not cut yet: only the intervals an event closed
                bar.set_alpha(0.45)
                bar.set_hatch("//")
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    step = max(1, len(labels) // 24)
    ax.set_xticks(range(0, len(labels), step), [labels[i] for i in range(0, len(labels), step)],
                  fontsize=8)
    ax.set_xlabel("simulated hour (period start, UTC)")
    ax.set_ylabel("usage hours in the period (h)")
    total = float(frame["hours"].sum())
    ax.set_title(f"Usage hours per usage type per hour: {len(frame):,} intervals, "
                 f"{total:,.1f} h ({starts[0]:%Y-%m-%d %H:%M} to "
                 f"{starts[-1] + dt.timedelta(hours=1):%Y-%m-%d %H:%M} UTC)", fontsize=10)
    ax.legend(title="usage type", fontsize=8, title_fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    if not all(complete):
        ax.text(0.0, -0.2, "Hatched: an hour not cut yet (it holds only the intervals an event "
                "closed; its period cut comes once the watermark passes its end).",
                transform=ax.transAxes, fontsize=7, color="dimgray")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return total, len(pivot)


def _print_where(bootstrap: str, env: dict[str, str], port: int, archive_port: int,
                 data_dir: Path) -> None:
    print(f"""
Where to look
  broker            {bootstrap}
  input topic       {env['METERING_INPUT_TOPIC']}   (CloudStack event-bus records)
  usage topic       {env['METERING_USAGE_TOPIC']}   (usage intervals, JSON, key = account_id)
  rejects topic     {env['METERING_REJECTS_TOPIC']}
  worker health     http://127.0.0.1:{port}/healthz   and /readyz (caught up?)
  worker metrics    http://127.0.0.1:{port}/metrics   (Prometheus text format)
  archive (Parquet) {env['METERING_ARCHIVE_DIR']}
  archive metrics   http://127.0.0.1:{archive_port}/metrics
  worker state/logs {data_dir}
Press Ctrl-C to stop.
""", flush=True)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child in its own session that Linux kills when the demo dies (even kill -9)."""
    from agents.localkafka import _pdeathsig

    with log.open("wb") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                preexec_fn=_pdeathsig)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DemoError(f"the worker exited with code {proc.returncode}; its log "
                            f"({log}) ends with:\n{_tail(log)}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 (a fixed local URL)
            return
        except OSError:
            time.sleep(0.3)  # poll with a deadline
    raise DemoError(f"the worker did not answer {url} within {deadline_s:.0f} s; "
                    f"see {log}:\n{_tail(log)}")


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class SimClock:
    """The simulator's compressed clock as the demo sees it (UTC ms; ``started`` monotonic s).

    The simulated span ``[start_ms, until_ms)`` ends at the wall clock when the simulator
    starts, so the simulator never stamps an event time in the future; ``speed`` simulated
    seconds pass per real second.
    """

    def __init__(self, start_ms: int, until_ms: int, speed: float) -> None:
        self.start_ms, self.until_ms, self.speed = start_ms, until_ms, speed
        self.started = time.monotonic()

    @classmethod
    def ending_now(cls, now_ms: int, history_ms: int, speed: float) -> SimClock:
        """The span of ``history_ms`` ending at ``now_ms`` (whole seconds)."""
        until = now_ms - now_ms % 1000
        return cls(until - history_ms, until, speed)

    def now_ms(self, monotonic_s: float) -> int:
        """Where the simulated clock is at ``monotonic_s`` (at most ``until_ms``); the rate
        cap may hold the simulator behind it."""
        at = self.start_ms + int((monotonic_s - self.started) * self.speed * 1000)
        return min(at, self.until_ms)


def _history_ms(args: argparse.Namespace) -> int:
    if args.history is not None:
        return int(args.history * 3_600_000)
    if args.duration:
        return int(args.duration * args.speed * 1000)
    return DEFAULT_HISTORY_H * 3_600_000


def _check_args(args: argparse.Namespace) -> list[str]:
    problems = []
    if not args.speed > 0:
        problems.append("--speed must be positive")
    if args.history is not None and not args.history > 0:
        problems.append("--history must be positive")
    if not args.rate > 0:
        problems.append("--rate must be positive")
    if args.duration < 0:
        problems.append("--duration must be >= 0")
    if args.top < 0:
        problems.append("--top must be >= 0")
    return problems


def _iso(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _hm(ms: int) -> str:
    """``YYYY-MM-DD HH:MM`` UTC."""
    return _iso(ms)[:16].replace("T", " ")


def _print_clock(clock: SimClock, env: dict[str, str]) -> None:
    span_h = (clock.until_ms - clock.start_ms) / 3_600_000
    real_s = (clock.until_ms - clock.start_ms) / 1000 / clock.speed
    skew = env.get("METERING_MAX_CLOCK_SKEW", "300")
    print("\n".join([
        "Clock (compressed)",
        f"  The simulated cloud runs {span_h:,.1f} simulated hours, {_hm(clock.start_ms)} to "
        f"{_hm(clock.until_ms)} UTC (now),",
        f"  at {clock.speed:,.0f}x: one simulated hour per {3600 / clock.speed:,.1f} real s, "
        f"all of it in {real_s:,.0f} s.",
        "  Event times are the simulated ones (a VM that runs 3 h has events 3 h apart) and "
        "never",
        f"  lie in the future, so the worker keeps max_clock_skew at {skew} s. Worker "
        "settings for this clock:",
        f"  lateness {DEMO_LATENESS_S} s of event time (= {DEMO_LATENESS_S / clock.speed:.2f} "
        "real s: an hour is cut as soon as",
        f"  the watermark passes it); idle advance after {DEMO_IDLE_ADVANCE_S} real s "
        "without records, at the wall clock's",
        "  pace (1x): once the simulator has finished, the open hour waits.",
        "",
    ]), flush=True)


class Tally:
    """What the summary shows, accumulated from the usage and rejects topics (each
    ``interval_id`` once)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.intervals: Counter[str] = Counter()
        self.hours: Counter[str] = Counter()
        self.account_intervals: Counter[str] = Counter()
        self.account_hours: Counter[str] = Counter()
        self.final = 0
        self.rejects: Counter[str] = Counter()
        self.cut_intervals: Counter[int] = Counter()
        self.cut_hours: Counter[int] = Counter()
        """Period cuts (``close_reason`` period) per period start (UTC ms)."""
        self.shown_cuts: set[int] = set()
        self.newest_end = 0

    def add_usage(self, value: bytes) -> None:
        row = orjson.loads(value)
        if row["interval_id"] in self.seen:
            return  # a repeat (redelivery): consumers deduplicate by interval_id
        self.seen.add(row["interval_id"])
        name, hours = row["usage_type_name"], row["raw_usage_hours"]
        self.intervals[name] += 1
        self.hours[name] += hours
        self.account_intervals[row["account_id"]] += 1
        self.account_hours[row["account_id"]] += hours
        self.final += bool(row["final"])
        self.newest_end = max(self.newest_end, int(row["end"]))
        if row["close_reason"] == "period":
            self.cut_intervals[int(row["period_start"])] += 1
            self.cut_hours[int(row["period_start"])] += hours

    def add_reject(self, value: bytes) -> None:
        self.rejects[orjson.loads(value)["reason"]] += 1

    def new_cuts(self) -> list[int]:
        """Period starts (UTC ms) whose cut landed since the last call, oldest first."""
        fresh = sorted(set(self.cut_intervals) - self.shown_cuts)
        self.shown_cuts.update(fresh)
        return fresh


async def _monitor(bootstrap: str, env: dict[str, str], procs: list[subprocess.Popen[bytes]],
                   args: argparse.Namespace, clock: SimClock) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    usage_topic, rejects_topic = env["METERING_USAGE_TOPIC"], env["METERING_REJECTS_TOPIC"]
    input_topic, group = env["METERING_INPUT_TOPIC"], env["METERING_APP_ID"]
    consumer = AIOKafkaConsumer(**client_options(bootstrap), group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                metadata_max_age_ms=2000)
    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await consumer.start()
    await admin.start()
    consumer.subscribe(pattern=f"^({usage_topic}|{rejects_topic})$".replace(".", r"\."))
    tally = Tally()

    def _parts() -> list[Any]:
        return [TopicPartition(input_topic, p)
                for p in (consumer.partitions_for_topic(input_topic) or {0, 1, 2, 3})]

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    next_print = started + args.every
    last_in, last_t, lag = 0, started, None
    sim_done = False
    drain_until: float | None = None
    last_usage = next_lag = started
    try:
        while not stop.is_set():
            if args.duration and drain_until is None \
                    and time.monotonic() - started >= args.duration:
                if len(procs) > 2 and procs[2].poll() is None:
                    sim_done = True
                    _stop(procs[2])  # SIGTERM: it flushes what it produced and exits
                drain_until = time.monotonic() + DRAIN_S
                print(f"   {args.duration:.0f} s passed: simulator stopped, letting the worker "
                      f"catch up (at most {DRAIN_S:.0f} s) ...", flush=True)
            if drain_until is not None:
                now = time.monotonic()
                if now >= drain_until or (lag == 0 and now - last_usage >= DRAIN_QUIET_S):
                    break
            for name, proc in zip(("worker", "archive", "simulator"), procs, strict=False):
                code = proc.poll()
                if code == 0 and name == "simulator":
                    if not sim_done:
                        sim_done = True
                        print(f"   simulator finished: the simulated clock reached "
                              f"{_hm(clock.until_ms)} UTC (now); the worker keeps running "
                              "(Ctrl-C stops the demo)", flush=True)
                elif code is not None:
                    raise DemoError(f"the {name} exited with code {code}; "
                                    "see its log above the summary")
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for tp, msgs in batch.items():
                add = tally.add_usage if tp.topic == usage_topic else tally.add_reject
                for m in msgs:
                    add(m.value)
            now = time.monotonic()
            if batch:
                last_usage = now
            if drain_until is not None and now >= next_lag:  # caught up yet?
                next_lag = now + 1.0
                lag = await _lag(admin, group, await consumer.end_offsets(_parts()))
            if now >= next_print:
                next_print = now + args.every
                ends = await consumer.end_offsets(_parts())
                records_in = sum(ends.values())
                lag = await _lag(admin, group, ends)
                rate = (records_in - last_in) / max(now - last_t, 1e-9)
                last_in, last_t = records_in, now
                print(_summary(tally, records_in, rate, lag, now - started,
                               clock.now_ms(now), args.top), flush=True)
    finally:
        with contextlib.suppress(Exception):  # the final count of records in, when reachable
            last_in = sum((await consumer.end_offsets(_parts())).values())
        await consumer.stop()
        await admin.close()
        now = time.monotonic()
        print(_summary(tally, last_in, None, lag, now - started, clock.now_ms(now), args.top,
                       final=True), flush=True)


async def _lag(admin: Any, group: str, ends: dict[Any, int]) -> int | None:
    try:
        committed = await admin.list_consumer_group_offsets(group)
    except Exception:  # the group may not exist yet: lag unknown
        return None
    total = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        total += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
    return total


def _summary(t: Tally, records_in: int, rate: float | None, lag: int | None, elapsed: float,
             sim_ms: int, top: int, final: bool = False) -> str:
    """One screen of the live view."""
    head = "final summary" if final else f"after {elapsed:5.0f} s"
    lag_text = "?" if lag is None else f"{lag:,}"
    rate_text = "" if rate is None else f" ({rate:,.0f}/s)"
    total_h = sum(t.hours.values())
    lines = [f"── {head}: {records_in:,} records in{rate_text}, consumer lag {lag_text}, "
             f"simulated clock {_hm(sim_ms)} UTC",
             f"   {sum(t.intervals.values()):,} intervals ({t.final:,} final) for "
             f"{len(t.account_hours):,} accounts, {total_h:,.1f} usage hours, "
             f"{sum(t.rejects.values()):,} rejects"]
    if t.intervals:
        lines.append(f"   {'usage type':<24} {'intervals':>9} {'hours':>11}")
    for name, count in t.intervals.most_common():
        lines.append(f"   {name:<24} {count:>9,} {t.hours[name]:>11,.2f}")
    if top and t.account_hours:
        lines.append(f"   {'top accounts':<36} {'intervals':>9} {'hours':>11}")
        for account, hours in sorted(t.account_hours.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"   {account:<36} {t.account_intervals[account]:>9,} {hours:>11,.2f}")
    for start in t.new_cuts():
        lines.append(f"   period cut landed: {_hm(start)}–{_hm(start + 3_600_000)[11:]} UTC, "
                     f"{t.cut_intervals[start]:,} open resources, "
                     f"{t.cut_hours[start]:,.1f} h")
    if t.cut_intervals:
        newest = max(t.cut_intervals)
        lines.append(f"   period cuts: {len(t.cut_intervals):,} hour(s) cut, newest "
                     f"{_hm(newest)} UTC ({t.cut_intervals[newest]:,} intervals, "
                     f"{t.cut_hours[newest]:,.1f} h so far)")
    else:
        lines.append("   period cuts: none yet (an hour is cut once the watermark passes its "
                     "end plus the lateness)")
    if t.rejects:
        lines.append("   rejects: " + ", ".join(f"{r} {c}" for r, c in t.rejects.most_common()))
    return "\n".join(lines)
