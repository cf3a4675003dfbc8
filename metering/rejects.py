"""The reject record (contract section 2) and the size bounds of everything the worker sends.

One builder, :func:`reject_record`, gives the JSON form of a rejected record for the rejects
topic of the worker and the ``--rejects`` file of ``metering replay``. Its size is bounded
for any input: ``raw`` is an excerpt of the value (:data:`RAW_EXCERPT_CHARS` characters) with
the original length and SHA-256 digest, the key and the detail are cut too. So a reject
always fits in one producer request, however large or hostile the record (a 180 kB value of
control bytes once became a 1 MB reject, since JSON escapes a control byte as 6 bytes).

Sizes are bytes unless stated; the producer limit is the one the worker's Faust producer
uses (:data:`PRODUCER_MAX_REQUEST_BYTES`, Faust's ``producer_max_request_size`` default).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

from metering.events import Rejected

PRODUCER_MAX_REQUEST_BYTES: Final = 1_000_000
"""The producer's ``max_request_size`` (bytes): Faust's default ``producer_max_request_size``,
which :func:`agents.faustapp.make_app` keeps. aiokafka refuses a larger record (key, value
and record-batch overhead) and the batch that sent it fails."""

KAFKA_RECORD_OVERHEAD: Final = 128
"""Upper bound (bytes) of what aiokafka adds to key and value when it sizes one record: the
record-batch header (61) and the largest record overhead (21), plus room for varints."""

RAW_EXCERPT_CHARS: Final = 1024
"""``raw`` keeps at most this many characters of the value."""

KEY_EXCERPT_CHARS: Final = 256
"""``key`` (JSON) keeps at most this many characters of the record key."""

KEY_MAX_BYTES: Final = 1024
"""The Kafka key of a reject: the record's key, cut to this many bytes."""

DETAIL_CHARS: Final = 512
"""``detail`` keeps at most this many characters."""

TOPIC_CHARS: Final = 249
"""Kafka topic names have at most 249 characters (ASCII)."""

_JSON_CHAR_BYTES: Final = 6
"""Most bytes one character takes in orjson's output (a control character: ``\\u001f``)."""

MAX_REJECT_VALUE_BYTES: Final = (
    _JSON_CHAR_BYTES * (RAW_EXCERPT_CHARS + KEY_EXCERPT_CHARS + DETAIL_CHARS + TOPIC_CHARS)
    + 4 * (RAW_EXCERPT_CHARS + 2) // 3 + 2  # raw_base64 of at most RAW_EXCERPT_CHARS bytes
    + 1024  # field names, punctuation, reason, category, numbers, the hex digest
)
"""Upper bound (bytes) of ``orjson.dumps(reject_record(...))`` for any input."""

MAX_REJECT_MESSAGE_BYTES: Final = MAX_REJECT_VALUE_BYTES + KEY_MAX_BYTES + KAFKA_RECORD_OVERHEAD
"""Upper bound (bytes) of a reject on the rejects topic as the producer sizes it."""


def _text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with anything UTF-8 cannot encode (a lone
    surrogate) shown as a backslash escape, so that the result always serialises."""
    cut = value[:limit]
    try:
        cut.encode("utf-8")
    except UnicodeEncodeError:
        cut = cut.encode("utf-8", "backslashreplace").decode("utf-8")[:limit]
    return cut


def reject_key(key: bytes | None) -> bytes | None:
    """The Kafka key of a reject: the record's key, cut to :data:`KEY_MAX_BYTES` bytes."""
    return key if key is None or len(key) <= KEY_MAX_BYTES else key[:KEY_MAX_BYTES]


def reject_record(
    value: bytes, rej: Rejected, topic: str | None, partition: int | None,
    offset: int | None, key: str | None,
) -> dict[str, Any]:
    """The JSON form of a rejected record (rejects file of replay and rejects topic).

    Fields: ``raw`` (the first :data:`RAW_EXCERPT_CHARS` characters of the value as text:
    exact for UTF-8, invalid bytes shown as ``\\xNN`` escapes), ``raw_base64`` (only when
    the value is not UTF-8: its first :data:`RAW_EXCERPT_CHARS` bytes, exactly),
    ``raw_length`` (bytes of the whole value), ``raw_sha256`` (hex digest of the whole
    value), ``raw_truncated`` (``raw`` is not the whole value), ``reason``, ``detail``,
    ``category``, ``topic``, ``partition``, ``offset``, ``key`` (cut to
    :data:`KEY_EXCERPT_CHARS` characters; ``key_length``, its length in characters, is
    added when cut). ``orjson.dumps`` of the result is at most
    :data:`MAX_REJECT_VALUE_BYTES` bytes for any input.
    """
    out: dict[str, Any] = {}
    try:
        text = value.decode("utf-8")
        out["raw"] = text[:RAW_EXCERPT_CHARS]
        truncated = len(text) > RAW_EXCERPT_CHARS
    except UnicodeDecodeError:
        head = value[:RAW_EXCERPT_CHARS]
        shown = head.decode("utf-8", "backslashreplace")
        out["raw"] = shown[:RAW_EXCERPT_CHARS]
        out["raw_base64"] = base64.b64encode(head).decode()
        truncated = len(value) > RAW_EXCERPT_CHARS or len(shown) > RAW_EXCERPT_CHARS
    out["raw_length"] = len(value)
    out["raw_sha256"] = hashlib.sha256(value).hexdigest()
    out["raw_truncated"] = truncated
    out.update(
        reason=rej.reason.value, detail=_text(rej.detail, DETAIL_CHARS),
        category=rej.category.value,
        topic=None if topic is None else _text(topic, TOPIC_CHARS),
        partition=partition, offset=offset,
        key=None if key is None else _text(key, KEY_EXCERPT_CHARS),
    )
    if key is not None and len(key) > KEY_EXCERPT_CHARS:
        out["key_length"] = len(key)
    return out
