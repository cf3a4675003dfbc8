"""Whether a running worker can make progress: output topics, broker, pending sends.

A send to a deleted topic, or to an unreachable broker, is retried by the producer without
end, so the agent waiting for its acknowledgement stalls without an error. This watch makes
that visible within :data:`REPORT_WITHIN` seconds: every :data:`CHECK_INTERVAL` seconds it
asks the broker for the topic list (with a :data:`REQUEST_TIMEOUT` deadline) and measures
how long the oldest delivery wait has lasted; the reasons
(:func:`metering.guards.liveness_problems`) go to the log when they change and to
``/readyz`` (503) while they last. Nothing is committed meanwhile: the batch waiting for
its sends is not acknowledged, so at-least-once holds when the sends resume (the topic
recreated, the broker back) or when the worker is restarted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from metering.guards import liveness_problems

log = logging.getLogger("metering.worker")

CHECK_INTERVAL = 5.0
"""Seconds between two checks of the broker's topic list."""
REQUEST_TIMEOUT = 5.0
"""Seconds a topic-list request may take before the broker counts as unreachable."""
STUCK_AFTER = 10.0
"""Seconds a send may wait for its acknowledgement before it is reported."""
REPORT_WITHIN = CHECK_INTERVAL + REQUEST_TIMEOUT + STUCK_AFTER
"""Upper bound, in seconds, from a problem to its report in the log and ``/readyz`` (20)."""


class Liveness:
    """Tracks pending sends and the broker's view of the topics this process writes to.

    Args:
        topics: the topics the process produces to (reported when missing).
        clients: returns a started aiokafka admin client (shared with the lag monitor).
    """

    def __init__(self, topics: set[str],
                 clients: Callable[[], Awaitable[Any]]) -> None:
        self.topics = topics
        self._clients = clients
        self._pending: dict[int, float] = {}
        self._ids = itertools.count()
        self.missing: set[str] = set()
        self.broker_error: str | None = None
        self.broker_failing_since: float | None = None
        self._reported: list[str] = []

    @contextmanager
    def sending(self) -> Iterator[None]:
        """Wrap a wait for delivery acknowledgements (its age is watched)."""
        token = next(self._ids)
        self._pending[token] = time.monotonic()
        try:
            yield
        finally:
            del self._pending[token]

    def problems(self) -> list[str]:
        """Why this process cannot make progress now (empty: nothing known)."""
        now = time.monotonic()
        oldest = min(self._pending.values(), default=None)
        return liveness_problems(
            missing_topics=self.missing, broker_error=self.broker_error,
            broker_down_s=0.0 if self.broker_failing_since is None
            else now - self.broker_failing_since,
            oldest_pending_s=None if oldest is None else now - oldest,
            stuck_after_s=STUCK_AFTER)

    async def _topics(self) -> set[str]:
        admin = await self._clients()
        return set(await admin.list_topics())

    async def check(self) -> None:
        """Ask the broker which topics exist; log the problems when they change."""
        started = time.monotonic()
        try:
            # One deadline for the client and the request together: REPORT_WITHIN budgets
            # one REQUEST_TIMEOUT per check (two sequential waits could take twice that).
            existing = await asyncio.wait_for(self._topics(), REQUEST_TIMEOUT)
        except Exception as exc:
            log.debug("liveness check failed after %.3f s: %r", time.monotonic() - started, exc)
            if self.broker_failing_since is None:
                self.broker_failing_since = time.monotonic()
            name, text = type(exc).__name__, str(exc)
            self.broker_error = text if text.startswith(name) else f"{name}: {text}".rstrip(": ")
        else:
            self.broker_error = None
            self.broker_failing_since = None
            self.missing = self.topics - existing
        problems = self.problems()
        kinds = [p.split(" (")[0].split(" for ")[0] for p in problems]  # without durations
        if kinds != self._reported:
            if problems:
                log.error("cannot make progress: %s", "; ".join(problems))
            else:
                log.info("progress possible again: the broker answers and every output "
                         "topic exists")
            self._reported = kinds
