"""Settling: closes held until every lane has passed their end.

A close is applied when its record arrives but emitted only once the engine's settled
watermark passes its end (:func:`metering.lifecycle.release`), so action events of other
lanes that precede it in event time are applied first. :class:`Settling` is the heap of
(end, resource) of the held closes; an entry may be stale (released already) and is then
skipped by the engine. Instants are UTC epoch milliseconds.
"""

from __future__ import annotations

from heapq import heappop, heappush


class Settling:
    """A min-heap of (end UTC ms, resource id) of held closes."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[int, str]] = []
        """The entries, a heap: ``heap[0]`` ends first (read only: the engine's per-record
        check of :meth:`due`, inlined)."""

    def hold(self, end: int, entity_id: str) -> None:
        """Remember that ``entity_id`` holds a close ending at ``end``."""
        heappush(self.heap, (end, entity_id))

    def due(self, settled: int) -> bool:
        """True if a held close ends at or before ``settled``."""
        heap = self.heap
        return bool(heap) and heap[0][0] <= settled

    def pop_due(self, settled: int) -> list[str]:
        """The resources holding closes that end at or before ``settled``, in end order
        (a resource appears once per held close; the caller skips what it released)."""
        heap = self.heap
        out: list[str] = []
        while heap and heap[0][0] <= settled:
            out.append(heappop(heap)[1])
        return out

    def clear(self) -> None:
        """Forget every entry (before rebuilding from stored states)."""
        self.heap.clear()

    def __len__(self) -> int:
        return len(self.heap)
