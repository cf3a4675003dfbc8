"""The true usage of a simulated cloud, kept by construction while it is simulated.

The simulator does not interpret the events it writes: each process states what it does to
a resource ("this VM starts running now") and the bookkeeping here records it. Times are UTC
epoch milliseconds; the horizon ``until_ms`` cuts what is still open.

Keys are ``(account_id, usage_type, resource_id, zone_id)`` where ``zone_id`` is set only
for TEMPLATE (7) and ISO (8), which CloudStack meters per zone; it is None otherwise. The
account is part of the key (contract rule 4a): one account's close never ends another
account's interval of the same resource id.

The bookkeeping follows contract rules 2 and 3 as the engine does, so that a process may
state the same transition twice: an open at or before the key's last close (the end of the
last interval closed there) is stale and changes nothing; a close of what is not open is
remembered for ``orphan_close_ttl_ms`` (of the newest time stated so far) and an earlier open
stated later claims it, giving ``[open, close)`` with nothing left open. The simulator itself
never opens a key again at or before the second it closed it (a reopen follows a close by at
least ten seconds; an HA restart's ``VM.START`` reopens what is still open).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from metering.eventtime import iso
from metering.usage_types import UsageType

TruthKey = tuple[str, int, str, str | None]

PER_ZONE = frozenset({int(UsageType.TEMPLATE), int(UsageType.ISO)})
ORPHAN_CLOSE_TTL_MS: Final = 86_400_000
EVERY_ZONE: Final = None


class Truth:
    """Open intervals and accumulated milliseconds per resource and usage type."""

    def __init__(self, until_ms: int, orphan_close_ttl_ms: int = ORPHAN_CLOSE_TTL_MS) -> None:
        self.until_ms = until_ms
        self.orphan_close_ttl_ms = orphan_close_ttl_ms
        self.totals: dict[TruthKey, int] = {}
        self._open: dict[TruthKey, int] = {}
        self._last_close: dict[TruthKey, int] = {}
        self._orphans: dict[tuple[str, int, str], list[tuple[int, str | None]]] = {}
        self._now = -(2**62)
        self._deleted: dict[str, int] = {}
        self._open_by_account: dict[str, dict[TruthKey, None]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.malformed: list[dict[str, Any]] = []
        self.zero_length = 0

    @staticmethod
    def key(account: str, usage_type: int, resource: str, zone: str | None) -> TruthKey:
        return (account, usage_type, resource, zone if usage_type in PER_ZONE else None)

    def open(self, account: str, usage_type: int, resource: str, zone: str | None,
             t: int) -> None:
        """Start metering at ``t`` unless already open (re-opening changes nothing) or stale
        (``t`` at or before the key's last close); an earlier open than a remembered close
        meters up to that close and leaves nothing open (rules 2, 3)."""
        k = self.key(account, usage_type, resource, zone)
        now = self._tick(t)
        if k in self._open or t >= self._deleted.get(account, t + 1):
            return
        if t <= self._last_close.get(k, t - 1):  # stale: at or before the last close
            return
        self.totals.setdefault(k, 0)
        end = self._claim(k, t, now)
        if end is not None:
            self._open[k] = t
            self._open_by_account.setdefault(account, {})[k] = None
            self._close(k, min(end, self._deleted.get(account, end)))
            return
        self._open[k] = t
        self._open_by_account.setdefault(account, {})[k] = None

    def _tick(self, t: int) -> int:
        """Advance the newest stated time to ``t``; return the one before."""
        now = self._now
        if t > now:
            self._now = t
        return now

    def _remember(self, k: TruthKey, t: int, zone: str | None) -> None:
        if zone is not EVERY_ZONE and t <= self._last_close.get(k, t - 1):
            return  # a repeated close: no open could claim it
        self._orphans.setdefault((k[0], k[1], k[2]), []).append((t, zone))

    def _claim(self, k: TruthKey, t: int, now: int) -> int | None:
        pending = self._orphans.get((k[0], k[1], k[2]))
        if not pending:
            return None
        pending[:] = [o for o in pending if now - o[0] <= self.orphan_close_ttl_ms]
        fits = [o for o in pending if o[0] > t and o[1] in (EVERY_ZONE, k[3] or "")]
        if not fits:
            return None
        best = min(fits, key=lambda o: (o[0], o[1] is EVERY_ZONE))
        if best[1] is not EVERY_ZONE:
            pending.remove(best)
        return best[0]

    def close(self, account: str, usage_type: int, resource: str, zone: str | None,
              t: int) -> None:
        """Stop metering at ``t``; a close before the open counts zero (clock skew); a close
        of what is not open is remembered (rule 3)."""
        k = self.key(account, usage_type, resource, zone)
        self._tick(t)
        if k in self._open:
            self._close(k, t)
        else:
            self._remember(k, t, k[3] or "")

    def close_all_zones(self, account: str, usage_type: int, resource: str, t: int) -> None:
        """A template/ISO delete without a zone: close the resource in every zone (if none
        is open, remembered for every zone)."""
        self._tick(t)
        hits = [k for k in self._open_by_account.get(account, ())
                if k[1] == usage_type and k[2] == resource]
        for k in hits:
            self._close(k, t)
        if not hits:
            self._remember(self.key(account, usage_type, resource, None), t, EVERY_ZONE)

    def split(self, account: str, usage_type: int, resource: str, zone: str | None,
              t: int) -> None:
        """Close and reopen at ``t`` (new attributes): the total does not change. With
        nothing open, an open (stale or claiming a remembered close as :meth:`open`)."""
        k = self.key(account, usage_type, resource, zone)
        if k in self._open:
            self._tick(t)
            self._close(k, t)
            self._open[k] = max(t, self._last_close[k])
            self._open_by_account.setdefault(account, {})[k] = None
            return
        self.open(account, usage_type, resource, zone, t)

    def close_account(self, account: str, t: int) -> None:
        """The account was deleted at ``t``: everything it had open stops at ``t``, and an
        earlier open stated later meters up to ``t`` at most."""
        self._deleted[account] = min(t, self._deleted.get(account, t))
        for k in list(self._open_by_account.get(account, ())):
            self._close(k, t)

    def _close(self, k: TruthKey, t: int) -> None:
        start = self._open.pop(k, None)
        if start is None:
            return
        self._open_by_account[k[0]].pop(k, None)
        if t <= start:
            self.zero_length += 1
        self._last_close[k] = max(t, start)
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
