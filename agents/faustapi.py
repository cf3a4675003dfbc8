"""Typed entry points to the Faust APIs the agents use where Faust's own hints fall short.

faust-streaming (pinned < 0.16) ships type hints, but a few calls the agents need are too
loosely typed for mypy strict or missing from its abstract types:

* ``App.task`` and ``App.timer`` return a bare ``Callable``, so a function they decorate
  loses its type (:func:`task`, :func:`timer`);
* an agent is declared over ``StreamT``, which lacks ``take_events``; the stream it
  receives is a :class:`faust.Stream`, which has it (:func:`take_events`);
* signal receivers must accept ``(sender, *args, signal=..., **kwargs)``; the handlers
  here take just what they use (:func:`on_partitions_assigned`,
  :func:`on_partitions_revoked`, :func:`on_worker_init`);
* the aiokafka producer behind ``app.producer`` is reached through the driver's private
  ``_ensure_producer`` (:func:`kafka_producer`).

Each narrowing (a ``cast``) sits here once, with its reason. Nothing here changes what Faust
does: the same calls are made with the same arguments.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, cast

import aiokafka
import faust
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer
from faust.types import TP, EventT

TaskFun = Callable[[], Awaitable[None]]
"""A nullary ``async def`` function run by the app (a task or a timer)."""

PartitionsHandler = Callable[[set[TP]], Awaitable[None]]
"""``async def handler(partitions)`` for a rebalance signal (assigned or revoked)."""


def task(app: faust.App) -> Callable[[TaskFun], TaskFun]:
    """``@app.task``: run the decorated function once when the worker is ready."""
    # App.task is @no_type_check; called with a function it registers it and returns it.
    return cast(Callable[[TaskFun], TaskFun], app.task)


def timer(app: faust.App, interval: float,
          name: str | None = None) -> Callable[[TaskFun], TaskFun]:
    """``@app.timer(interval, name=name)``: run the decorated function every ``interval``
    seconds (``name``: the timer's name in Faust's logs; default the function's)."""
    # App.timer returns a bare Callable: a decorator that registers a nullary wrapper
    # (``around_timer(*args)``) of the function as a task and returns that wrapper.
    return cast(Callable[[TaskFun], TaskFun], app.timer(interval, name=name))


def take_events(stream: faust.StreamT[bytes], max_: int,
                within: float) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """``stream.take_events(max_, within=within)``: batches of at most ``max_`` events, each
    yielded at the latest ``within`` seconds after its first event."""
    # App.agent declares the agent's argument as StreamT; Faust passes a faust.Stream.
    return cast(faust.Stream[bytes], stream).take_events(max_, within=within)


def kafka_producer(app: faust.App) -> aiokafka.AIOKafkaProducer:
    """The aiokafka producer under ``app.producer`` (private API; raises ``NotReady``
    before the producer started). aiokafka has no type hints: the result is untyped."""
    # kafka:// brokers use the aiokafka driver, whose Producer holds the aiokafka producer.
    return cast(AIOKafkaDriverProducer, app.producer)._ensure_producer()


def on_partitions_assigned(app: faust.App) -> Callable[[PartitionsHandler], PartitionsHandler]:
    """Decorator: call ``handler(assigned)`` after each rebalance with the partitions
    assigned to this worker (``app.on_partitions_assigned``)."""

    def register(handler: PartitionsHandler) -> PartitionsHandler:
        async def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            await handler(*args)  # Faust sends (sender, assigned, signal=...)

        app.on_partitions_assigned.connect(receive)
        return handler

    return register


def on_partitions_revoked(app: faust.App) -> Callable[[PartitionsHandler], PartitionsHandler]:
    """Decorator: call ``handler(revoked)`` at each rebalance with the partitions taken
    from this worker (``app.on_partitions_revoked``)."""

    def register(handler: PartitionsHandler) -> PartitionsHandler:
        async def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            await handler(*args)  # Faust sends (sender, revoked, signal=...)

        app.on_partitions_revoked.connect(receive)
        return handler

    return register


def on_worker_init(app: faust.App) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Decorator: call ``handler()`` when the worker initialises, before it contacts Kafka
    (``app.on_worker_init``)."""

    def register(handler: Callable[[], None]) -> Callable[[], None]:
        def receive(sender: object, /, *args: Any, signal: object, **_: Any) -> None:
            handler()  # Faust sends (sender, signal=...)

        app.on_worker_init.connect(receive)
        return handler

    return register
