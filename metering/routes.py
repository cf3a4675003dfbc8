"""Event routes: CloudStack's event-bus topic filters on Kafka (issue 19 item 6; pure).

CloudStack's RabbitMQ bus publishes every event with the routing key
``source.category.type.resourceType.resourceUUID`` and lets subscribers bind with AMQP topic
patterns; its Kafka bus sends only the JSON description, so subscribers cannot filter. A
route gives that back: ``metering route`` forwards each input record whose **route key**
matches a pattern to a named topic, unchanged (same key, same value).

The route key (:func:`route_key`) is ``category.type.resourceType.resourceUUID``, the
RabbitMQ key without the event source, each part normalised as CloudStack's bus does: a
missing, null or empty part becomes ``*``, and every ``.`` inside a part becomes ``-``. So a
key always has exactly four words, e.g. ``ActionEvent.VM-START.VirtualMachine.3c1e...``,
``UsageEvent.VM-START.com-cloud-vm-VirtualMachine.3c1e...``, ``AlertEvent.ALERT-USERVM.*.*``.
The category comes from the JSON keys, as the decoder classifies them
(:func:`metering.decode.classify`); the other parts from the payload:

==================  ===================  ==================  ====================
category            type                 resourceType        resourceUUID
==================  ===================  ==================  ====================
ActionEvent         ``event``            ``entity``          ``entityuuid``
UsageEvent          ``event``            ``resource``        ``id``
ResourceStateEvent  ``*`` (not in JSON)  ``resource``        ``id``
AlertEvent          ``event``            ``*``               ``*``
AsyncJobEvent       ``*`` (not in JSON)  ``instanceType``    ``instanceUuid``
==================  ===================  ==================  ====================

(The state-machine event of a resource-state event and the submit/update/complete of an
async-job event are not in the Kafka record, so those parts are ``*``: a pattern can only
match them with ``*`` or ``#``.) Records of unknown category, and values that are not JSON
objects, have no route key and are never routed.

Patterns (:func:`matches`) follow AMQP topic exchanges: words separated by ``.``, ``*``
matches exactly one word, ``#`` zero or more words, any other word itself (case-sensitive).
A pattern without ``#`` must have four words (it could never match otherwise). Examples:
``ActionEvent.*.Account.*`` (every action on an account), ``UsageEvent.*.com-cloud-vm-
VirtualMachine.*`` (VM usage events), ``ActionEvent.VM-START.#``, ``AlertEvent.#``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final, NamedTuple

from metering.decode import classify, parse_json
from metering.events import Category

CATEGORY_NAMES: Final = {
    Category.ACTION: "ActionEvent",
    Category.USAGE: "UsageEvent",
    Category.RESOURCE_STATE: "ResourceStateEvent",
    Category.ALERT: "AlertEvent",
    Category.ASYNC_JOB: "AsyncJobEvent",
}
"""CloudStack's ``EventCategory`` name of each routable category."""

_FIELDS: Final[dict[Category, tuple[str | None, str | None, str | None]]] = {
    Category.ACTION: ("event", "entity", "entityuuid"),
    Category.USAGE: ("event", "resource", "id"),
    Category.RESOURCE_STATE: (None, "resource", "id"),
    Category.ALERT: ("event", None, None),
    Category.ASYNC_JOB: (None, "instanceType", "instanceUuid"),
}
"""The payload key of (type, resourceType, resourceUUID) per category (None: not in JSON)."""

_TOPIC: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_BAD_WORD: Final = re.compile(r"[\s,=]")


def _part(value: Any) -> str:
    """One key part as CloudStack's bus writes it: ``*`` if missing, ``.`` -> ``-``."""
    if type(value) is not str or not value:
        return "*"
    return value.replace(".", "-")


def route_key(obj: Any, category: Category) -> str | None:
    """The route key ``category.type.resourceType.resourceUUID`` of a decoded JSON value of
    ``category`` (from :func:`metering.decode.classify`); None if it is not routable."""
    fields = _FIELDS.get(category)
    if fields is None or type(obj) is not dict:
        return None
    parts = [CATEGORY_NAMES[category]]
    for name in fields:
        parts.append("*" if name is None else _part(obj.get(name)))
    return ".".join(parts)


@lru_cache(maxsize=256)
def _words(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("."))


def matches(pattern: str, key: str) -> bool:
    """True if ``key`` matches the AMQP topic ``pattern`` (``*`` one word, ``#`` zero or
    more words, other words themselves). Both are ``.``-separated words."""
    pw, kw = _words(pattern), key.split(".")
    # positions of the key reachable after each pattern prefix (a set, no backtracking)
    reach = {0}
    for word in pw:
        if word == "#":
            lowest = min(reach)
            reach = set(range(lowest, len(kw) + 1))
        elif word == "*":
            reach = {i + 1 for i in reach if i < len(kw)}
        else:
            reach = {i + 1 for i in reach if i < len(kw) and kw[i] == word}
        if not reach:
            return False
    return len(kw) in reach


class Route(NamedTuple):
    """Records whose route key matches ``pattern`` go to ``topic``."""

    pattern: str
    topic: str


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable route pattern, or None."""
    words = pattern.split(".")
    if any(not w for w in words):
        return f"pattern {pattern!r} has an empty word (two dots, or a dot at an end)"
    if any(_BAD_WORD.search(w) for w in words):
        return f"pattern {pattern!r} holds a space, ',' or '='"
    if "#" not in words and len(words) != 4:
        return (f"pattern {pattern!r} has {len(words)} words; route keys have 4 "
                "(category.type.resourceType.resourceUUID, a '.' inside a part written '-', "
                "e.g. ActionEvent.VM-START.*.*), so it needs 4 words or a '#'")
    return None


def parse_routes(text: str) -> list[Route]:
    """``PATTERN=TOPIC[,PATTERN=TOPIC...]`` (the ``routes`` setting) -> routes, in order.

    Raises ValueError naming every problem."""
    routes: list[Route] = []
    problems: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        pattern, eq, topic = (part.strip() for part in item.rpartition("="))
        if not eq:
            problems.append(f"{item!r} is not PATTERN=TOPIC")
            continue
        why = pattern_problem(pattern)
        if why:
            problems.append(why)
        if not _TOPIC.match(topic):
            problems.append(f"{topic!r} is not a valid Kafka topic name")
        routes.append(Route(pattern, topic))
    if not routes and not problems:
        problems.append("no route given (expected PATTERN=TOPIC[,PATTERN=TOPIC...])")
    if problems:
        raise ValueError("; ".join(problems))
    return routes


def targets(routes: Sequence[Route], key: str | None) -> list[str]:
    """The distinct topics whose route matches ``key`` (in route order; none for None)."""
    if key is None:
        return []
    out: list[str] = []
    for route in routes:
        if route.topic not in out and matches(route.pattern, key):
            out.append(route.topic)
    return out


def record_key(raw: bytes | None, max_bytes: int) -> str | None:
    """The route key of one input record value (None: empty, larger than ``max_bytes``,
    not a JSON object, or of no routable category). Never raises."""
    if not raw or len(raw) > max_bytes:
        return None
    obj = parse_json(raw)
    if type(obj) is not dict:
        return None
    return route_key(obj, classify(obj))
