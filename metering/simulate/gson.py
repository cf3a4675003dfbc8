"""Serialise a description map exactly the way CloudStack's event bus does.

CloudStack builds each event description as a ``java.util.HashMap<String, String>`` and writes
it with a default ``new Gson()``:

* keys come out in **HashMap iteration order**: by bucket index ``spread(hash) & (capacity-1)``,
  then insertion order inside a bucket; capacity starts at 16 and doubles when the size
  exceeds 3/4 of it;
* null values are omitted, output is compact;
* ``<``, ``>``, ``&``, ``=`` and ``'`` are escaped as ``\\u003c \\u003e \\u0026 \\u003d
  \\u0027`` (Gson's HTML-safe default).

Nested maps (async-job ``cmdInfo``/``jobResult``) get the same treatment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    (b"=", b"\\u003d"),
    (b"'", b"\\u0027"),
)


def java_string_hash(text: str) -> int:
    """``String.hashCode()`` of Java, as a signed 32-bit int (over UTF-16 code units)."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def _bucket(key: str, capacity: int) -> int:
    h = java_string_hash(key) & 0xFFFFFFFF
    return (h ^ (h >> 16)) & (capacity - 1)


def _capacity(size: int) -> int:
    capacity = 16
    while size > capacity * 3 // 4:
        capacity *= 2
    return capacity


_order_cache: dict[tuple[str, ...], tuple[str, ...]] = {}


def hashmap_order(keys: tuple[str, ...]) -> tuple[str, ...]:
    """Iteration order of a Java HashMap into which ``keys`` were put in this order."""
    try:
        return _order_cache[keys]
    except KeyError:
        pass
    capacity = _capacity(len(keys))
    indexed = sorted(range(len(keys)), key=lambda i: (_bucket(keys[i], capacity), i))
    order = tuple(keys[i] for i in indexed)
    _order_cache[keys] = order
    return order


def _ordered(value: Mapping[str, Any]) -> dict[str, Any]:
    keys = tuple([k for k, v in value.items() if v is not None])
    order = _order_cache.get(keys) or hashmap_order(keys)
    return {k: _ordered(v) if type(v) is dict else value[k]
            for k in order for v in (value[k],)}


def gson_dumps(value: Mapping[str, Any]) -> bytes:
    """The bytes CloudStack would publish for the map ``value`` (insertion order = put order)."""
    data = orjson.dumps(_ordered(value))
    if b"=" in data or b"'" in data or b"<" in data or b">" in data or b"&" in data:
        for raw, escaped in _ESCAPES:
            data = data.replace(raw, escaped)
    return data
