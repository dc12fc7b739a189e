"""The debounce: a file is ready only once it has been quiet for ``settle_seconds``.

"Quiet" means no hint (filesystem event or scan sighting) arrived for it, and its
:class:`~hottask_sync.files.FileSig` (size, mtime, inode) did not change, for the whole
settle period. A writer that is still appending keeps pushing the deadline out.

This module is a pure component: no I/O, no threads, no clock. The caller passes ``now``
(any monotonic float, seconds) and a ``stat`` function, which keeps it deterministic to test
and lets the watcher own all of the threading. It is not thread-safe on its own; the caller
serialises access.

Scale: the pending keys live in a dict, and their deadlines in a binary heap of
``(deadline, seq, key)`` with lazy invalidation. Every (re)schedule pushes a fresh entry with
a new ``seq``; an entry is live only while its ``seq`` is the one the key currently holds
(its generation), so stale entries are skipped when popped instead of being searched for.
``hint`` is O(log n), ``poll`` is O(due · log n) and never stats a key that is not due, and
the heap is rebuilt once stale entries outnumber live ones, so hinting one key a million
times does not grow memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hottask_sync.files import FileSig

K = TypeVar("K", bound=Hashable)

#: The heap is rebuilt when it holds more than ``2 * live + _COMPACT_SLACK`` entries.
#: The slack keeps tiny settlers from rebuilding on every other hint.
_COMPACT_SLACK = 64


@dataclass(frozen=True)
class SettleResult(Generic[K]):
    """What one :meth:`Settler.poll` found.

    ``ready`` holds the keys that stayed quiet for the whole settle period, with the
    signature they were last seen with, in deadline order. ``vanished`` holds the keys whose
    ``stat`` returned None when they came due. Both kinds are no longer in the settler.
    """

    ready: list[tuple[K, FileSig]] = field(default_factory=list)
    vanished: list[K] = field(default_factory=list)


class _Pending:
    """One waiting key: the signature it was last seen with, its deadline, its generation."""

    __slots__ = ("deadline", "seq", "sig")

    def __init__(self, sig: FileSig, deadline: float, seq: int) -> None:
        self.sig = sig
        self.deadline = deadline
        self.seq = seq


class Settler(Generic[K]):
    """Tracks files that may still be written to and says when each has settled.

    Keys are whatever the caller uses to name a file (a path, a ``(folder, relpath)``
    tuple, ...); they must be hashable. They are never compared with each other.
    """

    def __init__(self, settle_seconds: float) -> None:
        """Given the quiet period in seconds (>= 0), returns an empty settler.

        Raises ValueError when ``settle_seconds`` is negative.
        """
        self._settle_seconds = _check_seconds(settle_seconds)
        self._pending: dict[K, _Pending] = {}
        self._heap: list[tuple[float, int, K]] = []
        # A global counter doubles as every key's generation: it gives each heap entry a
        # unique tie-breaker (so keys are never compared) and identifies the live entry.
        self._seq = 0

    @property
    def settle_seconds(self) -> float:
        """The quiet period. Changing it (config reload) applies to future hints and
        re-schedules; deadlines already set are kept."""
        return self._settle_seconds

    @settle_seconds.setter
    def settle_seconds(self, value: float) -> None:
        self._settle_seconds = _check_seconds(value)

    def __len__(self) -> int:
        """Returns how many keys are waiting."""
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        """Returns True when ``key`` is waiting."""
        return key in self._pending

    def hint(self, key: K, now: float, sig: FileSig, *, ready_now: bool = False) -> None:
        """Records that an event or a scan saw ``key`` with signature ``sig`` at ``now``.

        Without ``ready_now`` the key's quiet timer restarts: its deadline becomes
        ``now + settle_seconds`` and ``sig`` is what the file must still look like then.
        Repeated hints for one key keep one entry.

        With ``ready_now`` (a startup scan or rescan found a file whose mtime is already
        older than ``settle_seconds``) a new key is due at once, ``deadline = now``; it is
        still stat'ed at the next poll and is ready only if unchanged. For a key that is
        already waiting, ``ready_now`` never shortens its deadline (an event saw activity
        more recently than the scan can know about, e.g. rsync writing a file and then
        setting an old mtime); if ``sig`` differs from the recorded one the timer restarts
        as for a plain hint.
        """
        current = self._pending.get(key)
        if ready_now:
            if current is None:
                self._schedule(key, sig, now)
                return
            if current.sig.same_version(sig):
                return
        self._schedule(key, sig, now + self._settle_seconds)

    def poll(self, now: float, stat: Callable[[K], FileSig | None]) -> SettleResult[K]:
        """Given the time and a way to stat a key, returns the keys that settled or vanished.

        Every key whose deadline is ``<= now`` is stat'ed exactly once:

        - ``stat`` returns None: the file is gone; the key is reported in ``vanished``.
        - the signature is not :meth:`FileSig.same_version` as the recorded one: the file is
          still changing; the new signature is recorded and the deadline becomes
          ``now + settle_seconds``. Such a key is never looked at again in the same poll, so
          with ``settle_seconds == 0`` it is re-checked at the next poll, not in a loop.
        - unchanged: the key is reported in ``ready`` with the fresh signature.

        Keys reported as ready or vanished are removed from the settler. Keys not yet due
        are not stat'ed. If ``stat`` raises, the exception propagates and the settler is
        left as if this poll had not happened (every due key is still due).
        """
        due: list[tuple[float, int, K]] = []
        ready: list[tuple[K, FileSig]] = []
        vanished: list[K] = []
        changed: list[tuple[K, FileSig]] = []
        try:
            while self._heap and self._heap[0][0] <= now:
                item = heapq.heappop(self._heap)
                _deadline, seq, key = item
                entry = self._pending.get(key)
                if entry is None or entry.seq != seq:
                    continue  # stale: the key was re-hinted, discarded or already done
                due.append(item)
                sig = stat(key)
                if sig is None:
                    vanished.append(key)
                elif entry.sig.same_version(sig):
                    ready.append((key, sig))
                else:
                    changed.append((key, sig))
        except BaseException:
            for item in due:
                heapq.heappush(self._heap, item)
            raise
        for key, _sig in ready:
            del self._pending[key]
        for key in vanished:
            del self._pending[key]
        # Re-scheduled only after the loop: with settle_seconds == 0 the new deadline is
        # ``now`` and the key would otherwise be popped again in this same poll, forever
        # if the file keeps changing.
        for key, sig in changed:
            self._schedule(key, sig, now + self._settle_seconds)
        return SettleResult(ready, vanished)

    def due(self, now: float) -> list[tuple[K, FileSig, int]]:
        """Given the time, takes every key whose deadline is ``<= now``, each once, for a
        check elsewhere (another thread may stat it); returns ``(key, recorded sig, token)``.

        The keys stay waiting (``len`` and ``in`` count them) until :meth:`checked` says
        what the check found. A hint that arrives meanwhile restarts the key's timer as
        usual and makes the pending check stale.
        """
        taken: list[tuple[K, FileSig, int]] = []
        while self._heap and self._heap[0][0] <= now:
            _deadline, seq, key = heapq.heappop(self._heap)
            entry = self._pending.get(key)
            if entry is not None and entry.seq == seq:
                taken.append((key, entry.sig, seq))
        return taken

    def checked(self, key: K, token: int, sig: FileSig | None, now: float) -> str:
        """Given what a check of a key taken by :meth:`due` found (None: gone), settles it.

        Returns ``"ready"`` (unchanged: the key leaves the settler), ``"vanished"`` (gone:
        it leaves), ``"changed"`` (still changing: its timer restarts from ``now``) or
        ``"stale"`` (hinted or discarded since it was taken: nothing happens).
        """
        entry = self._pending.get(key)
        if entry is None or entry.seq != token:
            return "stale"
        if sig is None:
            del self._pending[key]
            return "vanished"
        if entry.sig.same_version(sig):
            del self._pending[key]
            return "ready"
        self._schedule(key, sig, now + self._settle_seconds)
        return "changed"

    def next_deadline(self) -> float | None:
        """Returns the earliest pending deadline (for the caller's wait timeout), or None
        when nothing is waiting."""
        heap = self._heap
        while heap:
            _deadline, seq, key = heap[0]
            entry = self._pending.get(key)
            if entry is not None and entry.seq == seq:
                return entry.deadline
            heapq.heappop(heap)  # drop the stale head so the next call is O(1)
        return None

    def discard(self, key: K) -> None:
        """Forgets ``key`` if it is waiting (e.g. it was deleted or renamed away); no error
        otherwise."""
        if self._pending.pop(key, None) is not None:
            self._maybe_compact()

    # --- internals --------------------------------------------------------------------

    def _schedule(self, key: K, sig: FileSig, deadline: float) -> None:
        self._seq += 1
        seq = self._seq
        entry = self._pending.get(key)
        if entry is None:
            self._pending[key] = _Pending(sig, deadline, seq)
        else:
            # The entry already on the heap for this key becomes stale (its seq no longer
            # matches); it is skipped when popped or dropped at the next compaction.
            entry.sig, entry.deadline, entry.seq = sig, deadline, seq
        heapq.heappush(self._heap, (deadline, seq, key))
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        # Rebuilding costs O(live) and happens only after more than live + slack stale
        # pushes, so it is amortised O(1) per hint and the heap stays <= 2 * live + slack.
        if len(self._heap) > 2 * len(self._pending) + _COMPACT_SLACK:
            self._heap = [(e.deadline, e.seq, k) for k, e in self._pending.items()]
            heapq.heapify(self._heap)


def _check_seconds(value: float) -> float:
    seconds = float(value)
    if not seconds >= 0:  # also rejects NaN
        raise ValueError(f"settle_seconds must be >= 0, got {value!r}")
    return seconds
