"""Typed, validated settings of the streaming worker.

One frozen :class:`Settings` object is built at the edge from environment variables
(``METERING_*``) and command-line flags, validated once (every problem reported together)
and then passed down; nothing else reads the environment. Durations are seconds (floats),
instants UTC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from metering.errors import SettingsError as SettingsError
from metering.limits import record_limit_problems
from metering.periods import PERIODS, load_timezone

ENV_PREFIX: Final = "METERING_"
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
COMPRESSIONS: Final = ("none", "gzip", "snappy", "lz4", "zstd")
"""Values of the ``compression`` setting: Kafka's record batch codecs (``none``: off)."""
_SECRET_FIELDS: Final = frozenset({"sasl_password"})


@dataclass(frozen=True)
class Settings:
    """Everything the worker can be configured with (env ``METERING_<NAME>`` or ``--name``)."""

    broker: str = field(default="127.0.0.1:9092", metadata={
        "help": "Kafka bootstrap servers, host:port[,host:port...]"})
    app_id: str = field(default="metering", metadata={
        "help": "Faust app id: consumer group, changelog and internal topic prefix"})
    input_topic: str = field(default="cs", metadata={
        "help": "topic CloudStack's KafkaEventBus publishes to"})
    usage_topic: str = field(default="usage", metadata={
        "help": "output topic of usage intervals (JSON, key = account_id)"})
    rejects_topic: str = field(default="metering.rejected", metadata={
        "help": "topic of rejected records (JSON with raw, reason, source coordinates)"})
    events_topic: str = field(default="metering.events", metadata={
        "help": "internal topic: decoded events repartitioned by resource id, plus ticks"})
    partitions: int = field(default=4, metadata={
        "help": "partitions of the internal topic and the state tables"})
    replication_factor: int = field(default=1, metadata={
        "help": "replicas of every topic the worker creates (internal, usage, rejects, "
                "changelogs, grid); 3 on a production cluster"})
    compression: str = field(default="none", metadata={
        "help": "codec of the record batches the worker and `metering route` produce "
                "(usage, rejects, internal topic, changelogs): none, gzip, snappy, lz4 or "
                "zstd"})
    data_dir: Path = field(default=Path("metering-data"), metadata={
        "help": "directory of the RocksDB tables (one per worker)"})
    period: str = field(default="hour", metadata={"help": "aggregation period: hour or day"})
    timezone: str = field(default="UTC", metadata={
        "help": "IANA time zone of period boundaries"})
    lateness: float = field(default=60.0, metadata={
        "help": "seconds after a period end before it counts as complete"})
    idle_advance: float = field(default=30.0, metadata={
        "help": "seconds without records after which a lane's watermark follows the clock"})
    tick_interval: float = field(default=0.2, metadata={
        "help": "seconds between ticks sent to every partition: they carry each input "
        "partition's progress, so an interval closed by an event waits for up to one tick "
        "(contract rule 8), and periods close on them"})
    batch_size: int = field(default=2000, metadata={
        "help": "most records per fetch (Faust's broker_max_poll_records; the worker "
        "processes each partition's part of a fetch as one batch)"})
    batch_within: float = field(default=0.5, metadata={
        "help": "seconds to wait for a batch to fill"})
    max_record_bytes: int = field(default=1_000_000, metadata={
        "help": "larger records are rejected unparsed (at most the producer's max request "
        "size, 1000000)"})
    web_port: int = field(default=6066, metadata={"help": "HTTP port for /metrics, /healthz"})
    web_bind: str = field(default="127.0.0.1", metadata={"help": "HTTP bind address"})
    session_timeout: float = field(default=30.0, metadata={
        "help": "seconds before the group evicts a silent (crashed) worker and rebalances"})
    standby_replicas: int = field(default=0, metadata={
        "help": "standby table replicas (use 1 only with >= 2 workers)"})
    archive_dir: Path = field(default=Path("metering-archive"), metadata={
        "help": "Parquet dataset written by `metering archive` (usage_date= partitions)"})
    archive_batch_records: int = field(default=50_000, metadata={
        "help": "archive: most usage records per batch (one file per partition and day)"})
    archive_flush_seconds: float = field(default=10.0, metadata={
        "help": "archive: longest wait before a partial batch is written"})
    archive_web_port: int = field(default=6067, metadata={
        "help": "HTTP port of the archive worker (/metrics, /healthz)"})
    metrics_interval: float = field(default=10.0, metadata={
        "help": "seconds between refreshes of consumer lag and store size for /metrics"})
    ready_max_lag: int = field(default=10_000, metadata={
        "help": "/readyz answers 200 once every assigned partition lags at most this many "
        "records"})
    max_clock_skew: float = field(default=300.0, metadata={
        "help": "seconds an event time may lie ahead of the wall clock before the record "
        "is rejected (invalid_event_time, contract rule 4b)"})
    max_watermark_jump: float = field(default=3600.0, metadata={
        "help": "seconds a partition's watermark may advance on one record; a larger jump "
        "waits for a later record or the wall clock to confirm it (rule 4b)"})
    orphan_close_ttl: float = field(default=86_400.0, metadata={
        "help": "seconds of event time a close of what is not open is remembered for its "
        "earlier open (contract rule 3)"})
    force_period_change: bool = field(default=False, metadata={
        "help": "accept a period or timezone different from the one the existing state "
        "was built with (ids and cuts then differ from earlier output)"})
    group_instance_id: str = field(default="", metadata={
        "help": "static group membership (Kafka KIP-345): a name unique in the group and "
        "stable across restarts (in Kubernetes the pod name); a worker back within "
        "session_timeout keeps its partitions without a rebalance. Unset: dynamic membership"})
    sasl_password: str = field(default="", metadata={
        "secret": True,
        "help": "SASL password: environment or sasl_password_file only, never a flag "
        "(masked everywhere)"})
    sasl_password_file: str = field(default="", metadata={
        "help": "file holding the SASL password (e.g. a mounted Kubernetes Secret); "
        "read at start-up, trailing newline dropped"})
    security_protocol: str = field(default="PLAINTEXT", metadata={
        "help": "how every Kafka client connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"})
    sasl_mechanism: str = field(default="PLAIN", metadata={
        "help": "SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"})
    sasl_username: str = field(default="", metadata={
        "help": "SASL user name (SASL_* protocols; the password comes from "
        "METERING_SASL_PASSWORD or sasl_password_file)"})
    ssl_cafile: str = field(default="", metadata={
        "help": "PEM file of the CA(s) that signed the broker's certificate (SSL, SASL_SSL); "
        "empty: the system's trust store"})
    ssl_certfile: str = field(default="", metadata={
        "help": "PEM client certificate for mutual TLS (with ssl_keyfile)"})
    ssl_keyfile: str = field(default="", metadata={
        "help": "PEM private key of ssl_certfile (unencrypted; keep it readable by this "
        "user only)"})
    ssl_check_hostname: bool = field(default=True, metadata={
        "help": "check that the broker's certificate names the host connected to (turn off "
        "only for tests)"})
    topic_prefix: str = field(default="", metadata={
        "help": "tenant prefix put before app_id and every topic name (so before every "
        "changelog, internal topic and consumer group), e.g. 'tenant-a.'; names are given "
        "without it"})
    input_topics: str = field(default="", metadata={
        "help": "several input topics, each with its region: TOPIC=REGION[,TOPIC=REGION...] "
        "(e.g. cs.region-a=a,cs.region-b=b); replaces input_topic when set. Either every "
        "topic has a region or none"})
    routes: str = field(default="", metadata={
        "help": "event routes of `metering route`: PATTERN=TOPIC[,PATTERN=TOPIC...]; a "
        "record whose key category.type.resourceType.resourceUUID matches PATTERN (* one "
        "word, # zero or more) is forwarded to TOPIC, e.g. ActionEvent.*.Account.*=accounts"})

    @property
    def lateness_ms(self) -> int:
        return int(self.lateness * 1000)

    @property
    def idle_advance_ms(self) -> int:
        return int(self.idle_advance * 1000)

    @property
    def max_clock_skew_ms(self) -> int:
        return int(self.max_clock_skew * 1000)

    @property
    def max_watermark_jump_ms(self) -> int:
        return int(self.max_watermark_jump * 1000)

    @property
    def orphan_close_ttl_ms(self) -> int:
        return int(self.orphan_close_ttl * 1000)

    def __repr__(self) -> str:
        """Like the dataclass repr, with secrets masked (settings end up in logs)."""
        body = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Settings({body})"

    def masked(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked (for ``check-config`` and logs)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if is_secret(f.name):
                value = "********" if value else ""
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    def fingerprint(self) -> str:
        """A short hash of the effective settings (for the build-info metric)."""
        text = repr(sorted(self.masked().items()))
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    def validate(self) -> None:
        """Raise :class:`SettingsError` listing every invalid setting; return if all valid."""
        problems: list[str] = []
        for hostport in self.broker.split(","):
            host, _, port = hostport.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(f"broker: {hostport!r} is not host:port")
        for name in ("input_topic", "usage_topic", "rejects_topic", "events_topic", "app_id"):
            if not _TOPIC.match(getattr(self, name)):
                problems.append(f"{name}: {getattr(self, name)!r} is not a valid Kafka name")
        topics = [self.input_topic, self.usage_topic, self.rejects_topic, self.events_topic]
        if len(set(topics)) != len(topics):
            problems.append("topics: input, usage, rejects and events topics must differ")
        problems += self._input_topics_problems()
        problems += self._routes_problems()
        if not 1 <= self.partitions <= 1024:
            problems.append(f"partitions: {self.partitions} not in 1..1024")
        if not 1 <= self.replication_factor <= 32:
            problems.append(f"replication_factor: {self.replication_factor} not in 1..32")
        if self.compression not in COMPRESSIONS:
            problems.append(f"compression: {self.compression!r} is not one of "
                            f"{', '.join(COMPRESSIONS)}")
        if self.period not in PERIODS:
            problems.append(f"period: {self.period!r} is not one of {', '.join(PERIODS)}")
        try:
            load_timezone(self.timezone)
        except ValueError as exc:
            problems.append(f"timezone: {exc}")
        for name in ("lateness", "idle_advance", "max_clock_skew", "orphan_close_ttl"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: must be >= 0 seconds")
        for name in ("tick_interval", "batch_within", "archive_flush_seconds",
                     "metrics_interval"):
            if not getattr(self, name) > 0:
                problems.append(f"{name}: must be > 0 seconds")
        if not 1 <= self.batch_size <= 100_000:
            problems.append(f"batch_size: {self.batch_size} not in 1..100000")
        if not 1 <= self.archive_batch_records <= 1_000_000:
            problems.append(
                f"archive_batch_records: {self.archive_batch_records} not in 1..1000000")
        if self.max_record_bytes <= 0:
            problems.append("max_record_bytes: must be positive")
        problems += record_limit_problems(self.max_record_bytes)
        for name in ("web_port", "archive_web_port"):
            if not 0 < getattr(self, name) < 65536:
                problems.append(f"{name}: {getattr(self, name)} not in 1..65535")
        if not 6 <= self.session_timeout <= 1800:
            problems.append("session_timeout: must be within the broker's default 6..1800 s")
        if not self.max_watermark_jump > 0:
            problems.append("max_watermark_jump: must be > 0 seconds")
        if self.ready_max_lag < 0:
            problems.append("ready_max_lag: must be >= 0 records")
        if self.group_instance_id and not _TOPIC.match(self.group_instance_id):
            problems.append(f"group_instance_id: {self.group_instance_id!r} is not a valid "
                            "Kafka name (1-249 of A-Z a-z 0-9 . _ -)")
        if self.standby_replicas < 0:
            problems.append("standby_replicas: must be >= 0")
        problems += security_problems(self)
        if problems:
            raise SettingsError(problems)


    def _input_topics_problems(self) -> list[str]:
        """Problems of ``input_topics`` (regions, issue 19): its syntax, and outputs reused."""
        if not self.input_topics.strip():
            return []
        from metering.regions import parse_input_topics

        try:
            pairs = parse_input_topics(self.input_topics)
        except ValueError as exc:
            return [f"input_topics: {exc}"]
        outputs = {self.usage_topic, self.rejects_topic, self.events_topic}
        return [f"input_topics: {topic!r} is also an output or internal topic"
                for topic, _ in pairs if topic in outputs]


    def _routes_problems(self) -> list[str]:
        """Problems of ``routes`` (issue 19): its syntax, and a target that is an input
        (a loop) or one of the worker's own topics."""
        if not self.routes.strip():
            return []
        from metering.regions import input_topic_regions
        from metering.routes import parse_routes

        try:
            routes = parse_routes(self.routes)
        except ValueError as exc:
            return [f"routes: {exc}"]
        if self._input_topics_problems():
            return []  # the inputs are unknown; their problems are reported
        inputs = set(input_topic_regions(self.input_topic, self.input_topics).topics)
        own = {self.usage_topic, self.rejects_topic, self.events_topic}
        return [f"routes: target {r.topic!r} is an input topic (records would loop)"
                if r.topic in inputs else
                f"routes: target {r.topic!r} is one of the worker's own topics"
                for r in routes if r.topic in inputs | own]


SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_FIELDS: Final = ("security_protocol", "sasl_mechanism", "sasl_username",
                          "sasl_password", "sasl_password_file", "ssl_cafile", "ssl_certfile",
                          "ssl_keyfile", "ssl_check_hostname")
"""The settings of the Kafka connection's security (read by every client, also by tools
that take only a bootstrap address: ``simulate --to-kafka``, the demo, the benchmarks)."""


def security_problems(s: Settings) -> list[str]:
    """Inconsistent security settings, each with what to change (never a secret's value)."""
    problems: list[str] = []
    protocol = s.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        return [f"security_protocol: {protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}"]
    sasl = protocol.startswith("SASL_")
    tls = protocol.endswith("SSL")
    if sasl:
        if s.sasl_mechanism not in SASL_MECHANISMS:
            problems.append(f"sasl_mechanism: {s.sasl_mechanism!r} is not one of "
                            f"{', '.join(SASL_MECHANISMS)}")
        if not s.sasl_username:
            problems.append(f"sasl_username: required with security_protocol={protocol} "
                            "(--sasl-username / METERING_SASL_USERNAME)")
        if not s.sasl_password:
            problems.append(f"sasl_password: required with security_protocol={protocol} "
                            "(METERING_SASL_PASSWORD or --sasl-password-file)")
    else:
        if s.sasl_username:  # a password alone is allowed: a mounted secret, unused
            problems.append(f"sasl_username: set, but security_protocol={protocol} does not "
                            "use SASL (use SASL_SSL or SASL_PLAINTEXT, or unset it)")
    if not tls:
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(s, name):
                problems.append(f"{name}: set, but security_protocol={protocol} does not use "
                                "TLS (use SSL or SASL_SSL, or unset it)")
    else:
        if s.ssl_keyfile and not s.ssl_certfile:
            problems.append("ssl_keyfile: set without ssl_certfile (mutual TLS needs both)")
        if s.ssl_certfile and not s.ssl_keyfile:
            problems.append("ssl_certfile: set without ssl_keyfile (mutual TLS needs both)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(s, name)
            if path and not Path(path).is_file():
                problems.append(f"{name}: {path} is not a readable file")
    return problems


_SECRET_BY_METADATA: Final = frozenset(
    f.name for f in fields(Settings) if f.metadata.get("secret"))
"""Fields declared ``metadata={"secret": True}``: masked like ``_SECRET_FIELDS``."""

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case); anything else raises ValueError."""
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


def is_secret(name: str) -> bool:
    """True for settings that must never appear in argv, logs or metrics."""
    return name in _SECRET_FIELDS or name in _SECRET_BY_METADATA


def redact(text: str, s: Settings) -> str:
    """``text`` with the value of every secret setting of ``s`` replaced by ``********``
    (the last guard before a message from a client library reaches a log or the user)."""
    for name in sorted(_SECRET_FIELDS | _SECRET_BY_METADATA):
        value = getattr(s, name, "")
        if isinstance(value, str) and value:
            text = text.replace(value, "********")
    return text


def _convert(name: str, kind: Any, raw: str, problems: list[str]) -> Any:
    try:
        if kind in (bool, "bool"):
            return parse_bool(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(raw)
    except ValueError:
        kind_name = kind if isinstance(kind, str) else kind.__name__
        problems.append(f"{name}: {raw!r} is not a valid {kind_name}")
        return None
    return raw


def load_settings(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build and validate settings: defaults < ``METERING_*`` environment < ``overrides``.

    Raises :class:`SettingsError` naming every problem (unparsable values included).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            converted = _convert(ENV_PREFIX + f.name.upper(), f.type, raw, problems)
            if converted is not None:
                values[f.name] = converted
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    password_file = values.get("sasl_password_file")
    if password_file:
        try:
            values["sasl_password"] = Path(password_file).read_text().rstrip("\r\n")
        except OSError as exc:
            problems.append(f"sasl_password_file: cannot read {password_file}: "
                            f"{exc.strerror or exc}")
    if problems:
        raise SettingsError(problems)
    settings = with_topic_prefix(dataclasses.replace(Settings(), **values))
    settings.validate()
    return settings


PREFIXED_FIELDS: Final = ["app_id", "input_topic", "usage_topic", "rejects_topic",
                          "events_topic"]
"""The names ``topic_prefix`` goes before (``app_id`` carries it to the consumer groups,
Faust's changelogs and leader topic, the grid topic and the archive's group). A new setting
that names a topic or group belongs here."""


def with_topic_prefix(s: Settings) -> Settings:
    """``s`` with ``topic_prefix`` put before every name of :data:`PREFIXED_FIELDS`
    (applied once, by :func:`load_settings`; the prefix stays recorded in ``topic_prefix``)."""
    if not s.topic_prefix:
        return s
    if not _TOPIC.match(s.topic_prefix):
        raise SettingsError([f"topic_prefix: {s.topic_prefix!r} is not valid in a Kafka name "
                             "(letters, digits, '.', '_', '-')"])
    prefix = s.topic_prefix
    names: dict[str, Any] = {name: prefix + getattr(s, name) for name in PREFIXED_FIELDS}
    # Lists of names: each input topic (``TOPIC[=REGION]``) and each route's target
    # (``PATTERN=TOPIC``) carry the prefix too.
    names["input_topics"] = ",".join(
        prefix + item.strip() for item in s.input_topics.split(",") if item.strip())
    routes = []
    for item in (part.strip() for part in s.routes.split(",")):
        pattern, eq, topic = item.rpartition("=")
        if item:  # without "=" the route stays as given: validation names it
            routes.append(f"{pattern.strip()}={prefix}{topic.strip()}" if eq else item)
    names["routes"] = ",".join(routes)
    return dataclasses.replace(s, **names)
