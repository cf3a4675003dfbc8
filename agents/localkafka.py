"""A real, local, single-node Apache Kafka broker (KRaft) started from Maven Central jars.

Used by the integration tests, ``make demo`` and ``make kafka-up``; no Docker needed.

* The jars are resolved once by Maven from ``compose/kafka/pom.xml`` into
  ``~/.cache/metering/kafka-<version>/`` (override the cache root with ``METERING_CACHE_DIR``).
* Each broker gets a fresh temporary directory with KRaft storage formatted by
  ``kafka.tools.StorageTool``, free loopback ports for the client and controller listeners,
  and fast single-node settings (replication factor 1, transaction log min ISR 1, no initial
  rebalance delay, heap 1 GiB at most).
* :meth:`LocalKafka.start` waits until an admin client can list topics, with a deadline; on
  failure it raises :class:`BrokerStartError` carrying the tail of the broker log.
* :meth:`LocalKafka.stop` terminates the JVM (SIGTERM, then SIGKILL after a grace period). A
  broker started with ``die_with_parent=True`` also receives SIGKILL from the kernel when the
  Python process that started it dies (``PR_SET_PDEATHSIG``), so an interrupted or crashed
  test run leaves no JVM behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agents.errors import BrokerError as BrokerError
from agents.errors import BrokerStartError as BrokerStartError
from agents.errors import JarsUnavailableError as JarsUnavailableError

KAFKA_VERSION = "3.9.1"
DEFAULT_HEAP = "1g"
_POM = Path(__file__).resolve().parents[1] / "compose" / "kafka" / "pom.xml"

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.controller=WARN
log4j.logger.org.apache.kafka.controller=WARN
"""


