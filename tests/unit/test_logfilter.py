"""agents.logfilter: repeated library messages thinned out, the project's own never; a thread's
traceback logged as one record even when stderr is mode's logging proxy. A fake clock: no
sleeps."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
from mode.utils.logging import FileLogProxy

from agents import logfilter
from agents.logfilter import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def setup() -> Iterator[tuple[Clock, Captured, RepeatFilter]]:
    """A handler on a private logger tree, filtered with a fake clock (10 s interval)."""
    clock = Clock()
    handler = Captured()
    flt = logfilter.install_filter([handler], RepeatFilter(10.0, clock))
    top = logging.getLogger("lftest")
    top.addHandler(handler)
    top.setLevel(logging.DEBUG)
    yield clock, handler, flt
    top.removeHandler(handler)


def _lib(name: str = "aiokafka.client") -> logging.Logger:
    return logging.getLogger(f"lftest.{name}")


def test_first_passes_then_one_per_interval_with_the_count(
        setup: tuple[Clock, Captured, RepeatFilter]) -> None:
    clock, handler, _ = setup
    lib = _lib()
    for i in range(100):  # every 10 ms for 1 s
        lib.error("Unable connect to node with id %s: %s", 1, f"refused {i}")
        clock.now += 0.01
    assert handler.messages() == ["Unable connect to node with id 1: refused 0"]
    clock.now = 1010.0  # 10 s after the first
    lib.error("Unable connect to node with id %s: %s", 1, "refused last")
    assert handler.messages()[1:] == [
        "Unable connect to node with id 1: refused last "
        "(99 similar messages suppressed in the last 10 s)"]
    clock.now += 30.0  # quiet for longer than the interval: the next passes, no count
    lib.error("Unable connect to node with id %s: %s", 1, "again")
    assert handler.messages()[2:] == ["Unable connect to node with id 1: again"]


def test_just_before_the_interval_is_held_back(
        setup: tuple[Clock, Captured, RepeatFilter]) -> None:
    clock, handler, _ = setup
    _lib().warning("retrying")
    clock.now = 1009.999
    _lib().warning("retrying")
    clock.now = 1010.0
    _lib().warning("retrying")
    assert handler.messages() == [
        "retrying", "retrying (1 similar message suppressed in the last 10 s)"]


def test_templates_and_loggers_are_counted_apart(
        setup: tuple[Clock, Captured, RepeatFilter]) -> None:
    _, handler, _ = setup
    for _ in range(5):
        _lib("aiokafka.client").error("Unable connect to node with id %s", 1)
        _lib("aiokafka.client").error("Unable to update metadata from %s", [1])
        _lib("aiokafka.consumer.fetcher").error("Unable connect to node with id %s", 1)
    assert handler.messages() == ["Unable connect to node with id 1",
                                  "Unable to update metadata from [1]",
                                  "Unable connect to node with id 1"]
    assert [r.name for r in handler.records] == [
        "lftest.aiokafka.client", "lftest.aiokafka.client", "lftest.aiokafka.consumer.fetcher"]


@pytest.mark.parametrize("name", ["metering", "metering.worker", "agents.pipeline",
                                  "storage.archive"])
@pytest.mark.parametrize("level", [logging.INFO, logging.ERROR, logging.CRITICAL])
def test_the_projects_own_records_always_pass(name: str, level: int) -> None:
    flt = RepeatFilter(10.0, Clock())
    records = [logging.LogRecord(name, level, __file__, 1, "cannot make progress: %s",
                                 ("broker unreachable",), None) for _ in range(50)]
    assert all(flt.filter(r) for r in records)


def test_a_library_error_is_thinned_out_too() -> None:
    """Only the project's loggers are exempt: aiokafka's ERROR records are the flood."""
    flt = RepeatFilter(10.0, Clock())
    records = [logging.LogRecord("aiokafka.conn", logging.ERROR, __file__, 1, "x %s", (i,),
                                 None) for i in range(3)]
    assert [flt.filter(r) for r in records] == [True, False, False]


def test_one_record_reaching_two_handlers_is_decided_once() -> None:
    """The same record through two handlers sharing the filter: both emit it, the count and
    the annotation are not doubled."""
    clock = Clock()
    first, second = Captured(), Captured()
    logfilter.install_filter([first, second], RepeatFilter(10.0, clock))
    lib = logging.getLogger("lftest2.kafka")
    lib.propagate = False
    for h in (first, second):
        lib.addHandler(h)
    try:
        lib.error("down")
        lib.error("down")
        clock.now += 10.0
        lib.error("down")
    finally:
        for h in (first, second):
            lib.removeHandler(h)
    expected = ["down", "down (1 similar message suppressed in the last 10 s)"]
    assert first.messages() == expected
    assert second.messages() == expected


def test_install_filter_twice_adds_nothing() -> None:
    handler = Captured()
    flt = logfilter.install_filter([handler])
    assert logfilter.install_filter([handler]) is flt
    assert handler.filters == [flt]


def test_many_distinct_templates_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfilter, "MAX_KEYS", 100)
    clock = Clock()
    flt = RepeatFilter(10.0, clock)
    for i in range(1000):  # e.g. lines printed to stderr, each different
        assert flt.filter(logging.LogRecord("mode.redirect", logging.WARNING, __file__, 1,
                                            f"line {i}", None, None))
        clock.now += 0.001
    assert len(flt._seen) <= 100


# --- a thread's traceback: one record, also with stderr redirected to the log -------------

def _crash_a_thread() -> None:
    def boom() -> None:
        [].pop()  # IndexError with a caret line in its traceback

    t = threading.Thread(target=boom, name="Thread-boom")
    t.start()
    t.join()


@contextlib.contextmanager
def redirected() -> Iterator[Captured]:
    """sys.stderr replaced by mode's FileLogProxy, as Faust's worker does (--loglevel info:
    redirect_stdouts on); records of mode.redirect and metering.worker captured. Entered in
    the test's body (pytest sets sys.stderr again at the start of each test phase)."""
    handler = Captured()
    loggers = [logging.getLogger("mode.redirect"), logging.getLogger("metering.worker")]
    for lg in loggers:
        lg.addHandler(handler)
    old = (sys.stderr, threading.excepthook, sys.unraisablehook)
    sys.stderr = FileLogProxy(loggers[0], severity=logging.WARNING)
    try:
        yield handler
    finally:
        sys.stderr, threading.excepthook, sys.unraisablehook = old
        for lg in loggers:
            lg.removeHandler(handler)


