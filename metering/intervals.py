"""Usage intervals: the pipeline's output rows (contract section 5).

An interval is half-open ``[start, end)`` in UTC epoch milliseconds, never crosses an
aggregation-period boundary, and carries a deterministic ``interval_id`` (rule 9) so that
every consumer can deduplicate repeats. Schema version 2 (contract revision 2): the id
includes the account (rule 4a), so ids differ from those version 1 gave the same input.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final, NamedTuple

from metering.usage_types import NAMES, ZONE_KEYED

SCHEMA_VERSION: Final = 2
MS_PER_HOUR: Final = 3_600_000


class CloseReason:
    """``close_reason`` values besides the closing event type (e.g. ``VM.STOP``)."""

    PERIOD: Final = "period"
    """Cut at an aggregation-period boundary while the resource stays open (final=false)."""
    ACCOUNT_DELETE: Final = "account_delete"
    """Closed by a completed ``ACCOUNT.DELETE`` of the owning account (final=true)."""
    UNTIL: Final = "until"
    """Cut at ``replay --until`` while still open, not on a period boundary (final=false)."""


def resource_key(usage_type: int, resource_id: str, zone_id: str | None) -> str:
    """The interval key of the contract's table: the resource, plus the zone for TEMPLATE/ISO."""
    if usage_type in ZONE_KEYED:
        return f"{resource_id}@{zone_id or ''}"
    return resource_id


_PREFIXES: dict[tuple[int, str, str, bool], str] = {}
_PREFIXES_MAX: Final = 65_536


def id_prefix(usage_type: int, account_id: str, key: str, empty: bool = False) -> str:
    """The constant first half of the ids of one (usage type, account, resource key): 16 hex.

    A 64-bit BLAKE2b hash of ``v2|usage_type|len(account)|account|key`` (``|empty`` appended
    for zero-length intervals); the account's length makes the text unambiguous whatever
    characters the account and key hold. Recent prefixes are memoised (a pure function: an
    open resource is cut every period with the same prefix).
    """
    memo = (usage_type, account_id, key, empty)
    prefix = _PREFIXES.get(memo)
    if prefix is None:
        text = (f"v2|{usage_type}|{len(account_id)}|{account_id}|{key}"
                f"{'|empty' if empty else ''}")
        prefix = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        if len(_PREFIXES) >= _PREFIXES_MAX:
            _PREFIXES.clear()
        _PREFIXES[memo] = prefix
    return prefix


def interval_id(
    usage_type: int, account_id: str, key: str, start_ms: int, empty: bool = False
) -> str:
    """Deterministic id of (usage type, account, resource key, start): 32 lowercase hex.

    The first 16 characters hash (usage type, account, key) (:func:`id_prefix`); the last
    16 are the start instant in ms as hex, so the ids of one resource and account sort by
    start. ``key`` is :func:`resource_key` (the resource UUID, plus ``@zone`` for
    TEMPLATE/ISO). ``empty`` marks a zero-length interval (rule 4) so that it never shares
    its id with the interval that may open at the same instant. Two accounts' intervals of
    one resource id never share an id (rule 4a).
    """
    return f"{id_prefix(usage_type, account_id, key, empty)}{start_ms:016x}"


class UsageInterval(NamedTuple):
    """One usage interval row. Times are UTC epoch ms; ``[start, end)`` within one period.

    A NamedTuple (immutable, cheap to create: the hot path of replay and the worker creates
    one per resource per period).
    """

    interval_id: str
    account_id: str
    domain_id: str | None
    zone_id: str | None
    usage_type: int
    usage_type_name: str
    resource_id: str
    offering_id: str | None
    template_id: str | None
    start: int
    end: int
    duration_ms: int
    raw_usage_hours: float
    period_start: int
    final: bool
    close_reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (timestamps stay integer ms), e.g. for JSON encoding."""
        return self._asdict()


FIELDS: Final = UsageInterval._fields
"""Column order of the output contract."""


def make_interval(
    *,
    usage_type: int,
    resource_id: str,
    zone_id: str | None,
    account_id: str,
    domain_id: str | None,
    offering_id: str | None,
    template_id: str | None,
    start: int,
    end: int,
    period_start: int,
    final: bool,
    close_reason: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
) -> UsageInterval:
    """Build a row, computing id, duration and hours. ``end < start`` is a bug and raises."""
    if end < start:
        raise ValueError(f"negative interval [{start}, {end}) for {resource_id}")
    duration = end - start
    return UsageInterval(
        interval_id=interval_id(
            usage_type, account_id, resource_key(usage_type, resource_id, zone_id), start,
            duration == 0,
        ),
        account_id=account_id,
        domain_id=domain_id,
        zone_id=zone_id,
        usage_type=usage_type,
        usage_type_name=NAMES[usage_type],
        resource_id=resource_id,
        offering_id=offering_id,
        template_id=template_id,
        start=start,
        end=end,
        duration_ms=duration,
        raw_usage_hours=duration / MS_PER_HOUR,
        period_start=period_start,
        final=final,
        close_reason=close_reason,
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
    )
