"""``python -m bench.archive``: throughput of the archive worker on the real local broker.

Produces N simulated-looking usage intervals (default 1 000 000, hourly, 30 days, 4
partitions) to a fresh usage topic, starts ``metering archive`` on it, and measures the
wall-clock time from the archive's start until every partition's checkpoint reaches the
topic's end offset (polled every 0.2 s). Prints records/s, files per day and bytes.
Uses ``METERING_TEST_BROKER`` if set, else starts the embedded broker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from agents.kafkaclient import client_options
from metering.intervals import encode_interval, make_interval
from metering.periods import PeriodGrid
from storage.archive import ArchiveWriter

HOUR = 3_600_000
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def payloads(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of ``n`` hourly intervals: 5 000 resources x hours, 500 accounts."""
    out = []
    for i in range(n):
        resource, hour = i % 5000, i // 5000
        start = DAY0 + hour * HOUR
        row = make_interval(
            usage_type=1 + resource % 2, resource_id=f"vm-{resource:05d}", zone_id="zone-1",
            account_id=f"acct-{resource % 500:03d}", domain_id="dom-1", offering_id="so-1",
            template_id="tpl-1", start=start, end=start + HOUR, period_start=start,
            final=False, close_reason="period", source_topic="metering.events",
            source_partition=resource % 4, source_offset=i)
        out.append((row.account_id.encode(), encode_interval(row)))
    return out


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]],
                   partitions: int) -> dict[int, int]:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**client_options(bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**client_options(bootstrap), linger_ms=20,
                                max_batch_size=1 << 20, acks=1)
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=k) for k, v in records]
        done = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    ends: Counter[int] = Counter()
    for meta in done:
        ends[meta.partition] = max(ends[meta.partition], meta.offset + 1)
    return dict(ends)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch", type=int, default=50_000, help="archive_batch_records")
    args = p.parse_args(argv)

    from agents.localkafka import LocalKafka, free_port

    broker = None
    bootstrap = os.environ.get("METERING_TEST_BROKER")
    if not bootstrap:
        broker = LocalKafka()
        broker.start(lambda m: print(m, file=sys.stderr))
        bootstrap = broker.bootstrap
    work = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    topic = f"bench-usage-{int(time.time())}"
    proc = None
    try:
        print(f"producing {args.records:,} intervals to {topic} ...", file=sys.stderr)
        ends = asyncio.run(_produce(bootstrap, topic, payloads(args.records), args.partitions))
        env = dict(os.environ, METERING_BROKER=bootstrap, METERING_APP_ID=topic,
                   METERING_USAGE_TOPIC=topic, METERING_ARCHIVE_DIR=str(work / "ds"),
                   METERING_ARCHIVE_BATCH_RECORDS=str(args.batch),
                   METERING_ARCHIVE_FLUSH_SECONDS="1", METERING_ARCHIVE_WEB_PORT=str(free_port()),
                   METERING_DATA_DIR=str(work / "state"))
        writer = ArchiveWriter(work / "ds", PeriodGrid("hour", "UTC"))
        started = time.monotonic()
        with (work / "archive.log").open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "agents", "archive"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = started + 1800
        while True:
            done = all(ArchiveWriter(writer.root, writer.grid).checkpoint(topic, part)
                       == end - 1 for part, end in ends.items())
            if done:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"archive failed; see {work / 'archive.log'}")
            time.sleep(0.2)  # poll with a deadline
        seconds = time.monotonic() - started
        files = list((work / "ds").glob("usage_date=*/*.parquet"))
        days = {f.parent.name for f in files}
        size = sum(f.stat().st_size for f in files)
        print(f"| archive ({args.partitions} partitions, batch {args.batch:,}) | "
              f"{args.records:,} | {seconds:.1f} | {args.records / seconds:,.0f} | "
              f"{len(files) / len(days):.1f} files/day over {len(days)} days | "
              f"{size / 1e6:.1f} MB |")
        print("(seconds include the worker's start-up and group join)", file=sys.stderr)
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
