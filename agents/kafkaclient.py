"""The one place where settings become Kafka client configuration.

Every client metering opens takes its security from here: the Faust apps (worker,
archive: :func:`faust_options`), and every aiokafka admin, producer and consumer (preflight,
consumer-lag observers, ``simulate --to-kafka``, the demo, the benchmarks:
:func:`aiokafka_options`). Tools that are given only a bootstrap address read the security
settings from the ``METERING_*`` environment (:func:`security_from_env`), so one set of
variables secures every command.

Secrets: the returned dicts hold the SASL password (the clients need it); never log them.
:func:`describe` is the printable summary.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

from metering.settings import ENV_PREFIX, SECURITY_FIELDS, Settings, load_settings


def uses_tls(s: Settings) -> bool:
    return s.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(s: Settings) -> bool:
    return s.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The client TLS context of ``s`` (None without TLS).

    Verifies the broker's certificate against ``ssl_cafile`` (or the system store) and,
    unless ``ssl_check_hostname`` is false, its host name; presents ``ssl_certfile`` with
    ``ssl_keyfile`` for mutual TLS.
    """
    if not uses_tls(s):
        return None
    ctx = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH,
                                     cafile=s.ssl_cafile or None)
    ctx.check_hostname = s.ssl_check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if s.ssl_certfile:
        ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile or None)
    return ctx


def aiokafka_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaAdminClient``/``AIOKafkaProducer``/``AIOKafkaConsumer``
    (bootstrap servers and security; holds the password: never log it)."""
    options: dict[str, Any] = {"bootstrap_servers": s.broker,
                               "security_protocol": s.security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        options["ssl_context"] = ctx
    if uses_sasl(s):
        options.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                       sasl_plain_password=s.sasl_password)
    return options


def compression_type(s: Settings) -> str | None:
    """aiokafka's ``compression_type`` for the ``compression`` setting (None: off). lz4,
    zstd and snappy need ``cramjam`` (a dependency); aiokafka raises at producer start
    without it."""
    return None if s.compression == "none" else s.compression


def faust_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: ``broker_credentials`` (SASL, TLS) or nothing."""
    import faust

    ctx = ssl_context(s)
    if uses_sasl(s):
        return {"broker_credentials": faust.SASLCredentials(
            username=s.sasl_username, password=s.sasl_password, ssl_context=ctx,
            mechanism=s.sasl_mechanism)}
    if ctx is not None:
        return {"broker_credentials": faust.SSLCredentials(ctx)}
    return {}


def security_from_env(bootstrap: str, env: Mapping[str, str] | None = None) -> Settings:
    """Settings for a client given only ``bootstrap``: the security settings from the
    ``METERING_*`` environment (validated; :class:`SettingsError` names the problems), every
    other setting at its default."""
    env = os.environ if env is None else env
    names = {ENV_PREFIX + name.upper() for name in SECURITY_FIELDS}
    return load_settings(env={k: v for k, v in env.items() if k in names},
                         overrides={"broker": bootstrap})


def client_options(bootstrap: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:func:`aiokafka_options` for ``bootstrap`` with the environment's security settings."""
    return aiokafka_options(security_from_env(bootstrap, env))


def describe(s: Settings) -> str:
    """A one-line, secret-free summary, e.g. ``SASL_SSL (SCRAM-SHA-512, user metering)``."""
    parts: list[str] = []
    if uses_sasl(s):
        parts.append(f"{s.sasl_mechanism}, user {s.sasl_username}")
    if uses_tls(s):
        parts.append(f"CA {s.ssl_cafile or 'system store'}")
        if s.ssl_certfile:
            parts.append(f"client certificate {s.ssl_certfile}")
        if not s.ssl_check_hostname:
            parts.append("host name not checked")
    return s.security_protocol + (f" ({'; '.join(parts)})" if parts else "")
