"""metering.codec: versioned state encoding for RocksDB tables and changelogs."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.codec import (
    VERSION,
    StateDecodeError,
    decode_account,
    decode_entity,
    encode_account,
    encode_entity,
)
from metering.events import Source
from metering.lifecycle import (
    DISK_OFFERING,
    SERVICE_OFFERING,
    TEMPLATE,
    EntityState,
    Held,
    Slot,
)
from metering.meter import AccountState

ENTITY = EntityState(
    slots={
        (1, ""): Slot("acct-1", "zone-1", 1_741_946_400_000, Source("cs", 3, 17)),
        (7, "zone-2"): Slot("acct-1", "zone-2", 1_741_946_401_000, Source("cs.x", 0, 0)),
        (7, ""): Slot("acct-1", None, 5, Source("trace.jsonl", 0, 2**40)),
    },
    changes=[(1, SERVICE_OFFERING, "so-1"), (2, TEMPLATE, "tpl-1"), (2, DISK_OFFERING, "d")],
    offsets={"cs/3": 17, "cs.x/0": 0},
    ends={(1, ""): 1_741_946_399_000, (7, "zone-1"): 3},
    lane="cs/3",
    empty_ends={(7, "zone-1")},
    held=[
        Held((2, ""), Slot("acct-1", "zone-1", 10, Source("cs", 3, 1)), 20, "VM.STOP",
             Source("cs", 3, 2), 1_741_946_400_123),
        Held((2, ""), Slot("acct-1", None, 20, Source("cs", 3, 4)), 20, "VM.STOP",
             Source("cs", 3, 5), None),
    ],
)
ACCOUNT = AccountState(
    domain_id="dom-1",
    deleted_at=1_741_946_400_000,
    offsets={"cs/0": 4, "cs/1": 9},
    deleted_by=Source("cs", 1, 9),
)


def test_entity_round_trip() -> None:
    data = encode_entity(ENTITY)
    assert isinstance(data, bytes)
    back = decode_entity(data)
    assert back == ENTITY
    assert isinstance(back.slots[(1, "")].opened_by, Source)
    assert back.slots[(7, "")].zone_id is None
    assert encode_entity(back) == data  # stable: encode(decode(x)) == x
    assert isinstance(back.held[0].src, Source)


def test_states_written_before_held_intervals_still_decode() -> None:
    data = encode_entity(EntityState(slots=dict(ENTITY.slots)))
    assert len(orjson.loads(data[1:])) == 5  # no held: the version 1 shape of old writers
    assert decode_entity(data).held == []


def test_states_written_before_empty_ends_still_decode() -> None:
    old = bytes([VERSION]) + orjson.dumps(["cs/0", [], [], {}, [[1, "", 7]]])
    state = decode_entity(old)
    assert state.ends == {(1, ""): 7}
    assert state.empty_ends == set()


def test_empty_entity_round_trip() -> None:
    assert decode_entity(encode_entity(EntityState())) == EntityState()


@pytest.mark.parametrize(
    "account",
    [
        ACCOUNT,
        AccountState(),
        AccountState(domain_id="d"),
        AccountState(deleted_at=0, deleted_by=Source("cs", 0, 0)),
    ],
)
def test_account_round_trip(account: AccountState) -> None:
    data = encode_account(account)
    back = decode_account(data)
    assert back == account
    assert back.deleted_by is None or isinstance(back.deleted_by, Source)
    assert encode_account(back) == data


def test_version_byte_leads_every_encoding() -> None:
    assert VERSION == 1
    for data in (encode_entity(ENTITY), encode_entity(EntityState()), encode_account(ACCOUNT)):
        assert data[0] == VERSION
        orjson.loads(data[1:])  # the body is plain JSON after the version byte


@pytest.mark.parametrize("decoder", [decode_entity, decode_account])
@pytest.mark.parametrize("version", [0, 2, 9, 0x5B, 255])  # 0x5B = "[": unversioned JSON
def test_unknown_version_raises_state_decode_error(decoder, version: int) -> None:  # type: ignore[no-untyped-def]
    good = encode_entity(ENTITY) if decoder is decode_entity else encode_account(ACCOUNT)
    with pytest.raises(StateDecodeError, match="version"):
        decoder(bytes([version]) + good[1:])


@pytest.mark.parametrize("decoder", [decode_entity, decode_account])
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x01{",
        b"\x01[1,2",
        b"\x01\xff\xfe",
        # valid JSON of the wrong shape is corrupt state too
        b"\x01null",
        b"\x01{}",
        b"\x01[1,2]",
        b'\x01["l",[[1]],[],{},[]]',
        b"\x01[null,null,null,[1]]",
        b"\x01[null,null,null,null,null,null]",
    ],
)
def test_corrupt_state_raises_state_decode_error(decoder, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StateDecodeError):
        decoder(data)


def test_state_decode_error_is_a_value_error() -> None:
    assert issubclass(StateDecodeError, ValueError)


ids = st.text(min_size=1, max_size=12)
ms = st.integers(-(2**53), 2**53)
sources = st.builds(Source, ids, st.integers(0, 2**31 - 1), st.integers(0, 2**62))
slots = st.builds(Slot, ids, st.none() | ids, ms, sources)
usage_types = st.sampled_from([1, 2, 3, 6, 7, 8, 9, 13, 26, 31])


@given(
    st.dictionaries(st.tuples(usage_types, st.just("") | ids), slots, max_size=5),
    st.lists(
        st.tuples(ms, st.sampled_from([SERVICE_OFFERING, TEMPLATE, DISK_OFFERING]), ids), max_size=5
    ),
    st.dictionaries(ids, st.integers(0, 2**62), max_size=3),
    st.dictionaries(st.tuples(usage_types, st.just("") | ids), ms, max_size=5),
    st.text(max_size=12),
    st.data(),
)
def test_entity_round_trip_property(slots_, changes, offsets, ends, lane, data) -> None:  # type: ignore[no-untyped-def]
    empty = data.draw(st.sets(st.sampled_from(sorted(ends)))) if ends else set()
    state = EntityState(
        slots=slots_, changes=sorted(changes), offsets=offsets, ends=ends, lane=lane,
        empty_ends=empty,
    )
    assert decode_entity(encode_entity(state)) == state


@given(
    st.none() | ids,
    st.none() | ms,
    st.dictionaries(ids, st.integers(0, 2**62), max_size=3),
    st.none() | sources,
)
def test_account_round_trip_property(domain, deleted_at, offsets, by) -> None:  # type: ignore[no-untyped-def]
    state = AccountState(domain_id=domain, deleted_at=deleted_at, offsets=offsets, deleted_by=by)
    assert decode_account(encode_account(state)) == state
