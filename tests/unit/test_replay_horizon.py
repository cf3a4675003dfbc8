"""``metering replay``'s horizon cut is visible: a progress line while it runs, a notice
when ``--until`` lies far past the input, the newest event in the summary.

A ``--until`` a year past the input is legal (contract rule 10: every open resource gets a
piece per period up to it) but rarely meant: on the bench trace it is 5.4 million rows and
minutes of work, during which the progress line used to stand still at the input's end.
"""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from agents.cli import main
from agents.cli.progress import FAR_HORIZON_MS, ReplayDisplay
from metering.eventtime import iso, parse_iso_instant
from storage.replay import HorizonProgress, ReplayProgress
from tests.unit.test_replay_pipeline import simulate

DAY = 86_400_000
NEWEST = 1_741_910_400_000  # 2025-03-14T00:00:00Z


def horizon(until_ms: int | None, **kw: int | bool) -> ReplayProgress:
    fields: dict[str, int | bool] = {"resources": 10, "intervals": 25, "cut": 0, "rows": 0}
    fields.update(kw)
    return ReplayProgress(1_000, 5_000, 5_000, False,
                          HorizonProgress(until_ms, NEWEST, **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize("enabled", [True, False])
def test_a_far_horizon_gets_one_notice_with_the_rows_it_costs(enabled: bool) -> None:
    line, notices = io.StringIO(), io.StringIO()
    display = ReplayDisplay(enabled, line, period_ms=DAY, notices=notices)
    until = NEWEST + 40 * DAY + 1  # 41 periods of a day for each open interval
    display(horizon(until))
    display(horizon(until, cut=5, rows=200))
    display(horizon(until, cut=10, rows=1_025, done=True))
    text = notices.getvalue()
    assert text.count("note:") == 1  # once, at the start of the cut
    assert f"--until {iso(until)} is 40 days past the newest event ({iso(NEWEST)})" in text
    assert "each of the 25 intervals still open (of 10 resources)" in text
    assert "about 1,025 rows" in text
    assert "earlier --until" in text
    if enabled:  # the cut's own line, ending with its last report
        last = line.getvalue().split("\r")[-1]
        assert last.rstrip() == \
            f"replay: 1,000 records; horizon {iso(until)}: 100.0% of 10 open resources cut, " \
            "1,025 intervals"
        assert last.endswith("\n")
    else:
        assert line.getvalue() == ""


@pytest.mark.parametrize("until", [NEWEST + FAR_HORIZON_MS, NEWEST - DAY, None])
def test_a_near_horizon_or_none_gets_no_notice(until: int | None) -> None:
    notices = io.StringIO()
    display = ReplayDisplay(False, io.StringIO(), period_ms=DAY, notices=notices)
    display(horizon(until))
    assert notices.getvalue() == ""


def test_replay_command_notices_a_far_until_and_prints_the_newest_event(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    near = simulate(trace, seed=3, accounts=5, days=2)
    far = iso(parse_iso_instant(near) + 60 * DAY)
    for until, noticed in ((near, False), (far, True)):
        out = tmp_path / f"out-{noticed}"
        assert main(["replay", str(trace), "--output", str(out), "--until", until,
                     "--period", "day", "--no-progress"]) == 0
        captured = capsys.readouterr()
        assert ("days past the newest event" in captured.err) is noticed
        assert "newest event: 20" in captured.out
    assert main(["replay", str(trace), "--output", str(tmp_path / "json"), "--until", near,
                 "--json", "--no-progress"]) == 0
    summary = orjson.loads(capsys.readouterr().out)
    assert 0 < parse_iso_instant(near) - summary["newest_event_ms"] < 2 * DAY


def test_the_line_names_the_last_writes_and_covers_longer_lines() -> None:
    """After the cut, the line says the last parts are being written; each redraw covers
    what a longer line before it left on the terminal."""
    line = io.StringIO()
    display = ReplayDisplay(True, line, notices=io.StringIO())
    display(horizon(None, cut=10, rows=1_025, done=True))
    display(ReplayProgress(1_000, 5_000, 5_000, False, writing=True))
    display(ReplayProgress(1_000, 5_000, 5_000, True))
    drawn = line.getvalue().split("\r")[1:]
    assert drawn[0].startswith("replay: 1,000 records; horizon: 100.0% of 10")
    assert drawn[0].endswith("\n")  # the cut's line is kept
    assert drawn[1].rstrip() == "replay: 1,000 records; writing the last Parquet parts"
    assert drawn[2].startswith("replay: 100.0% 1,000 records")
    assert len(drawn[2].rstrip("\n")) >= len(drawn[1])  # padded over the longer line
