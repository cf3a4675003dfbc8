"""Per-partition metering engines over Faust's RocksDB tables.

Each partition of the internal events topic gets its own :class:`metering.engine.Engine`,
whose entity and account mappings read through to that partition's RocksDB (values encoded
with :mod:`metering.codec`); the keys each engine call changed are collected
(:meth:`PartitionMeter.take`) until :meth:`PartitionMeter.flush`, which writes each changed
key once per batch, in bulk and in this order:

1. the changelog records (the table's changelog topic, the partition's own partition) as
   record batches, and waits until the broker acknowledged every one (a failed send
   raises: the caller stops the worker, nothing is committed past it);
2. one RocksDB ``WriteBatch`` per table partition holding the changed keys and the offset
   of the last acknowledged changelog record (Faust's persisted offset, from which
   recovery replays the changelog).

So an input offset is committed only after the state it produced is on the changelog
(issue 18: Faust's own table path could commit past changelog records still queued or
failed). Faust's table API (``table[key] = value``: one changelog record per loop
iteration, ~100 us each) is not used; the tables are still Faust's (changelog topics,
recovery, standbys, rebalancing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import rocksdict

from agents.faustapi import OFFSET_KEY, partition_db
from agents.observe import WorkerCounts
from agents.sender import BatchSender
from metering.codec import decode_account, decode_entity, encode_account, encode_entity
from metering.engine import Applied, Engine, Policy
from metering.intervals import UsageInterval
from metering.periods import PeriodGrid, as_period
from metering.settings import Settings
from metering.states import AccountState, EntityState

log = logging.getLogger("metering.worker")
CACHE_MAX = 200_000
"""Decoded states kept per partition between batches (about 0.5 KiB each)."""
CUT_CHUNK = 10_000
"""Open resources cut per step of a period cut (``Engine.advance(limit)``); the meter agent
sends and stores each step before the next, so memory stays bounded with a million."""


class _ReadThrough(MutableMapping[str, Any]):
    """Dict cache over one table partition's RocksDB; decoded on read, encoded by the owner
    on flush."""

    def __init__(self, table: Any, partition: int, decode: Any, prefix: str = "") -> None:
        self.table = table
        self.partition = partition
        self.decode = decode
        self.prefix = prefix
        self.cache: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self.cache[key]
        except KeyError:
            raw = partition_db(self.table, self.partition).get((self.prefix + key).encode())
            if raw is None:
                raise KeyError(key) from None
            value = self.cache[key] = self.decode(raw)
            return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.cache[key] = value

    def __delitem__(self, key: str) -> None:  # pragma: no cover - the engine never deletes
        raise NotImplementedError("metering keeps tombstones; states are never deleted")

    def __iter__(self) -> Iterator[str]:  # pragma: no cover - not used by the engine
        return iter(self.cache)

    def __len__(self) -> int:  # pragma: no cover
        return len(self.cache)


class PartitionMeter:
    """The engine of one partition plus its table views."""

    def __init__(self, partition: int, settings: Settings, entities: Any, accounts: Any,
                 stats: WorkerCounts,
                 changelogs: tuple[BatchSender, BatchSender] | None = None) -> None:
        self.partition = partition
        self.entities_table = entities
        self.accounts_table = accounts
        self.stats = stats
        self.changelogs = changelogs
        """Senders to the entity and account changelog topics (None: :func:`store` refuses)."""
        self.entity_view = _ReadThrough(entities, partition, decode_entity)
        self.account_view = _ReadThrough(accounts, partition, decode_account,
                                         prefix=f"{partition}:")
        policy = Policy(
            grid=PeriodGrid(as_period(settings.period), settings.timezone),
            lateness_ms=settings.lateness_ms,
            idle_advance_ms=settings.idle_advance_ms,
            wait_for_inputs=True,  # the first tick names every input partition
            orphan_close_ttl_ms=settings.orphan_close_ttl_ms,
            max_watermark_jump_ms=settings.max_watermark_jump_ms,
        )
        self.meter = Engine(policy, self.entity_view, self.account_view)
        self.dirty: set[str] = set()
        self.dirty_accounts: set[str] = set()
        self._restore()

    def take(self, applied: Applied) -> list[UsageInterval]:
        """Remember the keys an engine call changed (written by :meth:`flush`); its rows."""
        self.dirty |= applied.entities
        self.dirty_accounts |= applied.accounts
        return applied.rows

    def _restore(self) -> None:
        """Rebuild the in-memory indexes from this partition's RocksDB."""
        db = partition_db(self.entities_table, self.partition)
        states: list[tuple[str, EntityState]] = []
        for key, value in db.items():
            if key == OFFSET_KEY or value is None:
                continue
            state = decode_entity(value)
            if state.slots or state.held:
                states.append((key.decode(), state))
        self.meter.rebuild_index(states)
        log.info("partition %d: %d open or held resources restored from RocksDB",
                 self.partition, len(states))
        # Lane clocks and cut positions are deliberately not restored. Changelog writes of
        # one batch reach Kafka independently (two tables, several partitions), so after a
        # crash a saved clock can be newer than some restored entity states; a record
        # redelivered to such an entity would then meet a period cut that had not happened
        # when it was first applied. Starting cold is safe: ticks and records rebuild the
        # clocks, each naming only progress whose records precede it in this partition, and
        # cutting later than before emits the same pieces.
        self.stats.partition_restores += 1

    def _changed(self) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
        """The changed (key, encoded value) pairs of the entity and account tables."""
        entities = [(key.encode(), encode_entity(self.entity_view.cache[key]))
                    for key in self.dirty]
        prefix = f"{self.partition}:"
        accounts: list[tuple[bytes, bytes]] = []
        for key in self.dirty_accounts:
            state: AccountState = self.account_view.cache[key]
            accounts.append(((prefix + key).encode(), encode_account(state)))
        self.dirty.clear()
        self.dirty_accounts.clear()
        return entities, accounts

    def _store(self, table: Any, items: list[tuple[bytes, bytes]],
               changelog_offset: int | None) -> None:
        """One RocksDB write of ``items`` (and the persisted changelog offset, if given)."""
        if not items:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in items:
            batch.put(key, value)
        if changelog_offset is not None:
            batch.put(OFFSET_KEY, str(changelog_offset).encode())
        partition_db(table, self.partition).write(batch)

    @property
    def caches_full(self) -> bool:
        """A read cache holds more than CACHE_MAX states (:meth:`trim_caches` drops it)."""
        return max(len(self.entity_view.cache), len(self.account_view.cache)) > CACHE_MAX

    def trim_caches(self) -> None:
        """Drop the read caches past CACHE_MAX entries (only while no snapshot of them
        waits to be stored: a dropped entry is read back from RocksDB)."""
        # The decoded states stay cached (they equal what was just written); the cache is
        # dropped when it grows past CACHE_MAX entries, and on rebalance with the engine.
        if len(self.entity_view.cache) > CACHE_MAX:
            self.entity_view.cache.clear()
        if len(self.account_view.cache) > CACHE_MAX:
            self.account_view.cache.clear()

    async def flush(self) -> None:
        """Write every changed state once: changelog first (acknowledged), then RocksDB.

        Raises if a changelog send fails (nothing is then written locally)."""
        await flush_all([self])


