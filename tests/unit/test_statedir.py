"""The state directory's lock: asking who holds it never takes it, a daemon waits a few
seconds for a previous instance to let go, and "already running" has its own exit code."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from hottask_sync import statedir
from hottask_sync.errors import LockedError, UserError
from hottask_sync.statedir import daemon_pid, lock_state_dir

#: A PID that no process has: what a lock file left behind by a dead daemon names.
DEAD_PID = 2**22 + 17


class _PausingOs:
    """Stands in for the ``os`` module inside statedir: ``close`` called from ``thread``
    waits on ``release`` (after setting ``inside``). Everything else is the real ``os``."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.inside = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def close(self, fd: int) -> None:
        if threading.current_thread() is self.thread:
            self.inside.set()
            self.release.wait(20)
        os.close(fd)


def test_a_probe_while_a_daemon_starts_does_not_make_it_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 item 11: `status`/`retry` asked who holds the lock by taking it (LOCK_SH);
    a daemon locking at that moment failed (exit 2, naming a dead PID) and systemd never
    restarted it. The probe is held at its end, after it looked at the lock and before it
    closes the file, while the daemon takes the lock: the daemon must get it."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "lock").write_text(f"{DEAD_PID}\n")  # left behind by a daemon that died
    pausing = _PausingOs()
    monkeypatch.setattr(statedir, "os", pausing)
    seen: list[int | None] = []
    probe = threading.Thread(target=lambda: seen.append(daemon_pid(state)))
    pausing.thread = probe
    probe.start()
    try:
        assert pausing.inside.wait(20), "the probe never reached the end of its look"
        fd = lock_state_dir(state)  # the daemon starting now: must not find the lock taken
    finally:
        pausing.release.set()
        probe.join(20)
    try:
        assert seen == [None]  # nobody held it when the probe looked
        assert daemon_pid(state) == os.getpid()
    finally:
        os.close(fd)
    assert daemon_pid(state) is None


def test_a_probe_sees_the_holder_and_leaves_its_lock_alone(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    state = tmp_path / "state"
    for _ in range(3):
        assert daemon_pid(state) == holder.pid
    with pytest.raises(LockedError):
        lock_state_dir(state)  # still held: the probes took nothing away from the holder


def test_the_lock_of_another_process_is_already_running_exit_3(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LockedError) as caught:
        lock_state_dir(tmp_path / "state")
    message = str(caught.value)
    assert f"another hottask-sync (PID {holder.pid}) is already using {tmp_path / 'state'}" in (
        message
    )
    assert "\n" not in message
    assert isinstance(caught.value, UserError)
    assert caught.value.exit_code == 3  # not 2: the unit restarts on 3, not on 2


class _FakeTime:
    """A clock that only moves when slept on; ``on_sleep`` runs at each sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: list[Any] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        for hook in self.on_sleep:
            hook()


def test_a_daemon_waits_for_a_previous_instance_to_let_go(tmp_path: Path) -> None:
    state = tmp_path / "state"
    previous = lock_state_dir(state)
    fake = _FakeTime()
    released: list[int] = []

    def let_go_on_third_sleep() -> None:
        if len(fake.sleeps) == 3:
            os.close(previous)
            released.append(previous)

    fake.on_sleep.append(let_go_on_third_sleep)
    fd = lock_state_dir(state, wait_seconds=5.0, clock=fake.clock, sleep=fake.sleep)
    try:
        assert released == [previous]
        assert fake.sleeps == [statedir.LOCK_POLL_SECONDS] * 3
        assert daemon_pid(state) == os.getpid()
        assert (state / "lock").read_text() == f"{os.getpid()}\n"
    finally:
        os.close(fd)


def test_a_daemon_gives_up_after_the_wait(tmp_path: Path, holder: subprocess.Popen[str]) -> None:
    fake = _FakeTime()
    with pytest.raises(LockedError, match=f"PID {holder.pid}"):
        lock_state_dir(tmp_path / "state", wait_seconds=2.0, clock=fake.clock, sleep=fake.sleep)
    assert fake.now == pytest.approx(1002.0)
    assert len(fake.sleeps) == pytest.approx(2.0 / statedir.LOCK_POLL_SECONDS, abs=1)


def test_no_lock_file_or_a_stale_one_means_no_daemon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert daemon_pid(state) is None
    state.mkdir()
    (state / "lock").write_text(f"{DEAD_PID}\n")
    assert daemon_pid(state) is None  # the PID counts only while the lock is held


def test_an_unusable_state_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError) as caught:
        lock_state_dir(blocker / "state")
    assert not isinstance(caught.value, LockedError)
    assert str(caught.value).startswith(f"sync.state_dir {blocker / 'state'}: ")
