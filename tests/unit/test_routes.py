"""Event routes (issue 19 item 6): route keys from payloads, AMQP topic patterns."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metering.decode import classify
from metering.routes import Route, matches, parse_routes, pattern_problem, route_key, targets

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


def key_of(name: str) -> str | None:
    obj = orjson.loads((GOLDEN / name).read_bytes())
    return route_key(obj, classify(obj))


def test_route_keys_of_every_category_as_cloudstacks_bus_writes_them() -> None:
    assert key_of("action_account_create.json") == (
        "ActionEvent.ACCOUNT-CREATE.Account.8c9d0e1f-2a3b-4c4d-9e5f-6a7b8c9d0e03")
    assert key_of("usage_vm_start.json") == (
        "UsageEvent.VM-START.com-cloud-vm-VirtualMachine.3c1e2a4b-7d6f-4b8e-9a0c-1e2d3f4a5b44")
    assert key_of("state_vm_post_running.json") == (
        "ResourceStateEvent.*.VirtualMachine.3c1e2a4b-7d6f-4b8e-9a0c-1e2d3f4a5b44")
    assert key_of("alert_uservm.json") == "AlertEvent.ALERT-USERVM.*.*"
    assert key_of("asyncjob_submit.json") == (
        "AsyncJobEvent.*.VirtualMachine.3c1e2a4b-7d6f-4b8e-9a0c-1e2d3f4a5b44")
    assert key_of("usage_net_ip6assign_no_id.json") == (
        "UsageEvent.NET-IP6ASSIGN.com-googlecode-ipv6-IPv6Address.*")


def test_unknown_records_and_non_objects_have_no_key() -> None:
    obj = {"foo": "bar"}
    assert route_key(obj, classify(obj)) is None
    assert route_key([1], classify({"jobId": "x"})) is None
    assert targets([Route("#", "all")], None) == []


def test_odd_parts_become_star_and_dots_dashes() -> None:
    obj = {"user": "u", "status": "Completed", "event": "", "entity": 5,
           "entityuuid": "a.b"}
    assert route_key(obj, classify(obj)) == "ActionEvent.*.*.a-b"


def reference(pattern: str, key: str) -> bool:
    """AMQP topic matching as a regular expression over ``"." + key``."""
    pieces = []
    for word in pattern.split("."):
        if word == "#":
            pieces.append(r"(?:\.[^.]+)*")
        elif word == "*":
            pieces.append(r"\.[^.]+")
        else:
            pieces.append(r"\." + re.escape(word))
    return re.fullmatch("".join(pieces), "." + key) is not None


key_words = st.lists(st.sampled_from(["a", "b", "ab", "*", "A"]), min_size=1, max_size=7)
pattern_words = st.lists(st.sampled_from(["a", "b", "ab", "*", "#", "A"]), min_size=1,
                         max_size=7)


@given(pattern=pattern_words, key=key_words)
def test_matches_agrees_with_the_reference_regex(pattern: list[str], key: list[str]) -> None:
    p, k = ".".join(pattern), ".".join(key)
    assert matches(p, k) == reference(p, k), (p, k)


@given(key=key_words)
def test_hash_matches_everything_and_a_key_matches_itself(key: list[str]) -> None:
    k = ".".join(key)
    assert matches("#", k)
    assert matches(k.replace("*", "x"), k.replace("*", "x"))
    assert matches(".".join("*" for _ in key), k)
    assert not matches(".".join("*" for _ in key) + ".*", k)


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("ActionEvent.*.Account.*", "ActionEvent.ACCOUNT-CREATE.Account.u1", True),
    ("ActionEvent.*.Account.*", "ActionEvent.VM-START.VirtualMachine.u1", False),
    ("UsageEvent.#", "UsageEvent.VM-START.com-cloud-vm-VirtualMachine.u1", True),
    ("#.u1", "UsageEvent.VM-START.com-cloud-vm-VirtualMachine.u1", True),
    ("UsageEvent.VM.#", "UsageEvent.VM-START.com-cloud-vm-VirtualMachine.u1", False),
    ("AlertEvent.ALERT-USERVM.*.*", "AlertEvent.ALERT-USERVM.*.*", True),
    ("actionevent.#", "ActionEvent.VM-START.VirtualMachine.u1", False),  # case-sensitive
    ("#.#", "AlertEvent.ALERT-USERVM.*.*", True),
])
def test_examples(pattern: str, key: str, expected: bool) -> None:
    assert matches(pattern, key) is expected
    assert reference(pattern, key) is expected


def test_routes_parse_and_every_problem_is_named() -> None:
    routes = parse_routes("ActionEvent.*.Account.*=accounts, UsageEvent.#=usage-events")
    assert routes == [Route("ActionEvent.*.Account.*", "accounts"),
                      Route("UsageEvent.#", "usage-events")]
    key = "ActionEvent.ACCOUNT-DELETE.Account.u1"
    assert targets([*routes, Route("#", "all"), Route("#.u1", "all")], key) == [
        "accounts", "all"]
    with pytest.raises(ValueError, match="route keys have 4") as caught:
        parse_routes("UsageEvent.VM.START.*.*=vm,ActionEvent..x.y=t,a.b.c.d=bad topic,x")
    message = str(caught.value)
    assert "pattern 'UsageEvent.VM.START.*.*' has 5 words" in message
    assert "e.g. ActionEvent.VM-START.*.*), so it needs 4 words or a '#'" in message
    assert "pattern 'ActionEvent..x.y' has an empty word" in message
    assert "'bad topic' is not a valid Kafka topic name" in message
    assert "'x' is not PATTERN=TOPIC" in message
    assert pattern_problem("UsageEvent.VM.#") is None
    with pytest.raises(ValueError, match="no route given"):
        parse_routes("")


def test_routes_setting_refuses_loops_and_the_workers_topics() -> None:
    from metering.settings import SettingsError, load_settings

    ok = load_settings(env={"METERING_ROUTES": "AlertEvent.#=alerts"})
    assert parse_routes(ok.routes) == [Route("AlertEvent.#", "alerts")]
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"METERING_ROUTES": "AlertEvent.#=cs.b,UsageEvent.#=usage",
                           "METERING_INPUT_TOPICS": "cs.a=a,cs.b=b"})
    assert caught.value.problems == [
        "routes: target 'cs.b' is an input topic (records would loop)",
        "routes: target 'usage' is one of the worker's own topics"]
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"METERING_ROUTES": "UsageEvent.VM.START=vm"})
    assert caught.value.problems[0].startswith(
        "routes: pattern 'UsageEvent.VM.START' has 3 words; route keys have 4")
