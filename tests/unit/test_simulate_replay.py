"""End to end without a broker: ``metering simulate`` traces replayed give exactly the truth."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from agents.cli import main
from metering.eventtime import datetime_to_ms
from metering.periods import PeriodGrid
from metering.simulate.truth import totals_from_intervals, truth_totals
from storage.dataset import read_dataset


@pytest.mark.parametrize(
    ("seed", "fmt", "offsets", "period", "tz"),
    [
        (1, "jsonl", "+0530", "hour", "UTC"),
        (2, "kcat", "+0000,-0700", "day", "Asia/Kolkata"),
        (3, "jsonl", "-0700", "hour", "America/New_York"),
    ],
)
def test_replay_of_a_simulated_cloud_equals_its_truth(
    tmp_path: Path, seed: int, fmt: str, offsets: str, period: str, tz: str
) -> None:
    trace = tmp_path / ("trace.jsonl.gz" if fmt == "kcat" else "trace.jsonl")
    truth_file, out, rejects = tmp_path / "truth.json", tmp_path / "out", tmp_path / "rej.jsonl"
    assert main(["simulate", "--accounts", "30", "--days", "4", "--seed", str(seed),
                 "--format", fmt, f"--tz-offset={offsets}", "--malformed", "0.003",
                 "--output", str(trace), "--truth", str(truth_file), "--no-progress"]) == 0
    truth = orjson.loads(truth_file.read_bytes())
    assert main(["replay", str(trace), "--output", str(out), "--until", truth["until"],
                 "--period", period, "--timezone", tz, "--rejects", str(rejects),
                 "--no-progress"]) == 0

    rows = read_dataset(out).to_pylist()
    for r in rows:
        r["duration_ms"] = int(r["duration_ms"])
    got, want = totals_from_intervals(rows), truth_totals(truth)
    assert sum(want.values()) > 0
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want)
            if got.get(k) != want.get(k)}
    assert not diff, f"{len(diff)} resources differ from the truth, e.g. {list(diff.items())[:5]}"

    # every malformed record, and nothing else, is rejected with the expected reason
    rejected = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    if fmt == "kcat":
        expected = {(m["partition"], m["offset"]): m["reason"] for m in truth["malformed"]}
        actual = {(r["partition"], r["offset"]): r["reason"] for r in rejected}
    else:
        expected = {(0, m["index"]): m["reason"] for m in truth["malformed"]}
        actual = {(r["partition"], r["offset"]): r["reason"] for r in rejected}
    assert len(expected) >= 4
    assert actual == expected

    # enrichment and periods: domains from ACCOUNT.CREATE, no interval crosses a boundary
    grid = PeriodGrid(period, tz)  # type: ignore[arg-type]
    domains = {a: v["domain_id"] for a, v in truth["accounts"].items()}
    for r in rows:
        assert r["domain_id"] == domains[r["account_id"]]
        start, end = datetime_to_ms(r["start"]), datetime_to_ms(r["end"])
        assert grid.floor(start) == datetime_to_ms(r["period_start"])
        assert end <= grid.next_boundary(start)
