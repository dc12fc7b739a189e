"""Unit tests for hottask_sync.scheduler: every decision, driven with a fake clock.

No threads, no sleeps, no files: ``stat`` and ``lookup`` are dicts, results are made by
hand, time moves only when a test moves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from hottask_sync.client import Ticket
from hottask_sync.config import FolderConfig
from hottask_sync.files import FileSig
from hottask_sync.jobs import Job, Key, Outcome, Result
from hottask_sync.ledger import Entry, State
from hottask_sync.pool import REPORTERS_PER_SLOT
from hottask_sync.scheduler import AuthChange, Kind, Scheduler, Step
from tests.fakes import FakeClock

A = FolderConfig(Path("/srv/a"))
B = FolderConfig(Path("/srv/b"))
SETTLE = 2.0
WALL0 = 1_700_000_000.0


def sig(size: int = 5, mtime: float = WALL0, ino: int = 1) -> FileSig:
    return FileSig(size, int(mtime * 1e9), ino, 1)


def row(state: State, version: FileSig | None, *, disposed: bool = False) -> Entry:
    return Entry("/srv/a", "x", state, version, None, "7", 0, 0, None, disposed, 0.0, 0.0, None)


@dataclass
class World:
    """The scheduler with everything around it faked."""

    folders: list[FolderConfig] = field(default_factory=lambda: [A, B])
    concurrency: int = 2
    clock: FakeClock = field(default_factory=FakeClock)
    wall: FakeClock = field(default_factory=lambda: FakeClock(WALL0))
    files: dict[Key, FileSig] = field(default_factory=dict)
    rows: dict[Key, Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s = Scheduler(
            self.folders,
            settle_seconds=SETTLE,
            concurrency=self.concurrency,
            clock=self.clock,
            wall=self.wall,
            lookup=self.rows.get,
            auth_probe_seconds=30.0,
        )

    def write(self, folder: FolderConfig, rel: str, version: FileSig | None = None) -> Key:
        key = (folder.key, rel)
        self.files[key] = version or sig()
        self.s.seen(key, Kind.FILE, self.files[key], from_scan=False)
        return key

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall.advance(seconds)

    def turn(self) -> Step:
        """One turn of the runtime's loop, its disk looks answered at once from ``files``:
        steps until nothing is left to check or look at; returns what came out."""
        pending: list[tuple[str, str, FileSig]] = []
        submit: list[Job] = []
        while True:
            step = self.s.step()
            pending += step.pending
            submit += step.submit
            for key, token in step.check:
                self.s.checked(key, token, self.files.get(key))
            for key in step.look:
                if key in self.files:
                    self.s.seen(key, Kind.FILE, self.files[key], from_scan=False)
            if not step.check and not step.look:
                return Step(tuple(pending), tuple(submit))

    def out(self) -> list[Job]:
        return list(self.turn().submit)

    def settle_all(self) -> list[Job]:
        self.advance(SETTLE)
        return self.out()


@pytest.fixture
def w() -> World:
    return World()


def done(**kw: object) -> Result:
    return Result(Outcome.DONE, key_accepted=True, **kw)  # type: ignore[arg-type]


# --- settle -> queue -> result ----------------------------------------------------------------


def test_a_file_goes_out_once_it_settled_with_its_settled_version(w: World) -> None:
    key = w.write(A, "doc.txt")
    assert w.out() == []
    w.advance(SETTLE - 0.1)
    assert w.out() == []
    w.advance(0.1)
    step = w.turn()
    assert step.pending == (("/srv/a", "doc.txt", sig()),)
    assert [(j.key, j.settled, j.probe) for j in step.submit] == [(key, sig(), False)]
    assert w.out() == []  # in flight: not handed out twice
    assert w.s.in_flight == 1


def test_a_write_while_settling_pushes_the_deadline_out(w: World) -> None:
    w.write(A, "doc.txt", sig(1))
    w.advance(1.5)
    w.write(A, "doc.txt", sig(2))
    w.advance(1.5)
    assert w.out() == []
    w.advance(0.5)
    assert [j.settled for j in w.out()] == [sig(2)]


def test_a_file_deleted_before_it_settled_never_goes_out(w: World) -> None:
    key = w.write(A, "doc.txt")
    del w.files[key]
    assert w.settle_all() == []
    assert w.s.queued == 0


def test_reported_same_version_is_skipped_and_a_disposal_owed_goes_out_without_a_pending_row(
    w: World,
) -> None:
    key = w.write(A, "done.txt")
    w.rows[key] = row(State.REPORTED, sig())
    assert w.settle_all() == []
    moving = FolderConfig(Path("/srv/a"), after_upload="delete")
    w.s.reload([moving, B], settle_seconds=SETTLE, concurrency=2)
    w.write(A, "done.txt")
    w.advance(SETTLE)
    step = w.turn()
    assert step.pending == ()  # DISPOSE: the row is reported, nothing to record
    assert [j.key for j in step.submit] == [key]
    # The row it was planned from goes along: the worker does not read it again.
    assert [(j.row_read, j.row) for j in step.submit] == [(True, w.rows[key])]


def test_a_job_carries_the_row_it_was_planned_from_and_its_retry_does_not(w: World) -> None:
    key = w.write(A, "new.txt")
    (job,) = w.settle_all()
    assert (job.row_read, job.row) == (True, None)  # read: there was none
    w.s.finished(job, Result(Outcome.RETRY, delay=1.0, failures=1))
    w.advance(1.0)
    (again,) = w.out()
    assert again.key == key and not again.row_read  # the row changed meanwhile: read afresh


def test_concurrency_bounds_what_is_handed_out(w: World) -> None:
    for i in range(6):
        w.write(A, f"f{i}")
    jobs = w.settle_all()
    assert len(jobs) == 2 * w.concurrency
    w.s.finished(jobs[0], done())
    assert [j.relpath for j in w.out()] == ["f4"]


def test_the_report_stage_holds_uploads_back_when_it_falls_behind(w: World) -> None:
    """Files handed to the report stage hold their descriptors until reported: once the
    slots and the report threads are all taken, nothing more goes out (seen: 6,640 files
    waiting for a report thread, 20,000 descriptors, EMFILE on every new connection)."""
    for i in range(20):
        w.write(A, f"f{i:02d}")
    out = w.settle_all()
    handed = list(out)
    while out:  # every upload finishes at once, every report lags
        for job in out:
            w.s.finished(job, Result(Outcome.REPORTING, failures=0))
        out = w.out()
        handed += out
    most = w.concurrency * (2 + REPORTERS_PER_SLOT)
    assert len(handed) == most and w.s.in_flight == most
    w.s.finished(handed[0], done())  # a report comes back: one more may go
    assert len(w.out()) == 1


def test_a_change_seen_while_in_flight_is_settled_again_after_the_result(w: World) -> None:
    key = w.write(A, "doc.txt", sig(1))
    (job,) = w.settle_all()
    w.write(A, "doc.txt", sig(2))
    w.advance(SETTLE)
    assert w.out() == []  # in flight: only marked dirty
    w.s.finished(job, done())
    assert w.out() == []  # settles again from now
    assert [(j.key, j.settled) for j in w.settle_all()] == [(key, sig(2))]


@pytest.mark.parametrize("flag", ["changed", "look_again"])
def test_changed_or_look_again_settles_the_file_afresh(w: World, flag: str) -> None:
    w.write(A, "doc.txt")
    (job,) = w.settle_all()
    result = Result(Outcome.CHANGED) if flag == "changed" else done(look_again=True)
    w.s.finished(job, result)
    assert w.out() == []
    assert len(w.settle_all()) == 1


def test_retry_waits_its_delay_and_carries_the_ticket_and_failures(w: World) -> None:
    w.write(A, "doc.txt")
    (job,) = w.settle_all()
    ticket = Ticket("55", "https://s3.test/x", 0.0)
    w.s.finished(job, Result(Outcome.RETRY, delay=4.0, failures=3, ticket=ticket))
    assert w.s.wake_at() == w.clock() + 4.0
    w.advance(3.9)
    assert w.out() == []
    w.advance(0.1)
    (again,) = w.out()
    assert (again.failures, again.ticket, again.settled) == (3, ticket, sig())


@pytest.mark.parametrize(
    "outcome", [Outcome.DONE, Outcome.FAILED, Outcome.SKIPPED, Outcome.VANISHED]
)
def test_a_final_outcome_frees_the_file(w: World, outcome: Outcome) -> None:
    w.write(A, "doc.txt")
    (job,) = w.settle_all()
    w.s.finished(job, Result(outcome))
    assert w.s.queued == 0
    assert w.s.wake_at() is None


# --- the auth pause and its probe -------------------------------------------------------------


def refused() -> Result:
    return Result(Outcome.AUTH, error="AuthError: check the API key")


def test_a_refused_key_pauses_everything_until_one_probe_after_the_delay(w: World) -> None:
    for name in ("a", "b", "c"):
        w.write(A, name)
    a, b, c = w.settle_all()
    assert w.s.finished(a, refused()) is AuthChange.PAUSED
    assert w.s.paused
    assert w.s.finished(b, Result(Outcome.PAUSED)) is None  # held back, no second pause
    assert w.s.finished(c, refused()) is None  # started before the pause: not a probe
    w.advance(29.9)
    assert w.out() == []
    assert w.s.wake_at() == pytest.approx(w.clock() + 0.1)
    w.advance(0.1)
    (probe,) = w.out()
    assert probe.probe and probe.relpath == "a"
    assert w.out() == []  # one probe at a time
    assert w.s.finished(probe, refused()) is None  # still paused, the delay doubles
    w.advance(59.9)
    assert w.out() == []
    w.advance(0.1)
    (probe,) = w.out()
    assert w.s.finished(probe, done()) is AuthChange.RESUMED
    assert not w.s.paused
    rest = sorted({"a", "b", "c"} - {probe.relpath})
    assert probe.relpath == "b"  # the parked jobs take turns as the probe
    assert sorted(j.relpath for j in w.out()) == rest
    assert not probe.after(done()).probe


def test_a_probe_that_says_nothing_about_the_key_lets_another_follow(w: World) -> None:
    w.write(A, "a")
    (a,) = w.settle_all()
    w.s.finished(a, refused())
    w.advance(30.0)
    (probe,) = w.out()
    assert w.s.finished(probe, Result(Outcome.RETRY, delay=1.0)) is None  # a 5xx
    w.advance(1.0)
    assert w.out() == []  # still paused; the next probe after the current delay
    w.advance(29.0)
    (probe,) = w.out()
    assert probe.probe
    w.s.finished(probe, Result(Outcome.CHANGED))  # no call at all: inconclusive too
    assert w.out() == []  # the file is looked at again and settles anew meanwhile
    w.advance(30.0)
    assert len(w.out()) == 1


def test_a_held_back_job_returning_when_no_pause_holds_goes_out_again(w: World) -> None:
    """A worker may read the pause just before it is lifted: such a job is not lost."""
    w.write(A, "a")
    (a,) = w.settle_all()
    assert w.s.finished(a, Result(Outcome.PAUSED)) is None
    assert not w.s.paused
    assert [j.relpath for j in w.out()] == ["a"]


def test_reload_probes_at_once_and_never_sends_a_removed_folders_job_as_the_probe(
    w: World,
) -> None:
    """The probe path refreshes folders like the normal path: a parked job of a folder
    removed by reload must not go out, as the probe or otherwise."""
    w.write(B, "gone.txt")
    w.write(A, "kept.txt")
    jobs = w.settle_all()
    by_folder = {j.folder.key: j for j in jobs}
    w.s.finished(by_folder["/srv/b"], refused())
    w.s.finished(by_folder["/srv/a"], Result(Outcome.PAUSED))
    w.s.reload([A], settle_seconds=SETTLE, concurrency=2)
    (probe,) = w.out()  # no waiting: a reload (new key?) is probed now
    assert probe.probe and probe.folder.key == "/srv/a"
    w.s.finished(probe, done())
    assert w.out() == []
    assert w.s.queued == 0


def test_reload_with_only_a_removed_folders_job_parked_sends_nothing(w: World) -> None:
    w.write(B, "gone.txt")
    (job,) = w.settle_all()
    w.s.finished(job, refused())
    w.s.reload([A], settle_seconds=SETTLE, concurrency=2)
    assert w.out() == []
    w.advance(600)
    assert w.out() == []


# --- reload -----------------------------------------------------------------------------------


def test_reload_gives_waiting_jobs_their_folders_new_settings(w: World) -> None:
    w.write(A, "a")
    (job,) = w.settle_all()
    w.s.finished(job, Result(Outcome.RETRY, delay=5.0))
    deleting = FolderConfig(Path("/srv/a"), after_upload="delete")
    w.s.reload([deleting, B], settle_seconds=SETTLE, concurrency=2)
    w.advance(5.0)
    (again,) = w.out()
    assert again.folder.after_upload == "delete"


def test_reload_changes_settle_time_and_concurrency_and_adds_folders(w: World) -> None:
    c = FolderConfig(Path("/srv/c"))
    w.s.reload([A, B, c], settle_seconds=0.5, concurrency=1)
    for i in range(4):
        w.write(c, f"f{i}")
    w.advance(0.5)
    assert len(w.out()) == 2  # twice the new concurrency


def test_a_file_settling_in_a_removed_folder_never_goes_out(w: World) -> None:
    w.write(B, "x")
    w.s.reload([A], settle_seconds=SETTLE, concurrency=2)
    assert w.settle_all() == []


# --- scans and resumes ------------------------------------------------------------------------


def test_a_scan_skips_done_and_failed_versions_and_hurries_quiet_files(w: World) -> None:
    old = sig(mtime=WALL0 - 60)
    known = {
        "reported": (State.REPORTED, old, False),
        "failed": (State.FAILED, old, False),
        "changed": (State.FAILED, sig(9, mtime=WALL0 - 120), False),
    }
    entries = [
        ("reported", Kind.FILE, old),
        ("failed", Kind.FILE, old),
        ("changed", Kind.FILE, old),
        ("new", Kind.FILE, old),
        ("fresh", Kind.FILE, sig()),
    ]
    for rel, _, version in entries:
        w.files[("/srv/a", rel)] = version
    w.s.scanned("/srv/a", entries, known)
    # Quiet for longer than the settle time already: ready at the next step.
    assert sorted(j.relpath for j in w.out()) == ["changed", "new"]
    assert [j.relpath for j in w.settle_all()] == ["fresh"]


def test_links_and_other_kinds_are_skipped_and_logged_once(w: World) -> None:
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            w.s.seen(("/srv/a", "link"), Kind.LINK, None, from_scan=True)
        w.s.seen(("/srv/a", "fifo"), Kind.OTHER, None, from_scan=False)
    skipped = [(e["path"], e["reason"]) for e in logs if e["event"] == "file.skipped"]
    assert skipped == [
        ("link", "a symbolic link (never uploaded)"),
        ("fifo", "not a regular file (never uploaded)"),
    ]
    assert w.settle_all() == []


def test_resume_queues_owed_reports_including_those_of_folders_no_longer_configured(
    w: World,
) -> None:
    owed = Entry("/srv/a", "x", State.PUT, sig(), "ab", "7", 0, 0, None, False, 0.0, 0.0, None)
    orphan = Entry("/gone", "y", State.PUT, sig(), "cd", "8", 0, 0, None, False, 0.0, 0.0, None)
    with structlog.testing.capture_logs() as logs:
        w.s.resume([owed, orphan])
        w.s.resume([owed, orphan])  # a reload resumes again: nothing is queued twice
    jobs = w.out()
    assert [(j.key, j.settled, j.orphan) for j in jobs] == [
        (("/srv/a", "x"), None, False),
        (("/gone", "y"), None, True),  # the report needs only the FileStoreId
    ]
    assert jobs[1].folder.after_upload == "keep"  # its file is never moved or deleted
    assert [e["folder"] for e in logs if e["event"] == "upload.orphaned"] == ["/gone"]


def test_a_report_owed_goes_out_even_after_its_folder_is_removed(w: World) -> None:
    owed = Entry("/srv/b", "y", State.PUT, sig(), "cd", "8", 0, 0, None, False, 0.0, 0.0, None)
    w.rows[("/srv/b", "y")] = owed
    w.write(B, "z")
    w.s.resume([owed])
    w.s.reload([A], settle_seconds=SETTLE, concurrency=2)
    (job,) = w.settle_all()  # z is dropped with its folder; y's report is still owed
    assert (job.key, job.orphan) == (("/srv/b", "y"), True)


# --- bounded memory ---------------------------------------------------------------------------


def test_events_beyond_the_cap_are_left_to_a_scan_of_their_folder() -> None:
    w = World()
    w.s.max_tracked = 3
    for i in range(3):
        w.write(A, f"f{i}")
    w.write(A, "over")  # full: not tracked, its folder is scanned instead
    w.write(B, "other")
    w.write(A, "f0")  # a file already tracked is still followed
    step = w.s.step()
    assert step.rescan == ("/srv/a", "/srv/b")
    assert w.s.queued == 3
    assert w.s.step().rescan == ()  # asked for once
    # A scan is not capped by events' rule (it waits for room by itself).
    w.s.scanned("/srv/a", [("over", Kind.FILE, w.files[("/srv/a", "over")])], {})
    assert w.s.queued == 4


def test_the_memory_of_skipped_links_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from hottask_sync import scheduler

    monkeypatch.setattr(scheduler, "SKIPPED_REMEMBERED", 5)
    w = World()
    with structlog.testing.capture_logs() as logs:
        for i in range(5):
            w.s.seen(("/srv/a", f"link{i}"), Kind.LINK, None, from_scan=True)
        w.s.seen(("/srv/a", "link0"), Kind.LINK, None, from_scan=True)  # remembered
        w.s.seen(("/srv/a", "link5"), Kind.LINK, None, from_scan=True)  # full: forgets
        w.s.seen(("/srv/a", "link0"), Kind.LINK, None, from_scan=True)
    named = [e["path"] for e in logs if e["event"] == "file.skipped"]
    assert named == ["link0", "link1", "link2", "link3", "link4", "link5", "link0"]
