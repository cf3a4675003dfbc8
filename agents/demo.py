"""``metering demo``: the whole pipeline, live, on the embedded local Kafka broker.

1. starts a local single-node KRaft broker (Maven Central jars; or uses ``--broker``),
2. creates the input topic,
3. starts ``metering worker`` (a subprocess, its own RocksDB data directory) and
   ``metering archive`` (the usage topic -> the Parquet dataset ``<data-dir>/archive``),
4. feeds it a simulated cloud in real time (``metering simulate --to-kafka --rate``),
5. prints a live summary every few seconds: records in and records/s, intervals and usage
   hours by usage type (read back from the ``usage`` topic), rejects by reason, consumer lag,
6. stops everything cleanly on Ctrl-C (or after ``--duration`` seconds) and prints the
   archived usage hours per account (``metering report``); the data directory stays, so the
   dataset can be explored afterwards.

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


class DemoError(Exception):
    """A part of the demo failed; the message says which and what to do."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    p = sub.add_parser(
        "demo", help="run the pipeline end to end, live, on the embedded local broker",
        description="Start a local Kafka broker, the metering worker and a live simulated "
        "CloudStack cloud, and show usage flowing. Ctrl-C stops everything.")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after SECONDS (default 0: run until Ctrl-C)")
    p.add_argument("--rate", type=float, default=300.0,
                   help="simulated records per second (default 300)")
    p.add_argument("--accounts", type=int, default=300, help="simulated accounts (default 300)")
    p.add_argument("--broker", default=None,
                   help="use this running broker (host:port) instead of starting one")
    p.add_argument("--data-dir", type=Path, default=Path("demo-data"),
                   help="worker state, Parquet archive and logs; emptied at start and kept "
                   "afterwards (default ./demo-data)")
    p.add_argument("--web-port", type=int, default=6066, help="worker HTTP port (default 6066)")
    p.add_argument("--every", type=float, default=3.0,
                   help="seconds between summaries (default 3)")
    p.set_defaults(func=run)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when it ran and stopped cleanly, 1 when a part failed."""
    from agents.localkafka import BrokerError, LocalKafka, free_port
    from agents.simulate import ensure_topic

    broker: LocalKafka | None = None
    data_dir: Path = args.data_dir
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
        procs.append(_spawn(
            [sys.executable, "-m", "agents", "simulate", "--to-kafka", bootstrap,
             "--topic", env["METERING_INPUT_TOPIC"], "--rate", str(args.rate),
             "--accounts", str(args.accounts), "--days", "3650", "--seed", "1"],
            dict(os.environ), sim_log))
        _log(f"simulator feeding {args.rate:,.0f} records/s into topic "
             f"{env['METERING_INPUT_TOPIC']} (log: {sim_log})")
        _print_where(bootstrap, env, port, archive_port, data_dir)
        asyncio.run(_monitor(bootstrap, env, procs, args))
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
            _report(data_dir / "archive")


def _worker_env(bootstrap: str, data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        METERING_BROKER=bootstrap, METERING_APP_ID="metering-demo", METERING_INPUT_TOPIC="cs",
        METERING_USAGE_TOPIC="usage", METERING_REJECTS_TOPIC="metering.rejected",
        METERING_EVENTS_TOPIC="metering-demo.events", METERING_DATA_DIR=str(data_dir / "state"),
        METERING_WEB_PORT=str(port), METERING_IDLE_ADVANCE="5", METERING_LATENESS="5",
        METERING_SESSION_TIMEOUT="10", METERING_ARCHIVE_DIR=str(data_dir / "archive"),
        METERING_ARCHIVE_FLUSH_SECONDS="5",
    )
    return env


def _fresh_dir(data_dir: Path) -> None:
    """Empty the demo's data directory (state of an earlier demo belongs to another broker);
    refuse directories that do not look like one of ours."""
    if data_dir.exists() and any(data_dir.iterdir()):
        ours = {"state", "archive", "worker.log", "archive.log", "simulate.log"}
        foreign = sorted(p.name for p in data_dir.iterdir() if p.name not in ours)
        if foreign:
            raise SystemExit(f"metering demo: {data_dir} holds files the demo did not write "
                             f"({', '.join(foreign[:5])}); choose another --data-dir")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def _report(dataset: Path) -> None:
    """Print the archived usage hours per account (what ``metering report`` shows)."""
    if not any(dataset.glob("usage_date=*/*.parquet")):
        _log(f"no usage archived under {dataset} yet (let the demo run longer)")
        return
    print(f"\nArchived usage per account ({dataset}); explore it with:\n"
          f"  metering report {dataset} --by account --by usage_type\n"
          f"  METERING_DATASET={dataset.resolve()} jupyter lab notebooks/usage-analysis.ipynb\n",
          flush=True)
    subprocess.run([sys.executable, "-m", "agents", "report", str(dataset), "--by", "account"],
                   check=False)


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


class Tally:
    """What the summary shows, accumulated from the usage and rejects topics."""

    def __init__(self) -> None:
        self.intervals: Counter[str] = Counter()
        self.hours: Counter[str] = Counter()
        self.final = 0
        self.rejects: Counter[str] = Counter()
        self.accounts: set[str] = set()

    def add_usage(self, value: bytes) -> None:
        row = orjson.loads(value)
        name = row["usage_type_name"]
        self.intervals[name] += 1
        self.hours[name] += row["raw_usage_hours"]
        self.final += bool(row["final"])
        self.accounts.add(row["account_id"])

    def add_reject(self, value: bytes) -> None:
        self.rejects[orjson.loads(value)["reason"]] += 1


async def _monitor(bootstrap: str, env: dict[str, str], procs: list[subprocess.Popen[bytes]],
                   args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    usage_topic, rejects_topic = env["METERING_USAGE_TOPIC"], env["METERING_REJECTS_TOPIC"]
    input_topic, group = env["METERING_INPUT_TOPIC"], env["METERING_APP_ID"]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                metadata_max_age_ms=2000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    consumer.subscribe(pattern=f"^({usage_topic}|{rejects_topic})$".replace(".", r"\."))
    tally = Tally()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    next_print = started + args.every
    last_in, last_t = 0, started
    try:
        while not stop.is_set():
            if args.duration and time.monotonic() - started >= args.duration:
                break
            for name, proc in zip(("worker", "archive", "simulator"), procs, strict=False):
                if proc.poll() is not None:
                    raise DemoError(f"the {name} exited with code {proc.returncode}; "
                                    "see its log above the summary")
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            for tp, msgs in batch.items():
                add = tally.add_usage if tp.topic == usage_topic else tally.add_reject
                for m in msgs:
                    add(m.value)
            now = time.monotonic()
            if now >= next_print:
                next_print = now + args.every
                parts = [TopicPartition(input_topic, p)
                         for p in (consumer.partitions_for_topic(input_topic) or {0, 1, 2, 3})]
                ends = await consumer.end_offsets(parts)
                records_in = sum(ends.values())
                lag = await _lag(admin, group, ends)
                rate = (records_in - last_in) / max(now - last_t, 1e-9)
                last_in, last_t = records_in, now
                _print_summary(tally, records_in, rate, lag, now - started)
    finally:
        await consumer.stop()
        await admin.close()
        _print_summary(tally, last_in, 0.0, None, time.monotonic() - started, final=True)


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


def _print_summary(t: Tally, records_in: int, rate: float, lag: int | None, elapsed: float,
                   final: bool = False) -> None:
    head = "final summary" if final else f"after {elapsed:5.0f} s"
    lag_text = "?" if lag is None else f"{lag:,}"
    lines = [f"── {head}: {records_in:,} records in ({rate:,.0f}/s), consumer lag {lag_text}, "
             f"{sum(t.intervals.values()):,} intervals ({t.final:,} final) for "
             f"{len(t.accounts):,} accounts, {sum(t.rejects.values()):,} rejects"]
    for name, count in t.intervals.most_common():
        lines.append(f"   {name:<24} {count:>8,} intervals {t.hours[name]:>12,.4f} h")
    if t.rejects:
        lines.append("   rejects: " + ", ".join(f"{r} {c}" for r, c in t.rejects.most_common()))
    print("\n".join(lines), flush=True)
