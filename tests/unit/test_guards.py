"""The worker's start-up and liveness decisions (:mod:`metering.guards`), pure."""

from __future__ import annotations

from metering.guards import (
    Grid,
    GridAction,
    grid_decision,
    liveness_problems,
    partition_problems,
    partition_refusal,
)

HOUR = Grid("hour", "UTC")
DAY = Grid("day", "UTC")
PARIS = Grid("hour", "Europe/Paris")


def test_partition_counts_equal_to_the_setting_pass() -> None:
    assert partition_problems(4, {"ev": 4, "ev-changelog": 4}) == []
    assert partition_problems(4, {}) == []  # nothing exists yet: the worker creates it


def test_fewer_or_more_partitions_than_existing_topics_are_named() -> None:
    for configured in (2, 8):
        problems = partition_problems(configured, {"m-events": 4, "m-entities-changelog": 4})
        assert problems == [
            f"topic 'm-entities-changelog' has 4 partitions, but partitions={configured} is "
            "configured",
            f"topic 'm-events' has 4 partitions, but partitions={configured} is configured"]
        message = partition_refusal(configured, {"m-events": 4, "m-entities-changelog": 4})
        assert "--partitions 4" in message
        assert "METERING_PARTITIONS=4" in message
        assert "cannot shrink" in message
        assert "new app id" in message


def test_topics_that_disagree_among_themselves_are_not_given_one_count() -> None:
    message = partition_refusal(4, {"m-events": 4, "m-entities-changelog": 8})
    assert "--partitions" not in message
    assert "disagree" in message


def test_grid_round_trips_and_foreign_records_are_unreadable() -> None:
    assert Grid.decode(PARIS.encode()) == PARIS
    for raw in (b"", b"{", b"[]", b'{"v": 2, "period": "hour", "timezone": "UTC"}',
                b'{"v": 1, "period": 3, "timezone": "UTC"}'):
        assert Grid.decode(raw) is None


def test_new_state_records_the_configured_grid() -> None:
    assert grid_decision(None, HOUR, False, False).action is GridAction.RECORD
    # a stale record without state (topics deleted) does not refuse a fresh start
    assert grid_decision(DAY, HOUR, False, False).action is GridAction.RECORD


def test_same_grid_is_kept() -> None:
    assert grid_decision(HOUR, HOUR, True, False).action is GridAction.KEEP
    assert grid_decision(HOUR, HOUR, True, True).action is GridAction.KEEP


def test_state_from_before_grids_were_stored_records_the_configured_one() -> None:
    decision = grid_decision(None, HOUR, True, False)
    assert decision.action is GridAction.RECORD
    assert "before grids were recorded" in decision.message


def test_period_or_timezone_change_is_refused_naming_both() -> None:
    for stored, configured in ((HOUR, DAY), (HOUR, PARIS), (PARIS, HOUR)):
        decision = grid_decision(stored, configured, True, False)
        assert decision.action is GridAction.REFUSE
        assert f"built with {stored}, but {configured} is configured" in decision.message
        assert "force_period_change" in decision.message


def test_forced_change_is_accepted_with_a_warning_message() -> None:
    decision = grid_decision(HOUR, DAY, True, True)
    assert decision.action is GridAction.FORCE
    assert "period=hour timezone=UTC" in decision.message
    assert "period=day timezone=UTC" in decision.message


def test_unreadable_grid_record_is_refused_unless_forced() -> None:
    assert grid_decision(None, HOUR, True, False, unreadable=True).action is GridAction.REFUSE
    assert grid_decision(None, HOUR, True, True, unreadable=True).action is GridAction.FORCE


def test_liveness_problems() -> None:
    ok = liveness_problems(missing_topics=(), broker_error=None, broker_down_s=0,
                           oldest_pending_s=3.0, stuck_after_s=10)
    assert ok == []
    problems = liveness_problems(missing_topics=["usage", "rejects"],
                                 broker_error="TimeoutError", broker_down_s=12.4,
                                 oldest_pending_s=15.2, stuck_after_s=10)
    assert problems[0] == "broker unreachable for 12 s (TimeoutError)"
    assert problems[1].startswith("topic 'rejects' does not exist")
    assert problems[2].startswith("topic 'usage' does not exist")
    assert problems[3] == "sends unacknowledged for 15 s"
