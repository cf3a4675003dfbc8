"""Compact, versioned binary encoding of metering state (for RocksDB tables and changelogs).

Format: one version byte, then an orjson array. Version 2 (contract revision 2: state per
account and resource, remembered orphan closes)::

    entity  = [lane, [[usage_type, zone_key, account, zone|null, start, topic, part, offset], ...],
               [[time, attribute, value], ...], {lane: offset},
               [[usage_type, zone_key, account, end(, 1)], ...], held, orphans]
    held    = [[usage_type, zone_key, account, zone|null, start, topic, part, offset,
                end, reason, topic, part, offset, record_ms|null], ...]
    orphans = [[usage_type, zone_key, account, end, reason, topic, part, offset,
                every_zone 0|1], ...]
    account = [domain|null, deleted_at|null, {lane: offset}, [topic, part, offset]|null]

A slot's key is (usage type, zone key, account): the account of the slot row. An ``ends``
entry ends in ``1`` when the slot's last interval was zero-length.

Version 1 (read, never written) is the same except: ``ends`` entries have no account
(``[usage_type, zone_key, end(, 1)]``; they applied to every account of the resource and
decode to :data:`~metering.lifecycle.LEGACY_ACCOUNT`), ``held`` is optional and there are
no ``orphans``. Account states are the same in both versions.

Decoding a version this code does not know raises :class:`StateDecodeError` naming the
version found and the versions supported (a newer writer, e.g. after a rollback or during a
mixed-version rolling upgrade, or corrupt bytes; never bad input: state is only ever
written by this code).
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from metering.errors import MeteringError
from metering.events import Source
from metering.states import (
    LEGACY_ACCOUNT,
    AccountState,
    EntityState,
    Held,
    Orphan,
    Slot,
    SlotKey,
)

VERSION: Final = 2
"""The version this code writes."""
SUPPORTED: Final = (1, 2)
"""The versions this code reads."""
_HEAD: Final = bytes([VERSION])


class StateDecodeError(MeteringError, ValueError):
    """Stored state could not be decoded (unknown version or corrupt bytes)."""


def encode_entity(state: EntityState) -> bytes:
    """Serialize an :class:`EntityState` to bytes (version 2)."""
    slots = [
        [k[0], k[1], s.account_id, s.zone_id, s.start, s.opened_by.topic,
         s.opened_by.partition, s.opened_by.offset]
        for k, s in state.slots.items()
    ]
    empty = state.empty_ends
    ends = [[k[0], k[1], k[2], e, 1] if k in empty else [k[0], k[1], k[2], e]
            for k, e in state.ends.items()]
    held = [
        [h.key[0], h.key[1], h.slot.account_id, h.slot.zone_id, h.slot.start,
         h.slot.opened_by.topic, h.slot.opened_by.partition, h.slot.opened_by.offset,
         h.end, h.reason, h.src.topic, h.src.partition, h.src.offset, h.record_ms]
        for h in state.held
    ]
    orphans = [
        [o.key[0], o.key[1], o.key[2], o.end, o.reason, o.src.topic, o.src.partition,
         o.src.offset, 1 if o.every_zone else 0]
        for o in state.orphans
    ]
    body = [state.lane, slots, [list(c) for c in state.changes], state.offsets, ends, held,
            orphans]
    return _HEAD + orjson.dumps(body)


def _body(data: bytes, what: str) -> tuple[int, Any]:
    if not data:
        raise StateDecodeError(f"corrupt {what} state: no bytes")
    version = data[0]
    if version not in SUPPORTED:
        supported = ", ".join(map(str, SUPPORTED))
        if version > VERSION and version != 0x5B:  # 0x5B = "[": unversioned JSON
            advice = ("this state was written by a newer metering; run that version (or "
                      "newer) on it, or rebuild the state from the input topic")
        else:
            advice = "this is not state written by metering; rebuild the state"
        raise StateDecodeError(
            f"unsupported {what} state version {version} (this metering reads versions "
            f"{supported}): {advice}"
        )
    try:
        return version, orjson.loads(data[1:])
    except orjson.JSONDecodeError as exc:
        raise StateDecodeError(f"corrupt {what} state (version {version}): {exc}") from exc


def _slot(acct: str, zone: str | None, start: int, topic: str, part: int, off: int) -> Slot:
    return Slot(acct, zone, start, Source(topic, part, off))


def decode_entity(data: bytes) -> EntityState:
    """Inverse of :func:`encode_entity`; also reads every earlier version (see module doc)."""
    version, body = _body(data, "entity")
    try:
        lane, slots, changes, offsets, ends, *rest = body
        if len(rest) not in ((0, 1) if version == 1 else (2,)):
            raise ValueError(f"{len(body)} fields")
        held_rows = rest[0] if rest else ()
        orphan_rows = rest[1] if len(rest) > 1 else ()
        held = [
            Held((ut, zk, acct), _slot(acct, zone, start, topic, part, off), end, reason,
                 Source(htopic, hpart, hoff), record_ms)
            for (ut, zk, acct, zone, start, topic, part, off, end, reason, htopic, hpart, hoff,
                 record_ms) in held_rows
        ]
        orphans = [
            Orphan((ut, zk, acct), end, reason, Source(topic, part, off), bool(every))
            for ut, zk, acct, end, reason, topic, part, off, every in orphan_rows
        ]
        end_keys: list[tuple[SlotKey, int, bool]] = []
        for row in ends:
            if version == 1:  # per (usage type, zone key), for every account
                key: SlotKey = (row[0], row[1], LEGACY_ACCOUNT)
                flag = row[3:4]
                end = row[2]
            else:
                key, end, flag = (row[0], row[1], row[2]), row[3], row[4:5]
            if not isinstance(end, int):
                raise TypeError(f"end {end!r}")
            end_keys.append((key, end, bool(flag and flag[0])))
        return EntityState(
            slots={
                (ut, zk, acct): _slot(acct, zone, start, topic, part, off)
                for ut, zk, acct, zone, start, topic, part, off in slots
            },
            changes=[(t, k, v) for t, k, v in changes],
            offsets=dict(offsets),
            ends={key: end for key, end, _ in end_keys},
            lane=lane,
            empty_ends={key for key, _, empty in end_keys if empty},
            held=held,
            orphans=orphans,
        )
    except (TypeError, ValueError, IndexError) as exc:  # valid JSON of the wrong shape
        raise StateDecodeError(f"corrupt entity state (version {version}): {exc}") from exc


def encode_account(state: AccountState) -> bytes:
    """Serialize an :class:`~metering.states.AccountState` (version 2)."""
    by = state.deleted_by
    return _HEAD + orjson.dumps([state.domain_id, state.deleted_at, state.offsets,
                                 None if by is None else list(by)])


def decode_account(data: bytes) -> AccountState:
    """Inverse of :func:`encode_account`; also reads version 1 (the same body)."""
    version, body = _body(data, "account")
    try:
        domain, deleted_at, offsets, by = body
        return AccountState(domain_id=domain, deleted_at=deleted_at, offsets=dict(offsets),
                            deleted_by=None if by is None else Source(*by))
    except (TypeError, ValueError) as exc:  # valid JSON of the wrong shape
        raise StateDecodeError(f"corrupt account state (version {version}): {exc}") from exc