def test_default_hook_logs_a_traceback_in_pieces() -> None:
    """What the worker's log showed ("Exception in thread", "Thread-1", ":", "^" ...): the
    interpreter's hook writes piecewise and the proxy logs each write."""
    with redirected() as captured:
        threading.excepthook = threading.__excepthook__
        _crash_a_thread()
    pieces = captured.messages()
    assert len(pieces) > 10, pieces
    assert "Thread-boom" in pieces, pieces
    assert "^" in pieces, pieces  # one caret per write


def test_thread_exception_is_one_error_record_with_the_traceback() -> None:
    with redirected() as captured:
        logfilter.log_thread_exceptions()
        _crash_a_thread()
    assert len(captured.records) == 1, captured.messages()
    record = captured.records[0]
    assert record.name == "metering.worker"
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "thread Thread-boom stopped by an uncaught IndexError"
    text = logging.Formatter().format(record)
    assert "Traceback (most recent call last):" in text
    assert "[].pop()" in text
    assert "IndexError: pop from empty list" in text


def test_unraisable_exception_is_one_record() -> None:
    class Bad:
        def __del__(self) -> None:
            raise ValueError("in __del__")

    with redirected() as captured:
        logfilter.log_thread_exceptions()
        Bad()  # collected at once (CPython refcounting): __del__ raises, unraisable
    assert len(captured.records) == 1, captured.messages()
    record = captured.records[0]
    assert record.levelno == logging.WARNING
    assert "Bad.__del__" in record.getMessage()
    assert "ValueError: in __del__" in logging.Formatter().format(record)


def test_system_exit_in_a_thread_is_silent() -> None:
    with redirected() as captured:
        logfilter.log_thread_exceptions()
        t = threading.Thread(target=sys.exit)
        t.start()
        t.join()
    assert captured.records == []


def test_the_worker_installs_both_once_logging_is_set_up() -> None:
    """Faust's root-logger hook (patched by agents.faustapi) adds the filter to the root
    handlers mode configured, and the thread hook."""
    import faust

    from agents.faustapp import make_app
    from metering.settings import Settings

    app = make_app(Settings(), app_id="logfilter-test")
    worker = faust.Worker(app, loglevel="info")
    root = logging.getLogger("logfilter-test-root")
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    old = (threading.excepthook, sys.unraisablehook)
    try:
        worker.on_setup_root_logger(root, logging.INFO)
        assert [type(f) for f in handler.filters] == [RepeatFilter]
        assert threading.excepthook is logfilter._log_thread_exception
    finally:
        threading.excepthook, sys.unraisablehook = old
        root.removeHandler(handler)
