"""Regions: a label of the input source, kept apart in the engine's state (pure).

CloudStack's multi-region design runs one management server (and event stream) per region and
syncs accounts between regions, so one account UUID has usage in several regions. metering
reads each region's stream from its own input (a topic of the worker, a file of ``replay``),
labels every interval with the input's region, and never lets two regions share state:
usage of one account in two regions stays two sets of intervals, which ``metering report``
sums per account.

How, without touching the engine's rules: a *regional* run (at least one input has a region;
then every input must have one) **qualifies** the identifiers a record's state is keyed by,
``<region>|<id>`` (:func:`qualify`: the account and the resource of a usage event, the entity
of an enrichment, the account of ``ACCOUNT.CREATE``/``ACCOUNT.DELETE``), before the engine sees
the record, and **labels** each row the engine emits (:func:`label`): the qualified account and
resource become the plain ids again and the region goes into ``region``. The engine keys its
state by those ids, so two regions never meet in one state, and its ``interval_id`` hashes
them, so two regions' ids never collide; a run without regions is unchanged (same ids as
before). Region names never contain ``|`` (:data:`~metering.usage_schema.REGION_PATTERN`), so
splitting at the first ``|`` is exact whatever the ids hold. The worker and ``replay`` both
use one engine per partition (resp. run) over all regions' records, so they agree exactly.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Final

from metering.errors import MeteringError
from metering.events import AccountCreated, AccountDeleted, Enrichment, Meterable, UsageEvent
from metering.intervals import UsageInterval
from metering.usage_schema import REGION_PATTERN

SEP: Final = "|"
"""Separates the region from an id in a regional engine's state (never in a region name)."""

_REGION: Final = re.compile(REGION_PATTERN)
_TOPIC: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_new_row: Final = tuple.__new__


def region_problem(name: str) -> str | None:
    """Why ``name`` is not a valid region name, or None if it is."""
    if _REGION.match(name):
        return None
    return (f"{name!r} is not a region name (1 to 64 letters, digits, '.', '_' or '-')")


def qualified(region: str, ident: str) -> str:
    """``ident`` of ``region`` as the regional engine keys it: ``<region>|<ident>``."""
    return f"{region}{SEP}{ident}"


def qualify(value: Meterable, region: str) -> Meterable:
    """``value`` with the ids its state is keyed by qualified by ``region``."""
    if type(value) is UsageEvent:
        return UsageEvent(value.event_type, f"{region}{SEP}{value.account_id}",
                          f"{region}{SEP}{value.resource_id}", value.zone_id, value.time_ms)
    if type(value) is Enrichment:
        return value._replace(entity_id=f"{region}{SEP}{value.entity_id}")
    if type(value) is AccountCreated:
        return value._replace(account_id=f"{region}{SEP}{value.account_id}")
    if type(value) is AccountDeleted:
        return value._replace(account_id=f"{region}{SEP}{value.account_id}")
    raise TypeError(f"not a meterable value: {value!r}")


class RegionError(MeteringError, ValueError):
    """A row of a regional engine whose ids are not qualified (a bug, never input), or a
    record of a topic that is not an input of a regional worker (a configuration change)."""


@lru_cache(maxsize=1 << 16)
def _split(ident: str) -> tuple[str, str]:
    """``<region>|<id>`` -> (region, id); ("", ident) if not qualified. Cached: an open
    resource gives a row every period, and shared strings keep rows small in memory."""
    region, sep, plain = ident.partition(SEP)
    return (region, plain) if sep else ("", ident)


def label(row: UsageInterval) -> UsageInterval:
    """A regional engine's row as published: plain account and resource ids, ``region`` set.

    Raises :class:`RegionError` if the row's ids are not qualified by one region.
    """
    region, account = _split(row.account_id)
    of_resource, resource = _split(row.resource_id)
    if not region or of_resource != region:
        raise RegionError(f"row {row.interval_id} of a regional engine is not qualified "
                          f"(account {row.account_id!r}, resource {row.resource_id!r})")
    return _new_row(UsageInterval, (
        row[0], account, *row[2:6], resource, *row[7:20], region))


class TopicRegions:
    """The input topics of a worker (or the inputs of a replay) and the region of each.

    ``regional`` is True when the inputs have regions (then every one has); its
    :meth:`qualify` and :meth:`label` are then the module's functions, else the identity.
    """

    def __init__(self, pairs: Iterable[tuple[str, str | None]]) -> None:
        self.by_topic: dict[str, str | None] = dict(pairs)
        regions = [r for r in self.by_topic.values() if r is not None]
        self.regional = bool(regions)
        if regions and len(regions) != len(self.by_topic):
            missing = [t for t, r in self.by_topic.items() if r is None]
            raise ValueError(f"some inputs have a region and {', '.join(missing)} has none: "
                             "give every input a region, or none")

    @property
    def topics(self) -> tuple[str, ...]:
        """The input topic names, in configuration order."""
        return tuple(self.by_topic)

    def region_of(self, topic: str) -> str | None:
        """The region of ``topic`` (None: no region, or not an input)."""
        return self.by_topic.get(topic)

    def qualify(self, value: Meterable, topic: str) -> Meterable:
        """``value`` read from ``topic``, ready for the engine (qualified if regional).

        Raises :class:`RegionError` for a topic that is not an input of a regional run."""
        if not self.regional:
            return value
        region = self.by_topic.get(topic)
        if region is None:
            raise RegionError(
                f"a record of {topic!r}, which is not an input topic of this regional worker "
                f"({', '.join(self.topics)}): the internal topic holds records of an earlier "
                "input configuration. Changing the regions of input_topics needs a new app id "
                "and events topic (the state and the interval ids depend on them)")
        return qualify(value, region)

    def label(self, row: UsageInterval) -> UsageInterval:
        """The engine's ``row`` as published (:func:`label` if regional)."""
        return label(row) if self.regional else row


def parse_input_topics(text: str) -> list[tuple[str, str | None]]:
    """``TOPIC[=REGION],...`` (the ``input_topics`` setting) -> [(topic, region or None)].

    Raises ValueError naming every problem (bad topic or region name, a repeated topic,
    regions given for some topics only)."""
    pairs: list[tuple[str, str | None]] = []
    problems: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        topic, eq, region = (part.strip() for part in item.partition("="))
        if not _TOPIC.match(topic):
            problems.append(f"{topic!r} is not a valid Kafka topic name")
        if eq:
            why = region_problem(region)
            if why:
                problems.append(why)
        if topic in (t for t, _ in pairs):
            problems.append(f"topic {topic!r} is listed twice")
        pairs.append((topic, region if eq else None))
    if not pairs and not problems:
        problems.append("no topic given (expected TOPIC=REGION[,TOPIC=REGION...])")
    if not problems:
        try:
            TopicRegions(pairs)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return pairs


def input_topic_regions(input_topic: str, input_topics: str) -> TopicRegions:
    """The worker's inputs: ``input_topics`` if set, else the one ``input_topic`` (no region).

    ``input_topics`` must be valid (settings validation checks it)."""
    if input_topics.strip():
        return TopicRegions(parse_input_topics(input_topics))
    return TopicRegions([(input_topic, None)])