def cache_root() -> Path:
    """Root of metering's cache (``$METERING_CACHE_DIR`` or ``~/.cache/metering``)."""
    env = os.environ.get("METERING_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "metering"


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    """Directory holding the broker's runtime classpath for ``version``."""
    return cache_root() / f"kafka-{version}"


def ensure_jars(
    version: str = KAFKA_VERSION, log: Callable[[str], None] = lambda _m: None
) -> Path:
    """Fetch the broker jars with Maven unless already cached; return their directory.

    The download goes to a temporary sibling directory that is renamed into place only
    when Maven succeeds, so an interrupted fetch never leaves a half-filled cache.
    """
    target = jars_dir(version)
    if (target / ".complete").exists():
        return target
    if shutil.which("mvn") is None:
        raise JarsUnavailableError(
            "Maven ('mvn') is not on PATH: install Maven 3 and a JDK 17, then retry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=target.parent))
    log(f"fetching Apache Kafka {version} jars from Maven Central into {target} (once) ...")
    started = time.monotonic()
    cmd = [
        "mvn", "-q", "-B", "-f", str(_POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise JarsUnavailableError(
            f"mvn could not resolve org.apache.kafka:kafka_2.13:{version} "
            f"(exit {proc.returncode}); check network access to Maven Central.\n{tail}"
        )
    (staging / ".complete").write_text(f"{version}\n")
    if (target / ".complete").exists():  # another process won the race; keep theirs
        shutil.rmtree(staging, ignore_errors=True)
    else:
        shutil.rmtree(target, ignore_errors=True)  # a partial cache from an older layout
        staging.rename(target)
    log(f"fetched Kafka jars in {time.monotonic() - started:.1f}s")
    return target


def new_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, base64url without padding (22 chars).

    About one id in 64 begins with ``-``; :func:`format_command` passes it so that it can
    never be taken for an option.
    """
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def format_command(common: list[str], cluster_id: str, props: Path) -> list[str]:
    """The ``kafka-storage format`` command line (JVM options ``common`` first).

    The id is attached to its option (``--cluster-id=<id>``): as a separate argument an id
    starting with ``-`` is read as an option ("argument --cluster-id/-t: expected one
    argument") and the broker fails to start, once in about 64 starts.
    """
    return ["java", "-Xmx256m", *common, "kafka.tools.StorageTool", "format",
            f"--cluster-id={cluster_id}", "--config", str(props), "--ignore-formatted"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_server_properties(
    *, client_port: int, controller_port: int, log_dir: Path | str, node_id: int = 1
) -> str:
    """Render ``server.properties`` for a combined broker+controller single-node cluster.

    Pure: the same arguments always give the same text. Listeners bind 127.0.0.1 only.
    """
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": f"{node_id}@127.0.0.1:{controller_port}",
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{client_port},CONTROLLER://127.0.0.1:{controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{client_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # faust declares its topics; auto-creation would hide partition-count mistakes.
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.segment.bytes": str(64 * 1024 * 1024),
        "log.retention.hours": "-1",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "message.max.bytes": str(8 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child when its parent dies (PR_SET_PDEATHSIG = 1)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    os.setsid()


async def _admin_ready(bootstrap: str) -> bool:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # Connection refusals are expected while the JVM boots; keep them out of the output.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_until_ready(bootstrap: str, deadline_s: float, is_alive: Callable[[], bool]) -> bool:
    """Poll an admin ``list_topics`` until it succeeds, the process dies or time runs out."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not is_alive():
            return False
        if asyncio.run(_admin_ready(bootstrap)):
            return True
        time.sleep(0.25)  # poll interval of a deadline-bounded readiness loop
    return False


@dataclass
class LocalKafka:
    """One local broker process. Use as a context manager or call start()/stop()."""

    version: str = KAFKA_VERSION
    heap: str = DEFAULT_HEAP
    die_with_parent: bool = True
    start_timeout_s: float = 90.0
    workdir: Path | None = None
    client_port: int = 0
    controller_port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    startup_seconds: float = 0.0

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the PLAINTEXT listener."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "broker.log"

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the broker's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def start(self, log: Callable[[str], None] = lambda _m: None) -> LocalKafka:
        """Format storage (unless already formatted: a restart keeps its data) and start the
        broker; return once it serves admin requests."""
        klibs = ensure_jars(self.version, log)
        if shutil.which("java") is None:
            raise BrokerError("java is not on PATH: install a JDK 17")
        if self.workdir is None or not self.workdir.exists():  # else: a restart, same data
            self.workdir = Path(tempfile.mkdtemp(prefix="metering-kafka-"))
        self.client_port = self.client_port or free_port()
        self.controller_port = self.controller_port or free_port()
        data = self.workdir / "data"
        props = self.workdir / "server.properties"
        props.write_text(
            render_server_properties(
                client_port=self.client_port,
                controller_port=self.controller_port,
                log_dir=data,
            )
        )
        log4j = self.workdir / "log4j.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        cp = f"{klibs}/*"
        common = ["-cp", cp, f"-Dlog4j.configuration=file:{log4j}"]
        started = time.monotonic()
        fmt = None
        if not (data / "meta.properties").exists():  # else a restart: keep id and data
            fmt = subprocess.run(
                format_command(common, new_cluster_id(), props),
                capture_output=True, text=True, check=False,
            )
        if fmt is not None and fmt.returncode != 0:
            raise BrokerStartError(
                f"kafka StorageTool format failed (exit {fmt.returncode}):\n"
                f"{(fmt.stdout + fmt.stderr)[-3000:]}"
            )
        jvm = [
            "java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-XX:ParallelGCThreads=2",
            "-XX:ConcGCThreads=1", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
            "-Djava.awt.headless=true", "-Djava.net.preferIPv4Stack=true",
            *common, "kafka.Kafka", str(props),
        ]
        logf = self.log_path.open("wb")
        self.process = subprocess.Popen(
            jvm,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_pdeathsig if self.die_with_parent else os.setsid,
        )
        logf.close()
        ok = wait_until_ready(
            self.bootstrap, self.start_timeout_s, lambda: self.alive
        )
        if not ok:
            tail = self.log_tail()
            alive = self.alive
            self.stop()
            why = "did not answer admin requests in time" if alive else "exited"
            raise BrokerStartError(
                f"Kafka broker on {self.bootstrap} {why} "
                f"(deadline {self.start_timeout_s:.0f}s). Last broker log lines:\n{tail}"
            )
        self.startup_seconds = time.monotonic() - started
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 20.0, keep_dir: bool = False) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after ``grace_s``) and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.workdir is not None and not keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, log: Callable[[str], None] = lambda _m: None) -> LocalKafka:
        """Stop the broker (SIGTERM) and start it again on the same ports and data."""
        self.stop(keep_dir=True)
        return self.start(log)

    def kill(self) -> None:
        """SIGKILL the broker at once (failure tests); its directory is kept for a restart."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_broker(log: Callable[[str], None] = lambda _m: None) -> Iterator[str]:
    """Yield a bootstrap address: ``$METERING_TEST_BROKER`` if set, else a fresh LocalKafka."""
    existing = os.environ.get("METERING_TEST_BROKER")
    if existing:
        yield existing
        return
    broker = LocalKafka().start(log)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


# ---------------------------------------------------------------- detached broker (make kafka-up)


def state_file() -> Path:
    """Where a detached broker started by ``metering kafka up`` records itself."""
    return cache_root() / "run" / "kafka-local.json"


def up_detached(log: Callable[[str], None] = print) -> dict[str, object]:
    """Start a broker that outlives this process; record pid, bootstrap and directory."""
    current = status_detached()
    if current is not None:
        log(f"Kafka is already running at {current['bootstrap']} (pid {current['pid']})")
        return current
    broker = LocalKafka(die_with_parent=False).start(log)
    assert broker.process is not None
    assert broker.workdir is not None
    info: dict[str, object] = {
        "pid": broker.process.pid,
        "bootstrap": broker.bootstrap,
        "workdir": str(broker.workdir),
        "version": broker.version,
        "startup_seconds": round(broker.startup_seconds, 2),
    }
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie or a recycled pid that is not java is not our broker
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"kafka.Kafka" in cmdline


def status_detached() -> dict[str, object] | None:
    """The recorded detached broker if its process is still alive, else None."""
    path = state_file()
    if not path.exists():
        return None
    try:
        info: dict[str, object] = json.loads(path.read_text())
        pid = int(str(info["pid"]))
    except (ValueError, KeyError, OSError):
        return None
    return info if _pid_alive(pid) else None


def down_detached(log: Callable[[str], None] = print) -> bool:
    """Stop the detached broker, if any; remove its directory. Returns True if one ran."""
    path = state_file()
    info = status_detached()
    if info is None:
        path.unlink(missing_ok=True)
        log("no local Kafka broker is running")
        return False
    pid = int(str(info["pid"]))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + 20
    while time.monotonic() < end and _pid_alive(pid):
        time.sleep(0.2)  # poll with a deadline for the JVM to exit
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(str(info["workdir"]), ignore_errors=True)
    path.unlink(missing_ok=True)
    log(f"stopped Kafka broker {info['bootstrap']} (pid {pid})")
    return True


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    with LocalKafka() as k:
        sys.stdout.write(f"{k.bootstrap} ready in {k.startup_seconds:.1f}s\n")
