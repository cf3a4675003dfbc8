"""``metering simulate``: the command line of :mod:`metering.simulate`, plus Kafka output.

The simulation itself is pure (``metering.simulate``); this module parses options, shows
progress, writes the truth, and produces to Kafka with the keys CloudStack's bus uses
(resource UUID, ``entityuuid``, ``instanceUuid``, or null) through aiokafka, whose default
partitioner is Kafka's murmur2, so equal keys land where a Java producer would put them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from typing import Any

import orjson

from agents.cli.exits import EXIT_INTERRUPTED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, fail
from agents.cli.progress import SimulateDisplay, want_progress
from agents.errors import BrokerUnreachable, PreflightError
from agents.errors import KafkaFailed as KafkaFailed
from agents.kafkaclient import client_options
from metering.eventtime import iso, parse_iso_instant
from metering.simulate.cloud import DAY, Cloud, SimConfig
from metering.simulate.render import parse_offset
from metering.simulate.run import (
    Pacer,
    RecordWriter,
    SimSummary,
    relative_instant,
    stream,
    truth_document,
    write_records,
    write_truth,
)


def _instant(text: str, now_ms: int) -> int:
    """An ISO 8601 instant or one relative to ``now_ms`` (``now-12h``), UTC ms."""
    relative = relative_instant(text, now_ms)
    return parse_iso_instant(text) if relative is None else relative


def _config(args: argparse.Namespace) -> tuple[SimConfig | None, list[str]]:
    problems: list[str] = []
    now = _now_ms()
    # The parser's default (agents.cli.simulate.DEFAULT_START, the core's default start)
    start_text = args.start or ("now" if args.speed is not None else iso(SimConfig.start_ms))
    try:
        start = _instant(start_text, now)
    except ValueError as exc:
        problems.append(f"--start: {exc}")
        start = 0
    until = start + int(args.days * DAY)
    if args.until:
        try:
            until = _instant(args.until, now)
        except ValueError as exc:
            problems.append(f"--until: {exc}")
    if args.days <= 0:
        problems.append("--days must be positive")
    if until <= start:
        problems.append("--until must be after --start")
    offsets: list[int] = []
    for part in str(args.tz_offset).split(","):
        try:
            offsets.append(parse_offset(part))
        except ValueError as exc:
            problems.append(f"--tz-offset: {exc}")
    if args.accounts < 1:
        problems.append("--accounts must be at least 1")
    if not 0 <= args.malformed < 1:
        problems.append("--malformed must be a fraction in [0, 1)")
    if not 1 <= args.zones <= 50:
        problems.append("--zones must be within 1..50")
    if args.partitions < 1:
        problems.append("--partitions must be at least 1")
    if args.output is None and args.to_kafka is None and args.truth is None:
        problems.append("nothing to do: give --output FILE, --truth FILE or --to-kafka")
    if args.speed is not None:
        if not args.speed > 0:
            problems.append("--speed must be positive")
        if not args.to_kafka:
            problems.append("--speed needs --to-kafka (a file has no real time to compress)")
    if args.rate is not None or args.speed is not None:
        if args.rate is not None and not args.rate > 0:
            problems.append("--rate must be positive")
        if args.truth is not None:
            problems.append("--truth is not available with --rate: live event times follow "
                            "the wall clock, so the truth is not known in advance")
    elif args.duration is not None:
        problems.append("--duration only applies with --rate or --speed")
    for path in (args.output, args.truth):
        if path is not None and not path.resolve().parent.is_dir():
            problems.append(f"{path}: directory {path.resolve().parent} does not exist")
    if problems:
        return None, problems
    return SimConfig(seed=args.seed, accounts=args.accounts, start_ms=start, until_ms=until,
                     tz_offsets=tuple(offsets), malformed=args.malformed,
                     zones=args.zones), []


def run(args: argparse.Namespace) -> int:
    """Run ``metering simulate``; returns the exit code."""
    config, problems = _config(args)
    if config is None:
        for problem in problems:
            print(f"metering simulate: {problem}", file=sys.stderr)
        return EXIT_USAGE
    progress = want_progress(args.progress)
    try:
        if args.to_kafka:
            summary, cloud = asyncio.run(_to_kafka(config, args, progress))
        else:
            display = SimulateDisplay(progress, config.start_ms, config.until_ms)
            summary, cloud = write_records(config, args.output, args.format, args.topic,
                                           args.partitions, display)
        if args.truth is not None:
            assert cloud is not None
            write_truth(args.truth, truth_document(config, cloud, summary))
    except KeyboardInterrupt:
        print("\nmetering simulate: interrupted; partial output removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"metering simulate: cannot write: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except KafkaFailed as exc:
        return fail("simulate", exc)
    _print_summary(summary, config, args)
    return EXIT_OK


def _print_summary(summary: SimSummary, config: SimConfig, args: argparse.Namespace) -> None:
    if args.json:
        print(orjson.dumps({**summary.as_dict(), "until": iso(config.until_ms)}).decode())
        return
    cats = ", ".join(f"{k} {v:,}" for k, v in sorted(summary.categories.items()))
    where = [str(p) for p in (args.output, args.truth) if p is not None]
    if args.to_kafka:
        where.append(f"kafka://{args.to_kafka}/{args.topic}")
    print(f"simulated {summary.records:,} records in {summary.seconds:.1f} s "
          f"({summary.records_per_second:,.0f} records/s) up to {iso(config.until_ms)}")
    print(f"  categories: {cats}")
    print(f"  written to: {', '.join(where)}")


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` (replication 1) unless it exists."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**client_options(bootstrap), request_timeout_ms=15_000)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def _to_kafka(
    config: SimConfig, args: argparse.Namespace, progress: bool
) -> tuple[SimSummary, Cloud | None]:
    """Produce the simulated records (and write ``--output`` alongside), paced if live."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

    from agents import kafkacheck
    from agents.kafkaclient import security_from_env

    security = dataclasses.replace(security_from_env(args.to_kafka), input_topic=args.topic)
    try:  # a wrong password, CA or protocol: named at once (agents.kafkacheck)
        await kafkacheck.probe(security)
    except PreflightError as exc:
        raise KafkaFailed(str(exc)) from None
    except BrokerUnreachable:
        pass  # said below, with the address
    denied = KafkaFailed(str(kafkacheck.denied(security, "simulate", "topic", args.topic,
                                               "Write", f"write topic {args.topic!r}")))
    try:
        await asyncio.wait_for(ensure_topic(args.to_kafka, args.topic, args.partitions), 30)
    except TopicAuthorizationFailedError:
        raise denied from None
    except (KafkaError, OSError, TimeoutError) as exc:
        raise KafkaFailed(f"cannot reach Kafka at {args.to_kafka}: {exc!r}. Is the broker "
                          "up? (make kafka-up starts a local one)") from exc
    producer = AIOKafkaProducer(
        **client_options(args.to_kafka), acks="all", linger_ms=5,
        max_batch_size=256 * 1024, compression_type=None, request_timeout_ms=30_000,
    )
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        raise KafkaFailed(f"cannot reach Kafka at {args.to_kafka}: {exc!r}") from exc
    cloud = Cloud(config)
    live = args.rate is not None or args.speed is not None
    compressed = args.speed is not None
    writer = RecordWriter(args.output, args.format, args.topic, args.partitions,
                          flush_each=live)
    pacer = Pacer(args.rate, speed=args.speed, start_ms=config.start_ms) if live else None
    show = SimulateDisplay(progress and not live, config.start_ms, config.until_ms)
    show_live = _Every(1.0)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    if live:  # Ctrl-C / SIGTERM end a live run cleanly, flushing what was produced
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
    pending: list[asyncio.Future[Any]] = []
    # Rate only: event times are the wall clock. Compressed clock: the simulated event
    # times stay; the records are published now (Kafka timestamps = wall clock).
    clock = _now_ms if live and not compressed else None
    t0 = time.monotonic()
    try:
        for em in stream(cloud, live_now=clock):
            if pacer is not None:
                delay = pacer.delay(em.ts_ms)
                if args.duration is not None:
                    delay = min(delay, max(0.0, args.duration - pacer.elapsed()))
                if delay > 0:  # a sleep that Ctrl-C / SIGTERM cut short
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=delay)
                if stopping.is_set() or (args.duration is not None
                                         and pacer.elapsed() >= args.duration):
                    break
            fut = await producer.send(args.topic, em.value,
                                      key=em.key.encode() if em.key is not None else None,
                                      timestamp_ms=_now_ms() if compressed else em.ts_ms)
            pending.append(fut)
            writer.write(em, cloud.truth.malformed)
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
            if pacer is not None:
                if show_live.due():
                    _show_live(writer.summary.records, pacer, args.topic, em.ts_ms,
                               compressed)
            elif em.position & 0x3FF == 0:
                show(writer.summary.records, em.ts_ms)
        await asyncio.gather(*pending)
        await producer.flush()
        writer.commit()
    except TopicAuthorizationFailedError:
        raise denied from None
    except KafkaError as exc:
        raise KafkaFailed(f"producing to {args.topic} failed: {exc!r}") from exc
    finally:
        writer.abort()
        await producer.stop()
    writer.summary.seconds = time.monotonic() - t0
    if live:
        sys.stderr.write("\n")
    else:
        show(writer.summary.records, config.until_ms, done=True)
    return writer.summary, (None if live else cloud)


class _Every:
    """True at most once per ``seconds`` of monotonic time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.next_at = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + self.seconds
        return True


def _show_live(records: int, pacer: Pacer, topic: str, sim_ms: int, compressed: bool) -> None:
    """One progress line on stderr (a line per second, also into a log file)."""
    rate = records / max(pacer.elapsed(), 1e-9)
    text = f"simulate (live): {records:,} records ({rate:,.0f}/s) to {topic}"
    if compressed:
        behind = pacer.sim_behind_s()
        text += f", simulated clock {iso(sim_ms)[:19]}Z at {pacer.speed:,.0f}x"
        if behind > 1:
            text += f" ({behind:,.0f} s behind: capped at --rate {pacer.rate:,.0f}/s)"
    sys.stderr.write(f"\r{text}   " if sys.stderr.isatty() else text + "\n")
    sys.stderr.flush()


def _now_ms() -> int:
    """Wall clock, UTC epoch milliseconds."""
    return time.time_ns() // 1_000_000
