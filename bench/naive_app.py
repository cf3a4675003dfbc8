"""A naive Faust app: one agent, one event at a time (the streaming benchmark's baseline).

``python -m faust -A bench.naive_app worker`` runs it. It reads ``BENCH_NAIVE_TOPIC`` (raw
bytes), parses each value with ``orjson.loads`` and counts it; nothing else (no state, no
output). Faust's settings are its defaults except what a benchmark needs: raw serializers,
an in-memory store, the app id / data dir / web port from the environment, and reading
from the earliest offset. Offsets are committed by Faust (every 2.8 s by default).

Environment: ``BENCH_NAIVE_BROKER`` (host:port), ``BENCH_NAIVE_TOPIC``,
``BENCH_NAIVE_APP_ID`` (the consumer group), ``BENCH_NAIVE_DATADIR``,
``BENCH_NAIVE_WEB_PORT``.
"""

from __future__ import annotations

import os
from typing import Any

import faust
import orjson

from agents.kafkaclient import faust_options, security_from_env

_BROKER = os.environ.get("BENCH_NAIVE_BROKER", "127.0.0.1:9092")

app = faust.App(
    os.environ.get("BENCH_NAIVE_APP_ID", "bench-naive"),
    broker=f"kafka://{_BROKER}",
    store="memory://",
    datadir=os.environ.get("BENCH_NAIVE_DATADIR", "bench-naive-data"),
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    web_port=int(os.environ.get("BENCH_NAIVE_WEB_PORT", "6099")),
    web_bind="127.0.0.1",
    web_host="127.0.0.1",
    autodiscover=False,
    key_serializer="raw",
    value_serializer="raw",
    **faust_options(security_from_env(_BROKER)),  # METERING_SECURITY_PROTOCOL etc.
)

source = app.topic(os.environ.get("BENCH_NAIVE_TOPIC", "cs"), key_type=bytes,
                   value_type=bytes, key_serializer="raw", value_serializer="raw")

counted = 0
"""Records seen by the agent (parsed or not)."""


@app.agent(source)
async def count(stream: Any) -> None:
    """Parse each record with orjson, one at a time, and count it."""
    global counted
    loads, error = orjson.loads, orjson.JSONDecodeError
    async for value in stream:
        try:  # noqa: SIM105 (cheaper than contextlib.suppress per record)
            loads(value)
        except error:
            pass
        counted += 1
