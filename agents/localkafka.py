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
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import BrokerError as BrokerError
from agents.errors import BrokerStartError as BrokerStartError
from agents.errors import JarsUnavailableError as JarsUnavailableError
from agents.tlscerts import Certs, make_certs

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


ADMIN_USER = "admin"
"""The secure broker's super user (SCRAM, both mechanisms): sets up ACLs in tests."""
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def secure_server_properties(
    *, sasl_port: int, ssl_port: int, controller_port: int, keystore: Path | str,
    store_password: str, truststore: Path | str, admin_password: str,
) -> dict[str, str]:
    """The properties that make the broker secure (merged over the PLAINTEXT ones).

    * ``SASL_SSL`` (SCRAM-SHA-512 and -256; users created at format time) and ``SSL``
      requiring a client certificate (principal: the certificate's CN), both on 127.0.0.1;
    * KRaft's StandardAuthorizer, ``allow.everyone.if.no.acl.found=false``; super users:
      ``admin`` (inter-broker traffic and the ACL set-up) and ``ANONYMOUS``, the principal
      of the PLAINTEXT controller listener (broker-to-controller requests need
      CLUSTER_ACTION; no client listener is PLAINTEXT).
    """
    jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required"
    return {
        "listeners": (f"SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port},"
                      f"CONTROLLER://127.0.0.1:{controller_port}"),
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{sasl_port},SSL://127.0.0.1:{ssl_port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
            f'{jaas} username="{ADMIN_USER}" password="{admin_password}";'),
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": f"{jaas};",
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(keystore),
        "ssl.keystore.password": store_password,
        "ssl.key.password": store_password,
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(truststore),
        "listener.name.ssl.ssl.client.auth": "required",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
        "authorizer.class.name": STANDARD_AUTHORIZER,
        "allow.everyone.if.no.acl.found": "false",
        "super.users": f"User:{ADMIN_USER};User:ANONYMOUS",
    }


def scram_arguments(users: dict[str, str]) -> list[str]:
    """``kafka-storage format --add-scram`` arguments: every user with both mechanisms."""
    return [f"--add-scram={mech}=[name={name},password={password}]"
            for name, password in sorted(users.items()) for mech in SCRAM_MECHANISMS]


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL this child when its parent dies (PR_SET_PDEATHSIG = 1)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    os.setsid()


