"""``metering demo`` runs end to end on a real broker and stops cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agents.localkafka import free_port

SUMMARY = re.compile(r"── after .*?: ([\d,]+) records in .*?, ([\d,]+) intervals")


def test_demo_shows_usage_flowing_and_stops_cleanly_on_ctrl_c(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "demo-data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents", "demo", "--broker", kafka_bootstrap, "--rate", "400",
         "--every", "2", "--web-port", str(free_port()), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    flowing = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = SUMMARY.search(line)
            if m and int(m.group(2).replace(",", "")) > 0 and int(
                    m.group(1).replace(",", "")) >= 1000:
                flowing.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert flowing.wait(timeout=180), "no usage within 180 s:\n" + "".join(lines[-60:])
        deadline = time.monotonic() + 60
        while not list(data_dir.glob("archive/usage_date=*/*.parquet")):
            assert time.monotonic() < deadline, "nothing archived:\n" + "".join(lines[-60:])
            time.sleep(0.5)  # poll with a deadline
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=90) == 0, "".join(lines[-60:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=10)
    out = "".join(lines)
    final = out[out.index("final summary"):]
    assert "RUNNING_VM" in final or "ALLOCATED_VM" in final
    assert "demo stopped" in out
    report = out[out.index("Archived usage per account"):]
    assert re.search(r"^account_id\s+intervals\s+hours$", report, re.M), report
    total = re.search(r"^TOTAL\s+([\d,]+)\s+([\d,.]+)$", report, re.M)
    assert total, report
    assert int(total[1].replace(",", "")) > 0  # per-account hours of the archived intervals
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the worker and simulator are gone too
        left = subprocess.run(["pgrep", "-f", "agents (worker|archive|simulate) "],
                              capture_output=True, text=True, check=False).stdout
        if not left.strip():
            break
        time.sleep(0.5)
    assert not left.strip()
