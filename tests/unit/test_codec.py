"""metering.codec: versioned state encoding for RocksDB tables and changelogs."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.codec import (
    SUPPORTED,
    VERSION,
    StateDecodeError,
    decode_account,
    decode_entity,
    encode_account,
    encode_entity,
)
from metering.events import Source
from metering.states import (
    DISK_OFFERING,
    LEGACY_ACCOUNT,
    SERVICE_OFFERING,
    TEMPLATE,
    AccountState,
    EntityState,
    Held,
    Orphan,
    Slot,
)

ENTITY = EntityState(
    slots={
        (1, "", "acct-1"): Slot("acct-1", "zone-1", 1_741_946_400_000, Source("cs", 3, 17)),
        (1, "", "acct-2"): Slot("acct-2", "zone-1", 1_741_946_400_000, Source("cs", 3, 18)),
        (7, "zone-2", "acct-1"): Slot("acct-1", "zone-2", 1_741_946_401_000,
                                      Source("cs.x", 0, 0)),
        (7, "", "acct-1"): Slot("acct-1", None, 5, Source("trace.jsonl", 0, 2**40)),
    },
    changes=[(1, SERVICE_OFFERING, "so-1"), (2, TEMPLATE, "tpl-1"), (2, DISK_OFFERING, "d")],
    offsets={"cs/3": 17, "cs.x/0": 0},
    ends={(1, "", "acct-1"): 1_741_946_399_000, (7, "zone-1", "acct-1"): 3},
    lane="cs/3",
    empty_ends={(7, "zone-1", "acct-1")},
    held=[
        Held((2, "", "acct-1"), Slot("acct-1", "zone-1", 10, Source("cs", 3, 1)), 20,
             "VM.STOP", Source("cs", 3, 2), 1_741_946_400_123),
        Held((2, "", "acct-1"), Slot("acct-1", None, 20, Source("cs", 3, 4)), 20, "VM.STOP",
             Source("cs", 3, 5), None),
    ],
    orphans=[
        Orphan((1, "", "acct-3"), 1_741_946_500_000, "VM.STOP", Source("cs", 3, 19)),
        Orphan((8, "", "acct-1"), 30, "ISO.DELETE", Source("cs", 3, 20), every_zone=True),
    ],
)
# Golden bytes of each earlier version, written by that version's encode_entity (version 1:
# metering at fdff295): they must decode for ever (a rolling upgrade reads them).
V1_ENTITY = (
    b'\x01["cs/3",[[1,"","acct-1","zone-1",1741946400000,"cs",3,17],[7,"zone-2","acct-1",'
    b'"zone-2",1741946401000,"cs.x",0,0]],[[1,0,"so-1"]],{"cs/3":17},[[1,"",1741946399000],'
    b'[7,"zone-1",3,1]],[[2,"","acct-1","zone-1",10,"cs",3,1,20,"VM.STOP","cs",3,2,'
    b"1741946400123]]]"
)
V1_ACCOUNT = b'\x01["dom-1",5,{"cs/0":4},["cs",1,9]]'
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
    assert isinstance(back.slots[(1, "", "acct-1")].opened_by, Source)
    assert back.slots[(7, "", "acct-1")].zone_id is None
    assert isinstance(back.orphans[0].src, Source)
    assert encode_entity(back) == data  # stable: encode(decode(x)) == x
    assert isinstance(back.held[0].src, Source)


def test_version_1_golden_bytes_still_decode() -> None:
    state = decode_entity(V1_ENTITY)
    # slots and held intervals take the account they always stored
    assert state.slots == {
        (1, "", "acct-1"): Slot("acct-1", "zone-1", 1_741_946_400_000, Source("cs", 3, 17)),
        (7, "zone-2", "acct-1"): Slot("acct-1", "zone-2", 1_741_946_401_000,
                                      Source("cs.x", 0, 0)),
    }
    assert state.held == [
        Held((2, "", "acct-1"), Slot("acct-1", "zone-1", 10, Source("cs", 3, 1)), 20,
             "VM.STOP", Source("cs", 3, 2), 1_741_946_400_123)
    ]
    # version 1 kept ``ends`` per (usage type, zone key) for every account
    assert state.ends == {(1, "", LEGACY_ACCOUNT): 1_741_946_399_000,
                          (7, "zone-1", LEGACY_ACCOUNT): 3}
    assert state.empty_ends == {(7, "zone-1", LEGACY_ACCOUNT)}
    assert state.orphans == []
    assert (state.changes, state.offsets, state.lane) == ([(1, 0, "so-1")], {"cs/3": 17}, "cs/3")
    # re-encoded as the current version, it stays the same state
    assert encode_entity(state)[0] == VERSION
    assert decode_entity(encode_entity(state)) == state
    assert decode_account(V1_ACCOUNT) == AccountState("dom-1", 5, {"cs/0": 4}, Source("cs", 1, 9))


def test_version_1_states_written_before_held_intervals_still_decode() -> None:
    old = bytes([1]) + orjson.dumps(["cs/0", [[1, "", "a", None, 5, "cs", 0, 1]], [], {}, []])
    state = decode_entity(old)
    assert state.held == []
    assert state.slots == {(1, "", "a"): Slot("a", None, 5, Source("cs", 0, 1))}


def test_version_1_states_written_before_empty_ends_still_decode() -> None:
    old = bytes([1]) + orjson.dumps(["cs/0", [], [], {}, [[1, "", 7]]])
    state = decode_entity(old)
    assert state.ends == {(1, "", LEGACY_ACCOUNT): 7}
    assert state.empty_ends == set()


def test_a_version_1_last_close_still_makes_a_retried_open_stale() -> None:
    """A VM stopped before the upgrade: its retried VM.START read after it is still stale."""
    from metering.decode import decode
    from metering.engine import Engine, Policy

    old = bytes([1]) + orjson.dumps(["cs/0", [], [], {"cs/0": 1}, [[1, "", 7_200_000]]])
    meter = Engine(Policy(lateness_ms=None), {"vm": decode_entity(old)})
    start = decode(b'{"eventDateTime":"1970-01-01 01:00:00 +0000","event":"VM.START",'
                   b'"id":"vm","account":"a"}')
    assert meter.process(start, Source("cs", 0, 2)) == []
    assert meter.finish(10_800_000).rows == []
    assert meter.stats["stale_open"] == 1


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
    assert VERSION == 2
    assert SUPPORTED == (1, 2)
    for data in (encode_entity(ENTITY), encode_entity(EntityState()), encode_account(ACCOUNT)):
        assert data[0] == VERSION
        orjson.loads(data[1:])  # the body is plain JSON after the version byte


@pytest.mark.parametrize("decoder", [decode_entity, decode_account])
@pytest.mark.parametrize("version", [0, 3, 9, 0x5B, 255])  # 0x5B = "[": unversioned JSON
def test_unknown_version_raises_state_decode_error(decoder, version: int) -> None:  # type: ignore[no-untyped-def]
    good = encode_entity(ENTITY) if decoder is decode_entity else encode_account(ACCOUNT)
    with pytest.raises(StateDecodeError, match=f"version {version} .*versions 1, 2"):
        decoder(bytes([version]) + good[1:])


@pytest.mark.parametrize("decoder", [decode_entity, decode_account])
def test_a_newer_version_is_refused_with_what_to_do(decoder) -> None:  # type: ignore[no-untyped-def]
    """A rollback or a mixed-version rolling upgrade: state written by a newer metering."""
    good = encode_entity(ENTITY) if decoder is decode_entity else encode_account(ACCOUNT)
    with pytest.raises(StateDecodeError) as info:
        decoder(bytes([VERSION + 1]) + good[1:])
    message = str(info.value)
    assert f"version {VERSION + 1}" in message  # found
    assert "reads versions 1, 2" in message  # supported
    assert "newer metering" in message
    assert "run that version" in message
    assert "rebuild the state" in message


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
        b'\x01["l",[],[],{},[],[],[]]',  # version 1 never had orphans
        b'\x02["l",[],[],{},[]]',  # version 2 always has held and orphans
        b'\x02["l",[],[],{},[[1,"",7]],[],[]]',  # a version 1 ends entry in version 2
        b'\x02["l",[],[],{},[],[],[[1,"","a",5]]]',
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
slot_keys = st.tuples(usage_types, st.just("") | ids, ids)
orphans = st.builds(Orphan, slot_keys, ms, ids, sources, st.booleans())


@given(
    st.dictionaries(slot_keys, slots, max_size=5),
    st.lists(
        st.tuples(ms, st.sampled_from([SERVICE_OFFERING, TEMPLATE, DISK_OFFERING]), ids), max_size=5
    ),
    st.dictionaries(ids, st.integers(0, 2**62), max_size=3),
    st.dictionaries(slot_keys, ms, max_size=5),
    st.text(max_size=12),
    st.lists(orphans, max_size=4),
    st.data(),
)
def test_entity_round_trip_property(slots_, changes, offsets, ends, lane, orphans_, data) -> None:  # type: ignore[no-untyped-def]
    empty = data.draw(st.sets(st.sampled_from(sorted(ends)))) if ends else set()
    slots_ = {(k[0], k[1], s.account_id): s for k, s in slots_.items()}  # key's account
    state = EntityState(
        slots=slots_, changes=sorted(changes), offsets=offsets, ends=ends, lane=lane,
        empty_ends=empty, orphans=orphans_,
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
