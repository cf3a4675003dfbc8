"""Accounts: what the engine knows of each account, and which resources it has open.

:class:`Accounts` applies ``ACCOUNT.CREATE`` (the account's domain, rule 7) and
``ACCOUNT.DELETE`` (the deletion instant, rule 5) records to an account store (a dict for
replay, a RocksDB-backed table view in the worker), once per record (rule 6), and keeps an
in-memory index of the open intervals: which resources each account has open (so a
deletion closes them), which resources are open at all (so a period cut visits only them),
and how many intervals of each usage type are open (a metric).

Instants are UTC epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from metering.events import AccountCreated, AccountDeleted, Source
from metering.states import AccountState, EntityState, SlotKey

TOUCHED_MAX = 20_000
"""States :attr:`Accounts.touched` may hold after a batch before the index is synced."""


def _all_of(keys: tuple[SlotKey, ...], account: str) -> bool:
    """True if every key in ``keys`` is of ``account``."""
    for key in keys:  # noqa: SIM110 (all() over a generator costs a frame per call)
        if key[2] != account:
            return False
    return True


class Accounts:
    """The account store of one engine and the open-interval index.

    Args:
        store: account UUID -> :class:`~metering.states.AccountState` (any mutable mapping).
    """

    __slots__ = ("by_account", "open", "open_counts", "store", "touched")

    def __init__(self, store: MutableMapping[str, AccountState]) -> None:
        self.store = store
        self.by_account: dict[str, set[str]] = {}
        """Account -> resources with an interval of that account open."""
        self.open: dict[str, tuple[SlotKey, ...]] = {}
        """Resources with open intervals -> the keys of their open slots."""
        self.open_counts: dict[int, int] = {}
        """Open intervals per usage type (kept with :attr:`open`)."""
        self.touched: dict[str, EntityState] = {}
        """Resources whose open slots may have changed since the index was last brought up
        to date, with their states: :meth:`sync` indexes them. (The engine adds to it once
        per record; the index is read far less often: when a period is cut, an account
        deleted, a replay finished, or metrics read.)"""

    def _is_new(self, account: AccountState, src: Source) -> bool:
        lane = src.lane
        last = account.offsets.get(lane)
        if last is not None and src.offset <= last:
            return False
        account.offsets[lane] = src.offset
        return True

    def created(self, ev: AccountCreated, src: Source) -> bool:
        """Apply ``ACCOUNT.CREATE``; False if the record was applied already (rule 6)."""
        account = self.store.get(ev.account_id) or AccountState()
        new = self._is_new(account, src)
        if new:
            account.domain_id = ev.domain_id
        self.store[ev.account_id] = account
        return new

    def deleted(self, ev: AccountDeleted, src: Source) -> bool:
        """Apply a completed ``ACCOUNT.DELETE`` (the earliest deletion wins); False if the
        record was applied already (rule 6)."""
        account = self.store.get(ev.account_id) or AccountState()
        new = self._is_new(account, src)
        if new and (account.deleted_at is None or ev.time_ms < account.deleted_at):
            account.deleted_at = ev.time_ms
            account.deleted_by = src
        self.store[ev.account_id] = account
        return new

    def domain_of(self, account_id: str) -> str | None:
        """Domain UUID of an account, from ``ACCOUNT.CREATE`` (rule 7), or None."""
        account = self.store.get(account_id)
        return None if account is None else account.domain_id

    def open_of(self, account_id: str) -> list[str]:
        """The resources with an open interval of ``account_id``, sorted."""
        self.sync()
        return sorted(self.by_account.get(account_id, ()))

    def bound(self) -> None:
        """:meth:`sync` once :attr:`touched` holds more than :data:`TOUCHED_MAX` states
        (called after each batch): it keeps the states it holds alive, and a worker keeps
        only a bounded cache of states in memory (at a million resources, an unbounded
        :attr:`touched` between two period cuts more than doubled peak memory)."""
        if len(self.touched) > TOUCHED_MAX:
            self.sync()

    def sync(self) -> None:
        """Bring the index up to date with the :attr:`touched` states (before reading
        :attr:`open`, :attr:`by_account` or :attr:`open_counts`)."""
        touched = self.touched
        if touched:
            index = self.index
            for entity_id, state in touched.items():
                index(entity_id, tuple(state.slots))
            touched.clear()

    def index(self, entity_id: str, keys: tuple[SlotKey, ...]) -> None:
        """Record that ``entity_id``'s open slots are now ``keys``."""
        old = self.open.get(entity_id, ())
        if keys == old:
            return
        counts = self.open_counts
        for key in old:
            counts[key[0]] -= 1
        for key in keys:
            counts[key[0]] = counts.get(key[0], 0) + 1
        if keys:
            self.open[entity_id] = keys
            account = keys[0][2]
            if not old and _all_of(keys, account):  # opened, of one account
                members = self.by_account.get(account)
                if members is None:
                    self.by_account[account] = {entity_id}
                else:
                    members.add(entity_id)
                return
        else:
            self.open.pop(entity_id, None)
            account = old[0][2]
            if _all_of(old, account):  # all closed, of one account
                self._leave(account, entity_id)
                return
        if old and keys:
            account = old[0][2]
            if _all_of(old, account) and _all_of(keys, account):
                return  # one and the same account before and after: its index stays
        before = {k[2] for k in old}
        after = {k[2] for k in keys}
        for account in before - after:
            self._leave(account, entity_id)
        for account in after - before:
            self.by_account.setdefault(account, set()).add(entity_id)

    def _leave(self, account: str, entity_id: str) -> None:
        """``entity_id`` has no interval of ``account`` open any more."""
        members = self.by_account.get(account)
        if members is not None:
            members.discard(entity_id)
            if not members:
                del self.by_account[account]

    def clear_index(self) -> None:
        """Forget the index (before rebuilding it from stored states)."""
        self.by_account.clear()
        self.open.clear()
        self.open_counts.clear()
        self.touched.clear()
