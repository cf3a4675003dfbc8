"""``metering report``: usage per group, deduplicated, equal to an independent pandas groupby."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import orjson
import pandas as pd
import pytest

from agents.cli import main
from metering.intervals import UsageInterval, make_interval
from storage.compact import CompactOptions, run_compact
from storage.dataset import to_table
from storage.parts import partition_dir, write_atomic
from storage.report import usage_report

HOUR = 3_600_000
DAY_MS = 24 * HOUR
DAY0 = 1_741_910_400_000  # 2025-03-14T00:00:00Z
DATES = ("2025-03-14", "2025-03-15", "2025-03-16", "2025-03-17")
GROUPINGS = {
    ("account",): ["account_id"],
    ("usage_type",): ["usage_type", "usage_type_name"],
    ("day",): ["usage_date"],
    ("day", "account"): ["usage_date", "account_id"],
    ("account", "usage_type", "day"): ["account_id", "usage_type", "usage_type_name", "usage_date"],
}


def interval(i: int, day: int, *, offset: int | None = None) -> UsageInterval:
    start = DAY0 + day * DAY_MS + (i % 24) * HOUR
    return make_interval(
        usage_type=(1, 2, 3, 6)[i % 4],
        resource_id=f"res-{i:03d}",
        zone_id="z1",
        account_id=f"acct-{(i * 7) % 5}",
        domain_id=None,
        offering_id=None,
        template_id=None,
        start=start,
        end=start + (i % 7 + 1) * 360_000,
        period_start=start,
        final=False,
        close_reason="period",
        source_topic="events",
        source_partition=0,
        source_offset=i if offset is None else offset,
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Four days; every day has repeats across two files (exact and lineage-only)."""
    root = tmp_path / "ds"
    for day, date in enumerate(DATES):
        n = 40 + 10 * day
        write_atomic(
            to_table([interval(i, day) for i in range(n)]), partition_dir(root, date) / "a.parquet"
        )
        write_atomic(
            to_table([interval(i, day, offset=500 + i) for i in range(n - 15, n + 5)]),
            partition_dir(root, date) / "b.parquet",
        )
    return root


def pandas_truth(
    root: Path, columns: list[str], date_from: str | None = None, date_to: str | None = None
) -> dict[tuple[object, ...], tuple[int, float]]:
    """Computed independently: pandas reads the dataset, drops repeated ids, groups."""
    df = pd.read_parquet(root)
    df["usage_date"] = df["usage_date"].astype(str)
    if date_from:
        df = df[df["usage_date"] >= date_from]
    if date_to:
        df = df[df["usage_date"] <= date_to]
    df = df.drop_duplicates("interval_id")
    g = df.groupby(columns).agg(n=("interval_id", "count"), h=("raw_usage_hours", "sum"))
    out: dict[tuple[object, ...], tuple[int, float]] = {}
    for key, row in g.iterrows():
        k = key if isinstance(key, tuple) else (key,)
        out[tuple(v.item() if hasattr(v, "item") else v for v in k)] = (int(row.n), float(row.h))
    return out


def as_map(
    rows: list[dict[str, object]], columns: list[str]
) -> dict[tuple[object, ...], tuple[int, float]]:
    return {
        tuple(r[c] for c in columns): (int(r["intervals"]), float(r["hours"]))  # type: ignore[call-overload,arg-type]
        for r in rows
    }


def assert_same(
    got: dict[tuple[object, ...], tuple[int, float]],
    want: dict[tuple[object, ...], tuple[int, float]],
) -> None:
    assert got.keys() == want.keys()
    for k, (n, h) in want.items():
        assert got[k][0] == n, k
        assert got[k][1] == pytest.approx(h, rel=1e-12), k


@pytest.mark.parametrize("by", list(GROUPINGS), ids="+".join)
def test_report_equals_a_pandas_groupby(dataset: Path, by: tuple[str, ...]) -> None:
    columns = GROUPINGS[by]
    report = usage_report(dataset, by)
    assert report.columns == [*columns, "intervals", "hours"]
    assert_same(as_map(report.rows, columns), pandas_truth(dataset, columns))
    assert report.duplicates == 4 * 15
    assert report.conflicts == 0
    keys = [tuple(r[c] for c in columns) for r in report.rows]
    assert keys == sorted(keys)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("date_from", "date_to", "days"),
    [
        ("2025-03-15", "2025-03-16", 2),  # --to is inclusive
        ("2025-03-16", None, 2),
        (None, "2025-03-14", 1),
        ("2025-03-17", "2025-03-17", 1),
        ("2025-04-01", None, 0),
    ],
)
def test_from_and_to_select_partitions_inclusively(
    dataset: Path, date_from: str | None, date_to: str | None, days: int
) -> None:
    report = usage_report(dataset, ["day", "account"], date_from, date_to)
    assert report.days == days
    assert {r["usage_date"] for r in report.rows} == set(
        d for d in DATES if (not date_from or d >= date_from) and (not date_to or d <= date_to)
    )
    assert_same(
        as_map(report.rows, ["usage_date", "account_id"]),
        pandas_truth(dataset, ["usage_date", "account_id"], date_from, date_to) if days else {},
    )


