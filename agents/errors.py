"""Errors of the edge (see the tree in :class:`metering.errors.MeteringError`).

Kept in one module without imports so that the command line's exit-code map
(``agents.cli.exits``) can name them without loading the modules that raise them.
"""

from __future__ import annotations

from metering.errors import MeteringError


class AgentError(MeteringError):
    """Root of the errors of :mod:`agents`."""


class BrokerError(AgentError, RuntimeError):
    """Base class of local-broker failures."""


class JarsUnavailableError(BrokerError):
    """Raised when Maven could not resolve the Kafka jars; the message says what to check."""


class BrokerStartError(BrokerError):
    """Raised when the broker did not become ready before its deadline; carries the log tail."""


class KafkaFailed(AgentError):
    """The broker could not be reached or refused the records."""


class DemoError(AgentError):
    """A part of the demo failed; the message says which and what to do."""


class RouteError(AgentError):
    """``metering route`` cannot run or cannot make progress; the message says what to do."""


class PreflightError(AgentError):
    """A refusal to start: ``code`` is the exit code, the message says what to do."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class BrokerUnreachable(AgentError):
    """The broker did not answer (refused, reset, timed out): worth waiting for."""


class HandshakeClosed(PreflightError):
    """The broker closed the connection during the TLS or SASL handshake (a refusal, unless
    a retry succeeds: a broker shutting down closes connections too)."""
