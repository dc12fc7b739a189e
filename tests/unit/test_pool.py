"""Unit tests for hottask_sync.pool: results come back, crashes are retried, a worker that
stops making progress is reported as stuck (healthy means progressing, not alive), and the
main loop is woken when it has something to do."""

from __future__ import annotations

import threading
from pathlib import Path

from hottask_sync.config import FolderConfig
from hottask_sync.jobs import Job, Outcome, Result
from hottask_sync.pool import CRASH_RETRY_SECONDS, WorkerPool
from tests.conftest import wait_for
from tests.fakes import FakeClock

FOLDER = FolderConfig(Path("/srv/in"))


def test_a_busy_worker_that_stops_beating_is_stuck_and_one_that_beats_is_not() -> None:
    clock = FakeClock()
    release = threading.Event()
    beating = threading.Event()
    pool: WorkerPool

    def run(job: Job) -> Result:
        pool.beat("put")
        beating.set()
        release.wait(10)
        return Result(Outcome.DONE)

    pool = WorkerPool(run, lambda: None, clock=clock)
    pool.resize(1)
    pool.submit(Job(FOLDER, "big.bin"))
    assert beating.wait(10)
    clock.advance(59.0)
    assert pool.stuck(60.0) == []  # silent, but not for longer than the bound
    clock.advance(2.0)
    (stuck,) = pool.stuck(60.0)
    assert (stuck.key, stuck.stage, stuck.seconds) == (("/srv/in", "big.bin"), "put", 61.0)
    assert pool.alive()  # alive all the same: that is why liveness checks progress
    release.set()
    wait_for(lambda: pool.results, what="the result")
    clock.advance(600.0)
    assert pool.stuck(60.0) == []  # idle workers are never stuck
    pool.close()


def test_beats_keep_a_long_job_healthy() -> None:
    clock = FakeClock()
    step = threading.Semaphore(0)
    stepped = threading.Semaphore(0)
    pool: WorkerPool

    def run(job: Job) -> Result:
        for _ in range(5):
            step.acquire()
            pool.beat("put")
            stepped.release()
        return Result(Outcome.DONE)

    pool = WorkerPool(run, lambda: None, clock=clock)
    pool.resize(1)
    pool.submit(Job(FOLDER, "big.bin"))
    for _ in range(5):
        clock.advance(50.0)  # 250 s in all, never 60 s without a chunk sent
        step.release()
        assert stepped.acquire(timeout=10)
        assert pool.stuck(60.0) == []
    wait_for(lambda: pool.results, what="the result")
    pool.close()


def test_a_crashing_job_comes_back_as_a_retry_with_its_ticket_and_failures() -> None:
    def run(job: Job) -> Result:
        raise RuntimeError("a bug")

    pool = WorkerPool(run, lambda: None)
    pool.resize(1)
    job = Job(FOLDER, "a.txt", failures=2)
    pool.submit(job)
    wait_for(lambda: pool.results, what="the result")
    back, result = pool.results.popleft()
    assert back is job
    assert isinstance(result, Result)
    assert (result.outcome, result.delay, result.failures) == (
        Outcome.RETRY,
        CRASH_RETRY_SECONDS,
        2,
    )
    assert pool.alive()
    pool.close()


def test_a_hand_off_wakes_the_main_loop_only_when_the_slots_run_short(tmp_path: Path) -> None:
    """Each wake of the main loop costs thread switches: a slot that hands its file to the
    report stage wakes it only when fewer jobs wait than there are slots (more must be
    handed out); every final result wakes it."""
    folder = FolderConfig(tmp_path)
    release = threading.Event()  # the report stage holds every file until then
    wakes: list[int] = []

    def finish(handoff: str) -> Result:
        release.wait(10)
        return Result(Outcome.DONE)

    pool = WorkerPool(lambda job: "handoff", lambda: wakes.append(1), finish=finish)
    for name in ("a", "b", "c"):
        pool.submit(Job(folder, name))  # all waiting before the one slot starts
    pool.resize(1)
    try:
        wait_for(lambda: len(pool.results) == 3, what="three hand-offs")
        assert [r.outcome for _, r in pool.results] == [Outcome.REPORTING] * 3  # type: ignore[union-attr]
        assert len(wakes) == 1  # c's: nothing left waiting for the slot
        release.set()
        wait_for(lambda: len(pool.results) == 6, what="three final results")
        assert len(wakes) == 4
    finally:
        release.set()
        pool.close()
