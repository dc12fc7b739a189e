"""Unit tests for hottask_sync.settle: the debounce, driven by a fake ``now``."""

from __future__ import annotations

import time

import pytest

from hottask_sync.files import FileSig
from hottask_sync.settle import Settler


def sig(size: int = 10, mtime_ns: int = 1_000, ino: int = 1, dev: int = 1) -> FileSig:
    return FileSig(size, mtime_ns, ino, dev)


class FakeDisk:
    """A stat function over a dict, counting calls per key."""

    def __init__(self) -> None:
        self.files: dict[str, FileSig] = {}
        self.calls: list[str] = []

    def __call__(self, key: str) -> FileSig | None:
        self.calls.append(key)
        return self.files.get(key)


@pytest.fixture
def disk() -> FakeDisk:
    return FakeDisk()


def test_quiet_file_is_ready_after_exactly_settle_seconds(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(5.0)
    disk.files["a"] = sig()
    s.hint("a", 100.0, sig())
    assert s.poll(104.999, disk).ready == []
    assert disk.calls == []  # not due: not stat'ed
    result = s.poll(105.0, disk)
    assert result.ready == [("a", sig())]
    assert result.vanished == []
    assert "a" not in s
    assert len(s) == 0
    assert s.poll(200.0, disk).ready == []  # reported once only


def test_hint_resets_the_timer(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(5.0)
    disk.files["a"] = sig(size=20)
    s.hint("a", 100.0, sig(size=10))
    s.hint("a", 103.0, sig(size=20))  # still being written
    assert s.poll(105.0, disk).ready == []
    assert disk.calls == []
    assert s.next_deadline() == 108.0
    assert s.poll(107.9, disk).ready == []
    assert s.poll(108.0, disk).ready == [("a", sig(size=20))]


def test_changed_sig_at_deadline_resets(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(5.0)
    s.hint("a", 100.0, sig(size=10))
    disk.files["a"] = sig(size=30)  # grew without an event (e.g. a network share)
    r = s.poll(105.0, disk)
    assert r.ready == [] and r.vanished == []
    assert "a" in s
    assert s.next_deadline() == 110.0
    assert s.poll(109.0, disk).ready == []
    assert s.poll(110.0, disk).ready == [("a", sig(size=30))]


@pytest.mark.parametrize(
    "changed",
    [sig(size=11), sig(mtime_ns=2_000), sig(ino=2)],
    ids=["size", "mtime", "inode"],
)
def test_each_sig_part_counts_as_a_change(disk: FakeDisk, changed: FileSig) -> None:
    s: Settler[str] = Settler(1.0)
    s.hint("a", 0.0, sig())
    disk.files["a"] = changed
    assert s.poll(1.0, disk).ready == []
    assert s.poll(2.0, disk).ready == [("a", changed)]


def test_device_change_alone_is_not_a_change(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(1.0)
    s.hint("a", 0.0, sig(dev=1))
    disk.files["a"] = sig(dev=2)  # share remounted
    assert s.poll(1.0, disk).ready == [("a", sig(dev=2))]


def test_duplicate_hints_give_one_ready(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(2.0)
    disk.files["a"] = sig()
    for t in (0.0, 0.1, 0.1, 0.5, 1.0):
        s.hint("a", t, sig())
    assert len(s) == 1
    r = s.poll(3.0, disk)
    assert r.ready == [("a", sig())]
    assert disk.calls == ["a"]  # stale heap entries are never stat'ed
    assert s.poll(10.0, disk).ready == []


def test_vanished(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(2.0)
    s.hint("gone", 0.0, sig())
    disk.files["kept"] = sig(ino=7)
    s.hint("kept", 0.0, sig(ino=7))
    r = s.poll(2.0, disk)
    assert r.vanished == ["gone"]
    assert r.ready == [("kept", sig(ino=7))]
    assert len(s) == 0


def test_ready_now_unchanged_is_ready_at_first_poll(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(30.0)
    disk.files["old"] = sig()
    s.hint("old", 100.0, sig(), ready_now=True)
    assert s.next_deadline() == 100.0
    assert s.poll(100.0, disk).ready == [("old", sig())]
    assert disk.calls == ["old"]  # the sig was re-checked


def test_ready_now_changed_is_not_ready(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(30.0)
    disk.files["old"] = sig(size=99)
    s.hint("old", 100.0, sig(), ready_now=True)
    assert s.poll(100.0, disk).ready == []
    assert s.next_deadline() == 130.0
    assert s.poll(130.0, disk).ready == [("old", sig(size=99))]


def test_ready_now_does_not_shorten_a_waiting_key(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(30.0)
    disk.files["a"] = sig()
    s.hint("a", 100.0, sig())  # an event: deadline 130
    s.hint("a", 101.0, sig(), ready_now=True)  # a rescan sees an old mtime
    assert s.next_deadline() == 130.0
    assert s.poll(101.0, disk).ready == []
    # ... but a ready_now hint with another sig is a change: the timer restarts
    s.hint("a", 110.0, sig(size=5), ready_now=True)
    assert s.next_deadline() == 140.0


def test_plain_hint_after_ready_now_resets(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(30.0)
    disk.files["a"] = sig()
    s.hint("a", 100.0, sig(), ready_now=True)
    s.hint("a", 100.5, sig())  # an event arrives before the poll
    assert s.poll(100.5, disk).ready == []
    assert s.next_deadline() == 130.5


def test_settle_zero(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(0)
    disk.files["a"] = sig()
    s.hint("a", 5.0, sig())
    assert s.poll(5.0, disk).ready == [("a", sig())]

    # changed at the check: not ready at once, and not re-stat'ed in a loop within the
    # same poll; re-checked at the next poll.
    s.hint("b", 5.0, sig(size=1))
    disk.files["b"] = sig(size=2)
    disk.calls.clear()
    assert s.poll(5.0, disk).ready == []
    assert disk.calls == ["b"]
    assert s.next_deadline() == 5.0
    assert s.poll(5.0, disk).ready == [("b", sig(size=2))]


def test_not_due_keys_are_not_statted(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(10.0)
    for i in range(100):
        disk.files[f"f{i}"] = sig(ino=i)
        s.hint(f"f{i}", float(i), sig(ino=i))
    r = s.poll(14.5, disk)
    assert [k for k, _ in r.ready] == [f"f{i}" for i in range(5)]  # deadlines 10..14
    assert sorted(disk.calls) == sorted(f"f{i}" for i in range(5))
    assert len(s) == 95


def test_next_deadline(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(10.0)
    assert s.next_deadline() is None
    s.hint("a", 5.0, sig())
    s.hint("b", 3.0, sig())
    assert s.next_deadline() == 13.0
    s.hint("b", 7.0, sig())  # b's old entry at 13 is stale now
    assert s.next_deadline() == 15.0
    s.discard("a")
    assert s.next_deadline() == 17.0
    s.discard("b")
    s.discard("never-hinted")
    assert s.next_deadline() is None
    assert len(s) == 0


def test_discard_then_poll(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(1.0)
    disk.files["a"] = sig()
    s.hint("a", 0.0, sig())
    s.discard("a")
    assert "a" not in s
    r = s.poll(5.0, disk)
    assert r.ready == [] and r.vanished == []
    assert disk.calls == []


def test_settle_seconds_change_applies_to_future_hints(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(10.0)
    s.hint("a", 0.0, sig())
    s.settle_seconds = 2.0
    s.hint("b", 0.0, sig())
    assert s.next_deadline() == 2.0
    disk.files["b"] = sig()
    disk.files["a"] = sig()
    assert [k for k, _ in s.poll(2.0, disk).ready] == ["b"]
    assert s.next_deadline() == 10.0  # a keeps the deadline it was given


def test_negative_settle_seconds_refused() -> None:
    with pytest.raises(ValueError):
        Settler(-1.0)
    s: Settler[str] = Settler(1.0)
    with pytest.raises(ValueError):
        s.settle_seconds = float("nan")


def test_stat_raising_leaves_the_settler_unchanged(disk: FakeDisk) -> None:
    s: Settler[str] = Settler(1.0)
    disk.files["a"] = sig()
    s.hint("a", 0.0, sig())
    s.hint("b", 0.5, sig())

    def bad_stat(key: str) -> FileSig | None:
        if key == "b":
            raise OSError("EIO")
        return disk(key)

    with pytest.raises(OSError):
        s.poll(2.0, bad_stat)
    assert len(s) == 2
    disk.files["b"] = sig()
    assert sorted(k for k, _ in s.poll(2.0, disk).ready) == ["a", "b"]


def test_tuple_keys_are_never_compared(disk: FakeDisk) -> None:
    # Keys of mixed, mutually unorderable types with equal deadlines: the seq tie-breaker
    # keeps heapq from comparing them.
    s: Settler[object] = Settler(1.0)
    keys: list[object] = [("/w", "a"), 3, frozenset({1}), ("/w", b"x")]
    for k in keys:
        s.hint(k, 0.0, sig())
    r = s.poll(1.0, lambda k: sig())
    assert [k for k, _ in r.ready] == keys


def test_100k_keys_hint_then_poll_fast() -> None:
    n = 100_000
    s: Settler[int] = Settler(5.0)
    sigs = [FileSig(i, i, i, 1) for i in range(n)]
    t0 = time.perf_counter()
    for i in range(n):
        s.hint(i, 0.0 + i * 1e-6, sigs[i])
    t_hint = time.perf_counter() - t0
    assert s.poll(4.0, sigs.__getitem__).ready == []  # nothing due: O(1)
    t1 = time.perf_counter()
    r = s.poll(10.0, sigs.__getitem__)
    t_poll = time.perf_counter() - t1
    assert len(r.ready) == n
    assert len(s) == 0
    print(f"100k: hint {t_hint:.3f}s, poll {t_poll:.3f}s")
    # A guard against quadratic behaviour (minutes), not a benchmark: bench/ measures it.
    assert t_hint + t_poll < 20.0


def test_heap_is_compacted_when_one_key_is_hinted_many_times() -> None:
    s: Settler[str] = Settler(5.0)
    for i in range(100_000):
        s.hint("busy", i * 0.001, sig(size=i))
    assert len(s) == 1
    assert len(s._heap) <= 2 * len(s) + 64 + 1  # white-box: the heap stays small
    s.hint("other", 0.0, sig())
    r = s.poll(1_000.0, lambda k: sig(size=99_999) if k == "busy" else sig())
    assert sorted(k for k, _ in r.ready) == ["busy", "other"]
    assert s._heap == [] or all(s._pending.get(k) is None for _, _, k in s._heap)


def test_heap_is_compacted_after_many_discards() -> None:
    s: Settler[int] = Settler(5.0)
    for i in range(10_000):
        s.hint(i, 0.0, sig())
    for i in range(9_990):
        s.discard(i)
    assert len(s) == 10
    assert len(s._heap) <= 2 * len(s) + 64 + 1
