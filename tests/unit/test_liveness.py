"""agents.liveness: one check of the broker keeps within one REQUEST_TIMEOUT."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agents import liveness
from agents.liveness import Liveness


class _SlowAdmin:
    async def list_topics(self) -> list[str]:
        await asyncio.sleep(0.15)
        return ["usage"]


async def _slow_clients() -> Any:
    await asyncio.sleep(0.15)
    return _SlowAdmin()


def test_client_and_request_share_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # each step alone is within the deadline, both together are not: REPORT_WITHIN budgets
    # one REQUEST_TIMEOUT per check, so the check must count the broker as unreachable
    monkeypatch.setattr(liveness, "REQUEST_TIMEOUT", 0.2)
    watch = Liveness({"usage"}, _slow_clients)
    asyncio.run(watch.check())
    assert watch.broker_error is not None
    assert watch.problems()[0].startswith("broker unreachable")


def test_a_prompt_answer_clears_the_error() -> None:
    async def clients() -> Any:
        return _SlowAdmin()

    watch = Liveness({"usage", "rejects"}, clients)
    asyncio.run(watch.check())
    assert watch.broker_error is None
    assert watch.problems() == ["topic 'rejects' does not exist: sends to it wait; recreate it "
                                "(or restart the worker, which creates it)"]
