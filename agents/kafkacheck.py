"""Connection and permission checks that turn Kafka client failures into one clear message.

Client libraries report a wrong password, an unknown CA or a missing ACL as "Unable to
bootstrap" or a retry without end. Before a Faust app starts, :func:`probe` opens one
connection with the configured security (TLS handshake, SASL authentication, one
metadata request) and :func:`check_access` asks the broker for what the role needs; each
failure becomes :class:`~agents.errors.PreflightError` naming the cause and the setting or
the ACL to fix (never a secret: messages go through :func:`metering.settings.redact`).

A failure that waiting cannot cure (credentials, certificates, protocol, ACLs) is final
at once (exit 2); an unreachable broker is :class:`~agents.errors.BrokerUnreachable`,
which the caller retries until its deadline.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from agents import acls
from agents.errors import BrokerUnreachable, HandshakeClosed, PreflightError
from agents.kafkaclient import aiokafka_options, uses_sasl, uses_tls
from metering.settings import Settings, redact

EXIT_SECURITY = 2
"""The settings or the broker's ACLs must change: a restart alone will not help."""

_UNKNOWN_CA = {2, 19, 20, 21}  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, SELF_SIGNED_IN_CHAIN,
# UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE
_HOSTNAME_MISMATCH = {62, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, IP_ADDRESS_MISMATCH
_EXPIRED = {9, 10}  # not yet valid, expired


def principal(s: Settings) -> str:
    """The client's Kafka principal name: the SASL user, or the certificate's CN (the
    broker's ``ssl.principal.mapping.rules`` may map it differently)."""
    if uses_sasl(s):
        return s.sasl_username
    if s.ssl_certfile:
        try:
            decoded = ssl._ssl._test_decode_cert(s.ssl_certfile)  # type: ignore[attr-defined]
            for rdn in decoded.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
        except (OSError, ssl.SSLError, ValueError):
            pass
        return "<the principal of ssl_certfile>"
    return "ANONYMOUS"


def _refuse(s: Settings, message: str) -> PreflightError:
    return PreflightError(EXIT_SECURITY, redact(message, s))


def _tls_failure(s: Settings, host: str, exc: ssl.SSLError) -> PreflightError:
    code = getattr(exc, "verify_code", None)
    detail = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if code in _HOSTNAME_MISMATCH:
        return _refuse(s, (
            f"TLS: the broker's certificate does not name the host {host!r} ({detail}): "
            "connect with a host name the certificate lists (--broker / METERING_BROKER, and "
            "the broker's advertised.listeners), or reissue the broker certificate with that "
            "name; --ssl-check-hostname false turns the check off (tests only)"))
    if code in _UNKNOWN_CA:
        cafile = s.ssl_cafile or "the system trust store"
        return _refuse(s, (
            f"TLS: the broker's certificate at {host} is not signed by a CA this client "
            f"trusts ({detail}; trusted: {cafile}): set --ssl-cafile / METERING_SSL_CAFILE "
            "to the PEM file of the CA that signed the broker's certificate"))
    if code in _EXPIRED:
        return _refuse(s, (
            f"TLS: the broker's certificate at {host} is not valid now ({detail}): renew the "
            "broker certificate (or check this host's clock)"))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _refuse(s, (
            f"TLS: the broker's certificate at {host} was rejected ({detail}): check "
            "--ssl-cafile / METERING_SSL_CAFILE and the broker certificate"))
    return _refuse(s, (
        f"TLS handshake with {host} failed ({detail}): check that this listener speaks "
        f"{s.security_protocol} (--security-protocol / METERING_SECURITY_PROTOCOL and the "
        "port in --broker)"))


def _closed(s: Settings, host: str) -> HandshakeClosed:
    if s.security_protocol == "SSL" and not s.ssl_certfile:
        hint = ("the listener may require a client certificate: set --ssl-certfile and "
                "--ssl-keyfile (METERING_SSL_CERTFILE, METERING_SSL_KEYFILE), or it speaks "
                "another protocol than SSL (check --security-protocol and the port)")
    elif s.security_protocol == "SSL":
        hint = ("the broker may not trust the client certificate (--ssl-certfile: is it "
                "signed by a CA in the broker's ssl.truststore?), or the listener speaks "
                "SASL_SSL (set --security-protocol SASL_SSL and the SASL settings)")
    elif s.security_protocol == "PLAINTEXT":
        hint = ("the listener is probably secured: set --security-protocol / "
                "METERING_SECURITY_PROTOCOL to what the broker's listener on this port "
                "uses (SSL, SASL_SSL or SASL_PLAINTEXT) with its settings")
    else:
        hint = (f"the listener does not speak {s.security_protocol}: check "
                "--security-protocol / METERING_SECURITY_PROTOCOL and the port in --broker")
    return HandshakeClosed(EXIT_SECURITY, redact(
        f"the broker at {host} closed the connection during the handshake: {hint}", s))


async def probe(s: Settings, timeout_s: float = 15.0) -> None:
    """Connect to the first bootstrap server with the security settings and ask for
    metadata. Returns if that worked; :class:`PreflightError` for a failure waiting cannot
    cure; :class:`~agents.errors.BrokerUnreachable` otherwise.

    A connection closed by the broker during the handshake is refused only when a second
    attempt a second later is closed too (a broker shutting down also closes connections).
    """
    try:
        await _probe_once(s, timeout_s)
    except HandshakeClosed:
        await asyncio.sleep(1.0)  # one retry before calling the protocol wrong
        await _probe_once(s, timeout_s)


async def _probe_once(s: Settings, timeout_s: float) -> None:
    from aiokafka import errors
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    host, _, port = s.broker.split(",")[0].strip().rpartition(":")
    where = f"{host}:{port}"
    options = aiokafka_options(s)
    options.pop("bootstrap_servers")
    conn = None
    stage = "connect"
    try:
        conn = await asyncio.wait_for(
            create_conn(host, int(port), request_timeout_ms=int(timeout_s * 1000),
                        **options), timeout_s)
        stage = "metadata"
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    except errors.SaslAuthenticationFailed as exc:
        raise _refuse(s, (
            f"SASL authentication as {s.sasl_username!r} ({s.sasl_mechanism}) failed at "
            f"{where}: {exc.args[0] if exc.args else exc}. Check --sasl-username / "
            "METERING_SASL_USERNAME and the password (METERING_SASL_PASSWORD or "
            "--sasl-password-file), and that the broker has a "
            f"{s.sasl_mechanism} credential for this user (kafka-configs --alter "
            f"--entity-type users --entity-name {s.sasl_username} --add-config "
            f"'{s.sasl_mechanism}=[password=...]')")) from None
    except errors.UnsupportedSaslMechanismError:
        raise _refuse(s, (
            f"the broker at {where} does not enable SASL mechanism {s.sasl_mechanism}: set "
            "--sasl-mechanism / METERING_SASL_MECHANISM to one its sasl.enabled.mechanisms "
            "lists (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)")) from None
    except ssl.SSLError as exc:
        raise _tls_failure(s, where, exc) from None
    except errors.KafkaConnectionError as exc:
        if stage == "metadata" and uses_tls(s) and not uses_sasl(s):
            raise HandshakeClosed(EXIT_SECURITY, redact((
                f"the listener at {where} accepted TLS but not the requests that follow: it "
                "requires SASL (set --security-protocol SASL_SSL, --sasl-mechanism, "
                "--sasl-username and the password)"), s)) from None
        if "closed" in str(exc) or stage == "metadata":
            raise _closed(s, where) from None
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from None
    except (TimeoutError, OSError) as exc:
        raise BrokerUnreachable(f"{type(exc).__name__}: {exc}") from None
    finally:
        if conn is not None:
            conn.close()


def _grant_hint(s: Settings, role: str, resource: str, name: str, operations: str) -> str:
    """The ``kafka-acls`` commands of ``role``'s ACLs on ``resource`` ``name``."""
    who = principal(s)
    fixes = [a for a in acls.required(s, role) if a.resource == resource
             and (a.name == name or (a.pattern == "PREFIXED" and name.startswith(a.name)))
             and a.operation in operations]
    commands = "; ".join(a.command(who, s.broker) for a in fixes)
    return commands or f"grant User:{who} {operations} on {resource} {name}"


def denied(s: Settings, role: str, resource: str, name: str, operations: str,
           doing: str) -> PreflightError:
    """The error for a missing ACL: who lacks what, and the command that grants it."""
    return _refuse(s, (
        f"not authorized: principal User:{principal(s)} may not {doing} ({operations} on "
        f"{resource} {name!r}). Grant it (README, Security: ACLs): "
        f"{_grant_hint(s, role, resource, name, operations)}"))


async def _can_write(admin: Any, topic: str, leader: int) -> bool:
    """Whether WRITE on ``topic`` is granted, without writing: an empty produce request is
    refused for authorization (TOPIC_AUTHORIZATION_FAILED) before its records are checked
    (INVALID_RECORD otherwise); nothing is appended either way."""
    from aiokafka.protocol.produce import ProduceRequest

    from agents.faustapi import admin_request

    response = await admin_request(admin, ProduceRequest(None, 1, 5000, [(topic, [(0, b"")])]),
                                   node_id=leader)
    codes = {p[1] for _t, parts in response.topics for p in parts}
    return 29 not in codes


async def _can_read(s: Settings, topic: str) -> bool:
    """Whether READ on ``topic`` is granted: one fetch at the end of partition 0."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import TopicAuthorizationFailedError

    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(**aiokafka_options(s), group_id=None, enable_auto_commit=False,
                              request_timeout_ms=10_000)
    await reader.start()
    try:
        reader.assign([tp])
        await asyncio.wait_for(reader.seek_to_end(tp), 10)
        await reader.getmany(tp, timeout_ms=300)
        return True
    except TopicAuthorizationFailedError:
        return False
    finally:
        await reader.stop()


async def check_access(s: Settings, admin: Any, role: str) -> None:
    """Ask the broker whether ``role`` (``worker`` or ``archive``) may do what it needs with
    the topics and the consumer group of ``s``; :class:`PreflightError` names the first
    missing ACL. Topics that do not exist yet are left to the creation step."""
    from aiokafka.errors import GroupAuthorizationFailedError, GroupCoordinatorNotAvailableError

    if role == "worker":
        reads, writes, group = [s.input_topic], [s.usage_topic, s.rejects_topic], s.app_id
    else:
        reads, writes, group = [s.usage_topic], [], f"{s.app_id}-archive"
    described = await asyncio.wait_for(admin.describe_topics(reads + writes), 15)
    info = {t["topic"]: t for t in described}
    for topic in reads + writes:
        if info.get(topic, {}).get("error_code") == 29:
            ops = "Read" if topic in reads else "Write"
            raise denied(s, role, "topic", topic, ops, f"{ops.lower()} topic {topic!r}")
    for topic in writes:
        parts = info.get(topic, {}).get("partitions") or []
        leader = next((p["leader"] for p in parts if p["partition"] == 0), -1)
        if leader >= 0 and not await _can_write(admin, topic, leader):
            raise denied(s, role, "topic", topic, "Write", f"write topic {topic!r}")
    for topic in reads:
        if info.get(topic, {}).get("partitions") and not await _can_read(s, topic):
            raise denied(s, role, "topic", topic, "Read", f"read topic {topic!r}")
    deadline = time.monotonic() + 30
    while True:
        try:
            await asyncio.wait_for(admin.find_coordinator(group), 15)
            return
        except GroupAuthorizationFailedError:
            raise denied(s, role, "group", group, "Read",
                         f"join consumer group {group!r}") from None
        except GroupCoordinatorNotAvailableError:  # __consumer_offsets is being created
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # poll with a deadline
