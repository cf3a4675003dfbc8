"""Compact, versioned binary encoding of metering state (for RocksDB tables and changelogs).

Format: one version byte, then an orjson array. Version 1::

    entity  = [lane, [[usage_type, zone_key, account, zone|null, start, topic, part, offset], ...],
               [[time, attribute, value], ...], {lane: offset}, [[usage_type, zone_key, end], ...],
               held]    (``held`` optional: closed intervals not emitted yet)
    held    = [[usage_type, zone_key, account, zone|null, start, topic, part, offset,
                end, reason, topic, part, offset, record_ms|null], ...]
    account = [domain|null, deleted_at|null, {lane: offset}, [topic, part, offset]|null]

Decoding an unknown version raises :class:`StateDecodeError` (a bug or a newer writer, never
bad input: state is only ever written by this code).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from metering.events import Source
from metering.lifecycle import EntityState, Held, Slot
from metering.meter import AccountState

VERSION: Final = 1
_V1: Final = bytes([VERSION])


class StateDecodeError(ValueError):
    """Stored state could not be decoded (unknown version or corrupt bytes)."""


def encode_entity(state: EntityState) -> bytes:
    """Serialize an :class:`EntityState` to bytes (version 1).

    An ``ends`` entry is ``[usage type, zone key, end]``, with a fourth element ``1`` when
    the slot's last interval was zero-length (older states have no fourth element).
    """
    slots = [
        [k[0], k[1], s.account_id, s.zone_id, s.start, s.opened_by.topic,
         s.opened_by.partition, s.opened_by.offset]
        for k, s in state.slots.items()
    ]
    empty = state.empty_ends
    ends = [[k[0], k[1], e, 1] if k in empty else [k[0], k[1], e]
            for k, e in state.ends.items()]
    body = [state.lane, slots, [list(c) for c in state.changes], state.offsets, ends]
    if state.held:
        body.append([
            [h.key[0], h.key[1], h.slot.account_id, h.slot.zone_id, h.slot.start,
             h.slot.opened_by.topic, h.slot.opened_by.partition, h.slot.opened_by.offset,
             h.end, h.reason, h.src.topic, h.src.partition, h.src.offset, h.record_ms]
            for h in state.held
        ])
    return _V1 + orjson.dumps(body)


def _body(data: bytes) -> Any:
    if not data or data[0] != VERSION:
        raise StateDecodeError(
            f"unsupported state version {data[:1]!r}; expected {VERSION} (newer writer?)"
        )
    try:
        return orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise StateDecodeError(f"corrupt state: {exc}") from exc


def decode_entity(data: bytes) -> EntityState:
    """Inverse of :func:`encode_entity`."""
    body = _body(data)
    try:
        lane, slots, changes, offsets, ends, *rest = body
        if len(rest) > 1:
            raise ValueError(f"{len(body)} fields")
        held = [
            Held((ut, zk), Slot(acct, zone, start, Source(topic, part, off)), end, reason,
                 Source(htopic, hpart, hoff), record_ms)
            for (ut, zk, acct, zone, start, topic, part, off, end, reason, htopic, hpart, hoff,
                 record_ms) in (rest[0] if rest else ())
        ]
        return EntityState(
            slots={
                (ut, zk): Slot(acct, zone, start, Source(topic, part, off))
                for ut, zk, acct, zone, start, topic, part, off in slots
            },
            changes=[(t, k, v) for t, k, v in changes],
            offsets=dict(offsets),
            ends={(end[0], end[1]): end[2] for end in ends},
            lane=lane,
            empty_ends={(end[0], end[1]) for end in ends if len(end) > 3 and end[3]},
            held=held,
        )
    except (TypeError, ValueError) as exc:  # valid JSON of the wrong shape
        raise StateDecodeError(f"corrupt entity state: {exc}") from exc


def encode_account(state: AccountState) -> bytes:
    """Serialize an :class:`~metering.meter.AccountState` (version 1)."""
    by = state.deleted_by
    return _V1 + orjson.dumps([state.domain_id, state.deleted_at, state.offsets,
                               None if by is None else list(by)])


def decode_account(data: bytes) -> AccountState:
    """Inverse of :func:`encode_account`."""
    body = _body(data)
    try:
        domain, deleted_at, offsets, by = body
        return AccountState(domain_id=domain, deleted_at=deleted_at, offsets=dict(offsets),
                            deleted_by=None if by is None else Source(*by))
    except (TypeError, ValueError) as exc:  # valid JSON of the wrong shape
        raise StateDecodeError(f"corrupt account state: {exc}") from exc
