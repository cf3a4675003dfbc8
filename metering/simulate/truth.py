"""The true usage of a simulated cloud, kept by construction while it is simulated.

The simulator does not interpret the events it writes: each process states what it does to
a resource ("this VM starts running now") and the bookkeeping here records it. Times are UTC
epoch milliseconds; the horizon ``until_ms`` cuts what is still open.

Keys are ``(account_id, usage_type, resource_id, zone_id)`` where ``zone_id`` is set only
for TEMPLATE (7) and ISO (8), which CloudStack meters per zone; it is None otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from metering.eventtime import iso
from metering.usage_types import UsageType

TruthKey = tuple[str, int, str, str | None]

PER_ZONE = frozenset({int(UsageType.TEMPLATE), int(UsageType.ISO)})


class Truth:
    """Open intervals and accumulated milliseconds per resource and usage type."""

    def __init__(self, until_ms: int) -> None:
        self.until_ms = until_ms
        self.totals: dict[TruthKey, int] = {}
        self._open: dict[TruthKey, int] = {}
        self._open_by_account: dict[str, dict[TruthKey, None]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.malformed: list[dict[str, Any]] = []
        self.zero_length = 0

    @staticmethod
    def key(account: str, usage_type: int, resource: str, zone: str | None) -> TruthKey:
        return (account, usage_type, resource, zone if usage_type in PER_ZONE else None)

    def open(self, account: str, usage_type: int, resource: str, zone: str | None,
             t: int) -> None:
        """Start metering at ``t`` unless already open (re-opening changes nothing)."""
        k = self.key(account, usage_type, resource, zone)
        if k in self._open:
            return
        self._open[k] = t
        self._open_by_account.setdefault(account, {})[k] = None
        self.totals.setdefault(k, 0)

    def close(self, account: str, usage_type: int, resource: str, zone: str | None,
              t: int) -> None:
        """Stop metering at ``t``; a close before the open counts zero (clock skew)."""
        self._close(self.key(account, usage_type, resource, zone), t)

    def close_all_zones(self, account: str, usage_type: int, resource: str, t: int) -> None:
        """A template/ISO delete without a zone: close the resource in every zone."""
        for k in [k for k in self._open_by_account.get(account, ())
                  if k[1] == usage_type and k[2] == resource]:
            self._close(k, t)

    def split(self, account: str, usage_type: int, resource: str, zone: str | None,
              t: int) -> None:
        """Close and reopen at ``t`` (new attributes): the total does not change."""
        k = self.key(account, usage_type, resource, zone)
        if k in self._open:
            self._close(k, t)
        self.open(account, usage_type, resource, zone, t)

    def is_open(self, account: str, usage_type: int, resource: str, zone: str | None) -> bool:
        return self.key(account, usage_type, resource, zone) in self._open

    def close_account(self, account: str, t: int) -> None:
        """The account was deleted at ``t``: everything it had open stops at ``t``."""
        for k in list(self._open_by_account.get(account, ())):
            self._close(k, t)

    def _close(self, k: TruthKey, t: int) -> None:
        start = self._open.pop(k, None)
        if start is None:
            return
        self._open_by_account[k[0]].pop(k, None)
        if t <= start:
            self.zero_length += 1
        self.totals[k] += max(0, min(t, self.until_ms) - start)

    def finish(self) -> None:
        """Cut everything still open at the horizon."""
        for k in list(self._open):
            self._close(k, self.until_ms)

    def usage_rows(self) -> list[dict[str, Any]]:
        """One row per resource and usage type, sorted, with milliseconds and hours."""
        rows = []
        for (account, usage_type, resource, zone), ms in sorted(
            self.totals.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] or "")
        ):
            rows.append({
                "account_id": account, "usage_type": usage_type,
                "usage_type_name": UsageType(usage_type).name, "resource_id": resource,
                "zone_id": zone, "ms": ms,
            })
        return rows

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The ``--truth`` document (see :func:`load_truth` for reading it back)."""
        by_type: dict[str, int] = {}
        for (_, usage_type, _, _), ms in self.totals.items():
            name = UsageType(usage_type).name
            by_type[name] = by_type.get(name, 0) + ms
        return {
            **meta,
            "until": iso(self.until_ms),
            "until_ms": self.until_ms,
            "ms_by_usage_type": dict(sorted(by_type.items())),
            "zero_length_intervals": self.zero_length,
            "accounts": self.accounts,
            "usage": self.usage_rows(),
            "malformed": self.malformed,
        }


def truth_totals(doc: dict[str, Any]) -> dict[TruthKey, int]:
    """The ``usage`` rows of a truth document as ``{(account, type, resource, zone): ms}``."""
    return {
        (r["account_id"], r["usage_type"], r["resource_id"], r["zone_id"]): r["ms"]
        for r in doc["usage"]
    }


def totals_from_intervals(rows: Iterable[dict[str, Any]]) -> dict[TruthKey, int]:
    """Sum interval rows (``duration_ms``) into truth keys, to compare output with truth."""
    out: dict[TruthKey, int] = {}
    for r in rows:
        k = Truth.key(r["account_id"], r["usage_type"], r["resource_id"], r["zone_id"])
        out[k] = out.get(k, 0) + r["duration_ms"]
    return out