async def _admin_ready(bootstrap: str, options: dict[str, Any] | None = None) -> bool:
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    # Connection refusals are expected while the JVM boots; keep them out of the output.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    admin = AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, **(options or {})},
                                request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def wait_until_ready(bootstrap: str, deadline_s: float, is_alive: Callable[[], bool],
                     options: Callable[[], dict[str, Any]] | None = None) -> bool:
    """Poll an admin ``list_topics`` until it succeeds, the process dies or time runs out.

    ``options``: the admin client's security options (made per attempt: an SSL context
    belongs to one event loop's connections)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not is_alive():
            return False
        if asyncio.run(_admin_ready(bootstrap, options() if options else None)):
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
    secure: bool = False
    """Secure mode: SASL_SSL and mutual-TLS listeners, ACLs enforced (no PLAINTEXT client
    listener; :attr:`bootstrap` is the SASL_SSL one)."""
    scram_users: dict[str, str] = field(default_factory=dict, repr=False)
    """Secure mode: SCRAM users (name -> password) created at format time, besides
    ``admin``; ``metering`` is added with a random password when empty."""
    client_certs: tuple[str, ...] = ("metering",)
    """Secure mode: client certificates to issue (CN = principal name)."""
    ssl_port: int = 0
    properties: dict[str, str] = field(default_factory=dict)
    """Broker properties set over the defaults of :func:`render_server_properties` (e.g. the
    bench's ``group.initial.rebalance.delay.ms``)."""
    certs: Certs | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener (PLAINTEXT; SASL_SSL in secure mode)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """Secure mode: ``host:port`` of the SSL listener that requires client certificates."""
        return f"127.0.0.1:{self.ssl_port}"

    def sasl_env(self, user: str, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """``METERING_*`` settings for ``user`` over SASL_SSL (secure mode); the password is
        in the environment value: hand it to a child process, never print it."""
        assert self.certs is not None, "not a secure broker"
        return {"METERING_BROKER": self.bootstrap, "METERING_SECURITY_PROTOCOL": "SASL_SSL",
                "METERING_SASL_MECHANISM": mechanism, "METERING_SASL_USERNAME": user,
                "METERING_SASL_PASSWORD": self.users()[user],
                "METERING_SSL_CAFILE": str(self.certs.ca)}

    def tls_env(self, client: str) -> dict[str, str]:
        """``METERING_*`` settings for the client certificate ``client`` over mutual TLS."""
        assert self.certs is not None, "not a secure broker"
        cert, key = self.certs.clients[client]
        return {"METERING_BROKER": self.ssl_bootstrap, "METERING_SECURITY_PROTOCOL": "SSL",
                "METERING_SSL_CAFILE": str(self.certs.ca),
                "METERING_SSL_CERTFILE": str(cert), "METERING_SSL_KEYFILE": str(key)}

    def users(self) -> dict[str, str]:
        """Every SCRAM user of the secure broker, ``admin`` included (name -> password)."""
        if not self.scram_users:
            self.scram_users["metering"] = secrets.token_hex(12)
        if ADMIN_USER not in self.scram_users:
            self.scram_users[ADMIN_USER] = secrets.token_hex(16)
        return self.scram_users

    def admin_options(self) -> dict[str, Any]:
        """aiokafka options of the super user (PLAINTEXT brokers: just the bootstrap)."""
        if not self.secure:
            return {"bootstrap_servers": self.bootstrap}
        from agents.kafkaclient import aiokafka_options
        from metering.settings import load_settings

        return aiokafka_options(load_settings(env=self.sasl_env(ADMIN_USER)))

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
        text = render_server_properties(
            client_port=self.client_port,
            controller_port=self.controller_port,
            log_dir=data,
        )
        extra: dict[str, str] = {}
        if self.secure:
            self.ssl_port = self.ssl_port or free_port()
            tls = self.workdir / "tls"
            if self.certs is None:
                self.certs = make_certs(tls, clients=self.client_certs)
            extra = secure_server_properties(
                sasl_port=self.client_port, ssl_port=self.ssl_port,
                controller_port=self.controller_port, keystore=self.certs.keystore,
                store_password=self.certs.store_password, truststore=self.certs.ca,
                admin_password=self.users()[ADMIN_USER])
        if extra or self.properties:
            lines = dict(line.split("=", 1) for line in text.splitlines())
            text = "".join(f"{k}={v}\n"
                           for k, v in {**lines, **extra, **self.properties}.items())
        props.write_text(text)
        props.chmod(0o600)  # holds the keystore and admin passwords in secure mode
        log4j = self.workdir / "log4j.properties"
        log4j.write_text(LOG4J_PROPERTIES)
        cp = f"{klibs}/*"
        common = ["-cp", cp, f"-Dlog4j.configuration=file:{log4j}"]
        started = time.monotonic()
        fmt = None
        if not (data / "meta.properties").exists():  # else a restart: keep id and data
            scram = scram_arguments(self.users()) if self.secure else []
            fmt = subprocess.run(
                format_command(common, new_cluster_id(), props) + scram,
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
            self.bootstrap, self.start_timeout_s, lambda: self.alive, self.admin_options
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


# ---------------------------------------------------------------- detached broker (make kafka-up)


def state_file() -> Path:
    """Where a detached broker started by ``metering kafka up`` records itself."""
    return cache_root() / "run" / "kafka-local.json"


def up_detached(log: Callable[[str], None] = print, secure: bool = False) -> dict[str, object]:
    """Start a broker that outlives this process; record pid, bootstrap and directory.

    ``secure``: the secure mode, set up for user (and client certificate) ``metering``
    with the README's ACLs for the default settings and the topics an operator creates;
    the record then holds the client settings (:func:`secure_setup`)."""
    current = status_detached()
    if current is not None:
        log(f"Kafka is already running at {current['bootstrap']} (pid {current['pid']})")
        return current
    broker = LocalKafka(die_with_parent=False, secure=secure).start(log)
    assert broker.process is not None
    assert broker.workdir is not None
    info: dict[str, object] = {
        "pid": broker.process.pid,
        "bootstrap": broker.bootstrap,
        "workdir": str(broker.workdir),
        "version": broker.version,
        "startup_seconds": round(broker.startup_seconds, 2),
    }
    if secure:
        try:
            info.update(secure_setup(broker))
        except Exception:
            broker.stop()
            raise
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2))
    return info


def secure_setup(broker: LocalKafka, user: str = "metering") -> dict[str, object]:
    """Prepare a secure broker for ``user``: the README's ACLs of every role for the default
    settings (``METERING_APP_ID`` and the topic names from the environment), the input,
    usage and rejects topics, and the passwords in files (mode 0600). Returns the client
    settings: ``sasl_env`` and ``tls_env`` (``METERING_*``, the password as a file)."""
    from agents import acls
    from metering.settings import SECURITY_FIELDS, load_settings

    assert broker.workdir is not None
    assert broker.certs is not None
    names = {k: v for k, v in os.environ.items() if k.startswith("METERING_")
             and k[len("METERING_"):].lower() not in SECURITY_FIELDS
             and k != "METERING_BROKER"}
    settings = load_settings(env=names)
    wanted = [a for role in acls.ROLES for a in acls.required(settings, role)]
    asyncio.run(acls.grant(broker.admin_options(), user, sorted(set(wanted))))
    asyncio.run(_create_topics(broker.admin_options(), settings.partitions, [
        settings.input_topic, settings.usage_topic, settings.rejects_topic]))
    files: dict[str, str] = {}
    for name, password in broker.users().items():
        path = broker.certs.directory / f"{name}.password"
        path.write_text(password + "\n")
        path.chmod(0o600)
        files[name] = str(path)
    sasl = {k: v for k, v in broker.sasl_env(user).items() if k != "METERING_SASL_PASSWORD"}
    sasl["METERING_SASL_PASSWORD_FILE"] = files[user]
    return {"secure": True, "ssl_bootstrap": broker.ssl_bootstrap, "sasl_env": sasl,
            "tls_env": broker.tls_env(user), "admin_password_file": files[ADMIN_USER],
            "acls": [a.command(user, broker.bootstrap) for a in sorted(set(wanted))]}


async def _create_topics(options: dict[str, Any], partitions: int, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        await admin.create_topics([NewTopic(n, partitions, 1) for n in dict.fromkeys(names)
                                   if n not in existing])
    finally:
        await admin.close()


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
