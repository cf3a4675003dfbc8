"""``metering demo`` runs end to end on a real broker and stops cleanly on Ctrl-C.

On its compressed clock (issue 16) it shows hours of usage per account and type, hourly
period cuts as they land, and leaves a PNG chart beside the archive.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agents.localkafka import free_port

SUMMARY = re.compile(r"^   ([\d,]+) intervals \(.*?, ([\d,.]+) usage hours")
CUT = re.compile(r"^   period cut landed: ")


def _why(lines: list[str], data_dir: Path) -> str:
    """The demo's last output lines and the tail of each log it writes (failure messages)."""
    parts = ["".join(lines[-60:])]
    for name in ("worker.log", "archive.log", "simulate.log"):
        path = data_dir / name
        tail = path.read_text(errors="replace").splitlines()[-30:] if path.exists() else []
        parts.append(f"--- {name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def test_demo_shows_hours_and_period_cuts_and_a_chart_and_stops_cleanly_on_ctrl_c(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo-data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents", "demo", "--broker", kafka_bootstrap, "--speed", "720",
         "--history", "8", "--every", "2", "--web-port", str(free_port()),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    flowing = threading.Event()
    cuts = 0

    def read() -> None:
        nonlocal cuts
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            cuts += bool(CUT.search(line))
            m = SUMMARY.search(line)
            # hours of usage (the compressed clock keeps simulated durations) and a cut
            if m and cuts >= 2 and float(m.group(2).replace(",", "")) >= 10:
                flowing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert flowing.wait(timeout=120), "no hours and cuts within 120 s:\n" + _why(
            lines, data_dir)
        deadline = time.monotonic() + 60
        while not list(data_dir.glob("archive/usage_date=*/*.parquet")):
            assert time.monotonic() < deadline, "nothing archived:\n" + _why(lines, data_dir)
            time.sleep(0.5)  # poll with a deadline
        children = _descendants(proc.pid)  # the worker, archive and simulator it started
        assert children, "the demo started no processes?"
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=90) == 0, _why(lines, data_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    out = "".join(lines)
    assert "Clock (compressed)" in out
    assert "so the worker keeps max_clock_skew" in out
    final = out[out.index("final summary"):]
    assert "RUNNING_VM" in final or "ALLOCATED_VM" in final
    assert re.search(r"^   top accounts", final, re.M), final
    assert re.search(r"^   period cuts: \d+ hour\(s\) cut", final, re.M), final
    assert "demo stopped" in out
    report = out[out.index("Archived usage per account"):]
    assert re.search(r"^account_id\s+intervals\s+hours$", report, re.M), report
    total = re.search(r"^TOTAL\s+([\d,]+)\s+([\d,.]+)$", report, re.M)
    assert total, report
    assert int(total[1].replace(",", "")) > 0
    assert float(total[2].replace(",", "")) >= 5  # hours, not seconds, of archived usage
    chart = data_dir / "usage-by-type.png"
    assert "Chart: usage hours per usage type per simulated hour" in report
    assert str(chart.resolve()) in report
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker and simulator are gone too
        left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
        if not left:
            break
        time.sleep(0.5)  # poll with a deadline
    assert not left, f"processes the demo started outlived it: {left}"



def _descendants(root: int) -> set[int]:
    """Pids of every live descendant of ``root`` (Linux /proc), not other processes of
    the machine (other tests or workers may run beside this one)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found
