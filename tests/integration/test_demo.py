"""``metering demo`` runs end to end on a real broker and stops cleanly."""

from __future__ import annotations

import re
import subprocess
import sys

from agents.localkafka import free_port


def test_demo_shows_usage_flowing_and_stops_cleanly(kafka_bootstrap: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agents", "demo", "--broker", kafka_bootstrap, "--duration", "25",
         "--rate", "400", "--every", "5", "--web-port", str(free_port())],
        capture_output=True, text=True, timeout=240, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    final = out[out.index("final summary"):]
    m = re.search(r"([\d,]+) records in .*?, ([\d,]+) intervals", final)
    assert m, final
    assert int(m.group(1).replace(",", "")) >= 2000
    assert int(m.group(2).replace(",", "")) > 0
    assert "RUNNING_VM" in final
    assert "rejects:" in final
    assert "demo stopped" in out
