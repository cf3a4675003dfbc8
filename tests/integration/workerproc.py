"""Run the real streaming worker (``metering worker``) as a subprocess for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from agents.localkafka import free_port


@dataclass
class WorkerProc:
    """One ``metering worker`` process with its own app id, topics and data directory."""

    bootstrap: str
    app_id: str
    input_topic: str
    data_dir: Path
    partitions: int = 4
    extra: dict[str, str] = field(default_factory=dict)
    web_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    command: str = "worker"
    """``worker`` or ``archive`` (the archive writes ``archive_dir``)."""
    fault: str | None = None
    """A crash point of :mod:`tests.integration.faults` to install, or None (no fault)."""
    faust_cli: bool = False
    """Start it with Faust's own command line (``faust -A agents.app worker``, or
    ``agents.archive``: the app built from the environment, no start-up checks)."""

    @property
    def archive_dir(self) -> Path:
        return self.data_dir.parent / "archive"

    @property
    def usage_topic(self) -> str:
        return f"{self.app_id}-usage"

    @property
    def rejects_topic(self) -> str:
        return f"{self.app_id}-rejected"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            METERING_BROKER=self.bootstrap,
            METERING_APP_ID=self.app_id,
            METERING_INPUT_TOPIC=self.input_topic,
            METERING_USAGE_TOPIC=self.usage_topic,
            METERING_REJECTS_TOPIC=self.rejects_topic,
            METERING_EVENTS_TOPIC=f"{self.app_id}-events",
            METERING_PARTITIONS=str(self.partitions),
            METERING_DATA_DIR=str(self.data_dir),
            METERING_WEB_PORT=str(self.web_port),
            METERING_ARCHIVE_WEB_PORT=str(self.web_port),
            METERING_ARCHIVE_DIR=str(self.archive_dir),
            METERING_BATCH_WITHIN="0.2",
            METERING_TICK_INTERVAL="0.5",
            METERING_SESSION_TIMEOUT="6",  # the broker's minimum: fast takeover after kill -9
        )
        env.update(self.extra)
        return env

    def start(self) -> WorkerProc:
        self.web_port = self.web_port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.app_id}-{int(time.time() * 1000)}.log"
        log = self.log_path.open("wb")
        entry = ["agents"] if self.fault is None else ["tests.integration.faults", self.fault]
        command = [*entry, self.command]
        if self.faust_cli:
            app = "agents.app" if self.command == "worker" else f"agents.{self.command}"
            command = ["faust", "-A", app, "worker"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", *command, "--loglevel", "info"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, deadline_s: float = 90.0) -> None:
        """Poll the worker's web port until it answers (Faust's web starts when ready)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited {self.process.returncode}:\n{self.tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.25)  # poll with a deadline
        raise AssertionError(f"worker not ready in {deadline_s}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def grep(self, *needles: str) -> str:
        """Lines of this process's log containing any of ``needles`` (for failure messages)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(line[:300] for line in self.log_path.read_text(
            errors="replace").splitlines() if any(n in line for n in needles))

    def metrics(self, *prefixes: str) -> str:
        """Lines of the process's ``/metrics`` starting with any of ``prefixes`` (or why not)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics",
                                        timeout=5) as resp:
                text = resp.read().decode()
        except OSError as exc:
            return f"(no metrics: {exc})"
        return "\n".join(line for line in text.splitlines() if line.startswith(prefixes))

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait (a clean Faust shutdown commits offsets)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
