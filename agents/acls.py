"""The Kafka ACLs metering needs (least privilege), as data: one definition for the README
table, the ``kafka-acls`` commands in error messages, and the grants of the tests.

Roles and what they touch (``A`` = ``app_id``):

* ``worker``: reads the input topic; writes usage and rejects; reads, writes and creates the
  internal events topic; creates, reads and writes the topics Faust and the preflight derive
  from the app id (``A-<table>-changelog``, ``A-__assignor-__leader``, ``A-grid``: PREFIXED
  ``A-``); consumer group ``A``.
* ``archive``: reads the usage topic; creates, reads and writes its Faust leader topic
  (PREFIXED ``A-archive-``); consumer group ``A-archive``.
* ``simulate`` (``simulate --to-kafka``): writes the input topic (CREATE only to let it
  create the topic when missing).

READ and WRITE imply DESCRIBE (metadata, offsets, lag), so DESCRIBE is never listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from metering.settings import Settings

ROLES: Final = ("worker", "archive", "simulate")

# Kafka protocol codes (org.apache.kafka.common.acl / resource).
_RESOURCE: Final = {"topic": 2, "group": 3, "cluster": 4}
_PATTERN: Final = {"LITERAL": 3, "PREFIXED": 4}
_OPERATION: Final = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8}
_ALLOW: Final = 3


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW entry: ``principal`` may ``operation`` on ``resource`` ``name``."""

    resource: str  # topic, group
    pattern: str  # LITERAL, PREFIXED
    name: str
    operation: str  # Read, Write, Create, Describe
    why: str = ""

    def command(self, principal: str, bootstrap: str = "BROKER") -> str:
        """The ``kafka-acls`` command that grants it."""
        pattern = " --resource-pattern-type prefixed" if self.pattern == "PREFIXED" else ""
        return (f"kafka-acls --bootstrap-server {bootstrap} --command-config admin.properties "
                f"--add --allow-principal User:{principal} --operation {self.operation} "
                f"--{self.resource} {self.name}{pattern}")


def worker_acls(s: Settings) -> list[Acl]:
    a = s.app_id
    return [
        Acl("topic", "LITERAL", s.input_topic, "Read", "CloudStack's events"),
        Acl("topic", "LITERAL", s.usage_topic, "Write", "usage intervals"),
        Acl("topic", "LITERAL", s.rejects_topic, "Write", "rejected records"),
        *(Acl("topic", "LITERAL", s.events_topic, op, "internal repartition topic")
          for op in ("Read", "Write", "Create")),
        *(Acl("topic", "PREFIXED", f"{a}-", op, "changelogs, grid, Faust leader topic")
          for op in ("Read", "Write", "Create")),
        Acl("group", "LITERAL", a, "Read", "the worker's consumer group"),
    ]


def archive_acls(s: Settings) -> list[Acl]:
    a = f"{s.app_id}-archive"
    return [
        Acl("topic", "LITERAL", s.usage_topic, "Read", "usage intervals"),
        *(Acl("topic", "PREFIXED", f"{a}-", op, "Faust leader topic of the archive")
          for op in ("Read", "Write", "Create")),
        Acl("group", "LITERAL", a, "Read", "the archive's consumer group"),
    ]


def simulate_acls(s: Settings) -> list[Acl]:
    return [Acl("topic", "LITERAL", s.input_topic, "Write", "simulated events"),
            Acl("topic", "LITERAL", s.input_topic, "Create", "only to create it if missing")]


def required(s: Settings, role: str) -> list[Acl]:
    """The ACLs of ``role`` (one of :data:`ROLES`) for these settings."""
    return {"worker": worker_acls, "archive": archive_acls, "simulate": simulate_acls}[role](s)


def tenant_acls(prefix: str) -> list[Acl]:
    """One tenant's whole namespace (``topic_prefix`` = ``prefix``): every topic and group
    whose name starts with it, for the worker, the archive and ``simulate`` of the tenant
    (the roles' own lists, :func:`required`, are narrower and also valid)."""
    return [*(Acl("topic", "PREFIXED", prefix, op, "the tenant's topics")
              for op in ("Read", "Write", "Create")),
            Acl("group", "PREFIXED", prefix, "Read", "the tenant's consumer groups")]


def markdown_table(s: Settings) -> str:
    """The README table of :func:`required` for every role."""
    rows = ["| role | resource | pattern | name | operation | why |",
            "|---|---|---|---|---|---|"]
    for role in ROLES:
        rows += [f"| {role} | {x.resource} | {x.pattern} | `{x.name}` | {x.operation} | "
                 f"{x.why} |" for x in required(s, role)]
    return "\n".join(rows)


async def grant(admin_options: dict[str, Any], principal: str, acls: Iterable[Acl]) -> None:
    """Create ``acls`` for ``User:principal`` (CreateAcls v1, as a super user)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    from agents.faustapi import admin_request

    admin = AIOKafkaAdminClient(**admin_options, request_timeout_ms=10_000)
    await admin.start()
    try:
        for acl in acls:
            request = CreateAclsRequest(_RESOURCE[acl.resource], acl.name, _PATTERN[acl.pattern],
                                        f"User:{principal}", "*", _OPERATION[acl.operation],
                                        _ALLOW)
            response = await admin_request(admin, request)
            for error_code, message in response.creation_responses:
                if error_code:
                    raise RuntimeError(f"CreateAcls {acl} failed: {error_code} {message}")
    finally:
        await admin.close()
