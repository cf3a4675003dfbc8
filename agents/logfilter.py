"""Keep the log readable while a library repeats itself, and tracebacks in one record.

While the broker is down, aiokafka logs every failed connect, metadata update and fetch at
ERROR, as often as its retry loops spin: tens of lines a second while the worker waits, and
a tight loop after SIGTERM has logged ~6 000 lines a second (115 847 lines in one 28 s
test run). :class:`RepeatFilter` lets the first record of each (logger, message template)
through, then at most one per :data:`INTERVAL_S` seconds; the next one let through says how
many were held back: ``... (1234 similar messages suppressed in the last 10 s)``. Records
of the project's own loggers (:data:`OWN_LOGGERS`: ``metering.*`` and the Faust services
defined in ``agents``) always pass, whatever their level: what the project reports (e.g.
``cannot make progress: broker unreachable``) is never thinned out.

mode's worker replaces ``sys.stderr`` by a proxy that logs every ``write`` call as one
WARNING record; the interpreter's default thread and "unraisable" exception hooks write a
traceback in pieces (a caret line ``^^^^`` one character per call), so an exception in the
consumer thread became ~100 WARNING lines of one or two characters.
:func:`log_thread_exceptions` installs hooks that log such an exception as one ERROR record
(message and the whole traceback) on ``metering.worker``.

:func:`install` does both; the worker and the archive call it once logging is configured
(``agents.faustapi``), ``metering route`` after its ``basicConfig``. Importing this module
changes nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable

INTERVAL_S = 10.0
"""Seconds: after a record is let through, others of its (logger, template) are held back
for this long."""
OWN_LOGGERS = ("metering", "agents", "storage")
"""Logger names (and their children) never suppressed: the project's own."""
MAX_KEYS = 4096
"""(logger, template) pairs tracked at most; quiet ones are forgotten first."""

_DECIDED = "_metering_repeat_filter"
"""Record attribute holding this filter's decision (one record may reach several handlers)."""

log = logging.getLogger("metering.worker")


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class _Seen:
    """A (logger, template) pair: when a record of it last passed, how many were held."""

    __slots__ = ("passed_at", "suppressed")

    def __init__(self, passed_at: float) -> None:
        self.passed_at = passed_at
        self.suppressed = 0


class RepeatFilter(logging.Filter):
    """Let through the first record of each (logger name, message template), then at most
    one per ``interval_s`` seconds, with the count of those held back appended to it.

    Args:
        interval_s: seconds between two records of one (logger, template) let through.
        clock: monotonic seconds (injected by tests; :func:`time.monotonic` otherwise).

    The template is the record's unformatted ``msg`` (``"Unable connect to node with id
    %s: %s"``), so the same message about different nodes or errors counts as similar.
    Thread-safe (the consumer thread logs too); one instance may sit on several handlers.
    """

    def __init__(self, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        decided = record.__dict__.get(_DECIDED)
        if decided is not None:
            return bool(decided)
        keep = _is_own(record.name) or self._decide(record)
        record.__dict__[_DECIDED] = keep
        return keep

    def _decide(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen.passed_at < self.interval_s:
                seen.suppressed += 1
                return False
            if seen is None:
                if len(self._seen) >= MAX_KEYS:
                    self._forget_quiet(now)
                self._seen[key] = _Seen(now)
                return True
            held, since = seen.suppressed, now - seen.passed_at
            seen.passed_at, seen.suppressed = now, 0
        if held:
            record.msg = (f"{record.msg} ({held} similar message{'s' * (held != 1)} "
                          f"suppressed in the last {since:.0f} s)")
        return True

    def _forget_quiet(self, now: float) -> None:
        """Drop the pairs whose next record would pass anyway and that hold nothing back;
        if that frees nothing, the oldest (their held-back counts are lost, not records)."""
        quiet = [k for k, s in self._seen.items()
                 if not s.suppressed and now - s.passed_at >= self.interval_s]
        for k in quiet or sorted(self._seen, key=lambda k: self._seen[k].passed_at)[
                :len(self._seen) // 2]:
            del self._seen[k]


def install_filter(handlers: Iterable[logging.Handler],
                   repeat_filter: RepeatFilter | None = None) -> RepeatFilter:
    """Add one :class:`RepeatFilter` (``repeat_filter`` or a new one) to each handler that
    has none yet; returns the filter in use."""
    handlers = list(handlers)
    present = [f for h in handlers for f in h.filters if isinstance(f, RepeatFilter)]
    chosen = repeat_filter or (present[0] if present else RepeatFilter())
    for handler in handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(chosen)
    return chosen


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: the exception as one ERROR record, traceback included."""
    if args.exc_type is SystemExit:
        return  # what the default hook does too
    name = args.thread.name if args.thread is not None else threading.get_ident()
    log.error("thread %s stopped by an uncaught %s", name, args.exc_type.__name__,
              exc_info=args.exc_value or True)


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook`` (an exception in ``__del__``, a finalizer, a callback): one
    WARNING record with the traceback, instead of the default hook's piecewise writes."""
    what = args.err_msg or "Exception ignored in"
    log.warning("%s: %r", what, args.object, exc_info=args.exc_value)


def log_thread_exceptions() -> None:
    """Route uncaught thread exceptions and unraisable exceptions to the log as one record
    each (see the module's docstring)."""
    threading.excepthook = _log_thread_exception
    sys.unraisablehook = _log_unraisable


def install(handlers: Iterable[logging.Handler]) -> RepeatFilter:
    """Both: the repeat filter on ``handlers`` (the root logger's, once they are set up) and
    the exception hooks. Calling it again adds nothing."""
    log_thread_exceptions()
    return install_filter(handlers)