def test_conflicts_count_the_version_compaction_keeps(dataset: Path) -> None:
    short = interval(3, 0)
    long = short._replace(
        end=short.end + HOUR,
        duration_ms=short.duration_ms + HOUR,
        raw_usage_hours=short.raw_usage_hours + 1,
        source_offset=900,
    )
    write_atomic(to_table([long]), partition_dir(dataset, DATES[0]) / "c.parquet")
    before = usage_report(dataset, ["usage_type", "day"])
    assert before.conflicts == 1
    run_compact(CompactOptions(dataset, on_conflict="keep-latest", now_ms=DAY0 + 30 * DAY_MS))
    after = usage_report(dataset, ["usage_type", "day"])
    assert (after.duplicates, after.conflicts) == (0, 0)
    assert after.rows == before.rows
    assert before.total_hours == pytest.approx(
        sum(pandas_truth(dataset, ["usage_date"]).get((d,), (0, 0.0))[1] for d in DATES)
    )


# ---------------------------------------------------------------------------- CLI


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_csv_and_json_parse_and_agree(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys, str(dataset), "--by", "account", "--by", "usage_type", "--format", "csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["account_id", "usage_type", "usage_type_name", "intervals", "hours"]
    from_csv = {
        (r["account_id"], int(r["usage_type"]), r["usage_type_name"]): (
            int(r["intervals"]),
            float(r["hours"]),
        )
        for r in rows
    }
    assert_same(from_csv, pandas_truth(dataset, ["account_id", "usage_type", "usage_type_name"]))

    code, out, _ = cli(
        capsys, str(dataset), "--by", "account", "--by", "usage_type", "--format", "json"
    )
    assert code == 0
    doc = json.loads(out)
    from_json = as_map(doc["groups"], ["account_id", "usage_type", "usage_type_name"])
    assert from_json == from_csv  # csv hours are written at full precision
    assert doc["total"]["intervals"] == sum(n for n, _ in from_csv.values())
    assert doc["duplicates_dropped"] == 60
    assert doc["to_inclusive"] is True


def test_table_is_aligned_with_a_total_row(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, str(dataset), "--from", "2025-03-15", "--to", "2025-03-15")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["account_id", "intervals", "hours"]
    assert lines[-1].startswith("TOTAL")
    assert len({len(line) for line in lines}) == 1  # numbers right-aligned to one edge
    truth = pandas_truth(dataset, ["usage_date"], "2025-03-15", "2025-03-15")[("2025-03-15",)]
    total = lines[-1].split()
    assert int(total[1].replace(",", "")) == truth[0]
    assert float(total[2].replace(",", "")) == pytest.approx(truth[1], abs=5e-4)
    assert "counted once" in err


def test_missing_or_empty_dir_and_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, str(tmp_path / "nope"))
    assert (code, out) == (3, "")
    assert "no such dataset directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, str(tmp_path / "empty"))
    assert code == 3
    assert "no usage_date=YYYY-MM-DD partition" in err
    for bad in (
        ["--from", "2025-03-10", "--to", "2025-03-01"],
        ["--from", "March"],
        ["--by", "zone"],
        ["--format", "xml"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(["report", str(tmp_path / "empty"), *bad])
        assert exc.value.code == 2


def test_unreadable_file_is_an_input_error(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (partition_dir(dataset, DATES[1]) / "broken.parquet").write_bytes(b"not parquet")
    code, _, err = cli(capsys, str(dataset))
    assert code == 3
    assert "cannot read" in err
    code, _, _ = cli(capsys, str(dataset), "--to", DATES[0])  # pruned: never opened
    assert code == 0


def test_report_of_a_replayed_simulation_survives_compaction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, truth, out = tmp_path / "t.jsonl", tmp_path / "t.json", tmp_path / "ds"
    assert (
        main(
            [
                "simulate",
                "--accounts",
                "4",
                "--days",
                "2",
                "--seed",
                "5",
                "--output",
                str(trace),
                "--truth",
                str(truth),
                "--no-progress",
            ]
        )
        == 0
    )
    until = orjson.loads(truth.read_bytes())["until"]
    for _ in range(2):  # the second replay of the same input replaces, not duplicates
        assert (
            main(["replay", str(trace), "--output", str(out), "--until", until, "--no-progress"])
            == 0
        )
    capsys.readouterr()
    code, before, _ = cli(capsys, str(out), "--by", "day", "--by", "usage_type", "--format", "json")
    assert code == 0
    doc = json.loads(before)
    columns = ["usage_date", "usage_type", "usage_type_name"]
    assert_same(as_map(doc["groups"], columns), pandas_truth(out, columns))
    assert main(["compact", str(out)]) == 0
    capsys.readouterr()
    code, after, _ = cli(capsys, str(out), "--by", "day", "--by", "usage_type", "--format", "json")
    assert json.loads(after)["groups"] == doc["groups"]
