"""``notebooks/usage-analysis.ipynb`` runs headless (nbclient) on a replayed simulated cloud and
its total agrees with the dataset read independently; the committed file has no outputs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK = NOTEBOOKS / "usage-analysis.ipynb"
TOTAL = re.compile(r"^total usage hours: ([0-9.]+)$", re.MULTILINE)


def _metering(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agents", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small seeded cloud replayed to Parquet, plus one partition file delivered twice (as
    an archive holds repeats until it is compacted)."""
    root = tmp_path_factory.mktemp("notebook")
    trace, truth, out = root / "trace.jsonl", root / "truth.json", root / "usage"
    _metering(
        "simulate",
        "--accounts",
        "12",
        "--days",
        "3",
        "--seed",
        "11",
        "--output",
        str(trace),
        "--truth",
        str(truth),
        "--no-progress",
    )
    until = json.loads(truth.read_text())["until"]
    _metering("replay", str(trace), "--output", str(out), "--until", until, "--no-progress")
    first = sorted(out.glob("usage_date=*/*.parquet"))[0]
    shutil.copyfile(first, first.with_name("repeat-" + first.name))
    return out


def _execute(monkeypatch: pytest.MonkeyPatch, dataset: Path) -> nbformat.NotebookNode:
    monkeypatch.setenv("METERING_DATASET", str(dataset))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_notebook_runs_and_its_total_matches_the_dataset(
    monkeypatch: pytest.MonkeyPatch, dataset: Path
) -> None:
    nb = _execute(monkeypatch, dataset)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5

    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    totals = TOTAL.findall(text)
    assert len(totals) == 1, text
    assert "agrees with pandas" in text

    table = ds.dataset(str(dataset), format="parquet", partitioning="hive").to_table()
    unique = table.group_by("interval_id").aggregate([("raw_usage_hours", "max")])
    assert table.num_rows > unique.num_rows > 0  # the repeats are there, and dropped
    want = pc.sum(unique.column("raw_usage_hours_max")).as_py()
    assert float(totals[0]) == pytest.approx(want, rel=1e-9, abs=1e-6)


def test_notebook_explains_a_dataset_without_partitions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(CellExecutionError, match="no usage_date=YYYY-MM-DD partitions"):
        _execute(monkeypatch, tmp_path)


def test_committed_notebook_has_outputs_stripped() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 7
    for cell in code:
        assert cell.outputs == []
        assert cell.execution_count is None
        assert "widgets" not in cell.metadata