Changes = list[tuple[PartitionMeter, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]]
"""Encoded changed states per engine: (engine, entity items, account items)."""


def snapshot(meters: list[PartitionMeter]) -> Changes:
    """Encode every changed state of ``meters`` now (what :func:`store` writes later, while
    the engines go on with the next batch)."""
    return [(pm, *pm._changed()) for pm in meters]


async def store(changes: Changes) -> None:
    """Write encoded changed states (their own partitions, one sender per table): the
    changelog records first, all acknowledged, then one RocksDB write batch per table
    partition with the persisted changelog offset. Raises if a changelog send fails
    (nothing is then written locally)."""
    senders: dict[int, BatchSender] = {}
    for pm, entities, accounts in changes:
        if pm.changelogs is None:
            raise RuntimeError("PartitionMeter without changelogs: nothing to store through")
        entities_out, accounts_out = pm.changelogs
        for out, items in ((entities_out, entities), (accounts_out, accounts)):
            senders[id(out)] = out
            await out.add_many(items, pm.partition)
    results = await asyncio.gather(*(out.flush() for out in senders.values()))
    acked_by = dict(zip(senders, results, strict=True))
    for pm, entities, accounts in changes:  # acknowledged: now the local stores
        assert pm.changelogs is not None
        p = pm.partition
        pm._store(pm.entities_table, entities, acked_by[id(pm.changelogs[0])].get(p))
        pm._store(pm.accounts_table, accounts, acked_by[id(pm.changelogs[1])].get(p))


async def flush_all(meters: list[PartitionMeter]) -> None:
    """:func:`snapshot` then :func:`store` (then the read caches are trimmed)."""
    await store(snapshot(meters))
    for pm in meters:
        pm.trim_caches()


class PartitionMeters:
    """Lazily created :class:`PartitionMeter` per assigned partition."""

    def __init__(self, settings: Settings, entities: Any, accounts: Any,
                 stats: WorkerCounts, changelogs: tuple[BatchSender, BatchSender]) -> None:
        self.settings = settings
        self.entities = entities
        self.accounts = accounts
        self.stats = stats
        self.changelogs = changelogs
        self.by_partition: dict[int, PartitionMeter] = {}

    def for_partition(self, partition: int) -> PartitionMeter:
        """The engine of ``partition`` (restored from RocksDB on first use)."""
        pm = self.by_partition.get(partition)
        if pm is None:
            pm = self.by_partition[partition] = PartitionMeter(
                partition, self.settings, self.entities, self.accounts, self.stats,
                self.changelogs)
        return pm

    def forget(self, partitions: set[int]) -> None:
        """Drop engines of revoked or re-assigned partitions (restored again on next use)."""
        for p in partitions:
            self.by_partition.pop(p, None)
