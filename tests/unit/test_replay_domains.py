"""Replay fills ``domain_id`` of rows emitted before their account's ``ACCOUNT.CREATE`` was
read (rule 7: inputs need not be in time order across partitions). Found by the real-broker
worker-vs-replay tests after the writer moved to Arrow batches: filling raised
``ArrowInvalid`` (a chunked mask); nothing in the unit tests reached the fill."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.replay import ReplayOptions, run_replay
from tests.unit.test_contract_rules import ACCT, HOUR, T0, action, usage


@pytest.mark.parametrize("vms", [1, 5000])  # one Arrow batch, then several
def test_domains_learnt_after_the_rows_are_filled(tmp_path: Path, vms: int) -> None:
    lines = []
    for i in range(vms):
        lines += [usage("VM.CREATE", f"vm-{i}", T0), usage("VM.DESTROY", f"vm-{i}", T0 + HOUR)]
    lines.append(usage("VM.CREATE", "late-account-vm", T0, account="other-acct"))
    lines.append(usage("VM.DESTROY", "late-account-vm", T0 + HOUR, account="other-acct"))
    # ACCOUNT.CREATE of ACCT read last (its event time is earlier: another partition's)
    lines.append(action("ACCOUNT.CREATE", ACCT, T0 - HOUR, Domain="dom-1"))
    trace = tmp_path / "trace.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "dataset"
    summary = run_replay(ReplayOptions(inputs=[str(trace)], output=out))
    assert summary.files_written
    rows = [r for f in summary.files_written for r in pq.read_table(f).to_pylist()]
    assert len(rows) == vms + 1
    assert {r["domain_id"] for r in rows if r["account_id"] == ACCT} == {"dom-1"}
    assert {r["domain_id"] for r in rows if r["account_id"] == "other-acct"} == {None}
