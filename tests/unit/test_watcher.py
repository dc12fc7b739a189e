"""The watchdog adapter: events become hints, overflow becomes a rescan, limits become polling."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import watchdog.observers.inotify
import watchdog.observers.inotify_c

from hottask_sync.config import FolderConfig
from hottask_sync.watcher import Watcher
from tests.conftest import wait_for


class Recorder:
    def __init__(self) -> None:
        self.hints: list[tuple[str, str, bool]] = []
        self.overflows = 0
        self.lock = threading.Lock()

    def sink(self, folder: str, path: str, is_dir: bool) -> None:
        with self.lock:
            self.hints.append((folder, path, is_dir))

    def overflow(self) -> None:
        self.overflows += 1


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def watcher(recorder: Recorder) -> Iterator[Watcher]:
    w = Watcher(recorder.sink, recorder.overflow)
    w.start()
    yield w
    w.stop()


def test_a_file_written_and_renamed_into_place_gives_hints(
    tmp_path: Path, watcher: Watcher, recorder: Recorder
) -> None:
    folder = FolderConfig(path=tmp_path)
    assert watcher.add(folder) == "inotify"
    (tmp_path / "a.part").write_bytes(b"x")
    (tmp_path / "a.part").rename(tmp_path / "a.pdf")
    (tmp_path / "sub").mkdir()
    wait_for(
        lambda: {h[1] for h in recorder.hints} >= {str(tmp_path / "a.pdf"), str(tmp_path / "sub")},
        what="hints for the renamed file and the new folder",
    )
    assert (str(tmp_path), str(tmp_path / "sub"), True) in recorder.hints
    assert watcher.healthy()


def test_our_own_reads_give_no_hints(tmp_path: Path, watcher: Watcher, recorder: Recorder) -> None:
    (tmp_path / "done.txt").write_bytes(b"already here")
    watcher.add(FolderConfig(path=tmp_path))
    (tmp_path / "done.txt").read_bytes()  # opened and closed without writing
    (tmp_path / "marker").write_bytes(b"")  # an event that must arrive after any from the read
    wait_for(lambda: any(h[1].endswith("marker") for h in recorder.hints), what="marker hint")
    assert not any(h[1].endswith("done.txt") for h in recorder.hints)


# --- the kernel's queue overflow ----------------------------------------------------------


@contextlib.contextmanager
def reader_held_back(watcher: Watcher) -> Iterator[None]:
    """Keeps watchdog's inotify reader thread from reading, so the kernel's queue fills up.

    The reader (``InotifyFD.run``) takes the InotifyFD's lock around each read(2) of the
    descriptor and while handling what it read: holding the lock stops it after at most
    one buffer.
    """
    with watcher._inotify._inotify_fd._lock:
        yield


def flood(folder: Path, events: int) -> None:
    """Makes ``events`` inotify events in ``folder``: one-byte writes to two files in turn,
    an IN_MODIFY each (the kernel only coalesces an event identical to the one before)."""
    fds = [os.open(folder / name, os.O_WRONLY | os.O_CREAT, 0o644) for name in ("ping", "pong")]
    try:
        for i in range(events):
            os.write(fds[i % 2], b"x")
    finally:
        for fd in fds:
            os.close(fd)


class Reworded(logging.LoggerAdapter[logging.Logger]):
    """A logger that says something else, without the word "overflow"."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        super().log(level, "the kernel dropped some events", **kwargs)


@pytest.mark.parametrize("watchdog_logs", ["errors only", "other words"])
def test_a_real_queue_overflow_triggers_one_rescan_whatever_watchdog_logs(
    tmp_path: Path,
    watcher: Watcher,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    watchdog_logs: str,
) -> None:
    """A kernel IN_Q_OVERFLOW, read by watchdog's own reader: detected where watchdog
    handles the event, however watchdog logs it (here: not at all, or in other words)."""
    if watchdog_logs == "errors only":
        caplog.set_level(logging.ERROR, logger="watchdog")
    else:
        for module in (watchdog.observers.inotify_c, watchdog.observers.inotify):
            monkeypatch.setattr(module, "logger", Reworded(module.logger, {}))
    queue_size = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if queue_size > 1 << 18:
        pytest.skip(f"fs.inotify.max_queued_events is {queue_size}: too long to fill")
    busy, quiet = tmp_path / "busy", tmp_path / "quiet"
    busy.mkdir()
    quiet.mkdir()
    watcher.add(FolderConfig(path=busy))
    watcher.add(FolderConfig(path=quiet))  # two folders, one overflow: one rescan
    with reader_held_back(watcher):
        # The queue, plus what the reader may have read just before it was held back.
        flood(busy, queue_size + 2 * 4096)
        assert recorder.overflows == 0
    wait_for(lambda: recorder.overflows, timeout=30, what="the overflow reported")
    # The reader is still alive: an event after the overflow still becomes a hint.
    (quiet / "after.txt").write_bytes(b"after the overflow")
    wait_for(
        lambda: (str(quiet), str(quiet / "after.txt"), False) in recorder.hints,
        timeout=30,
        what="a hint after the overflow",
    )
    assert recorder.overflows == 1
    assert watcher.healthy()


def test_a_log_line_about_an_overflow_is_not_an_overflow(
    tmp_path: Path, watcher: Watcher, recorder: Recorder
) -> None:
    watcher.add(FolderConfig(path=tmp_path))
    for name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
        logging.getLogger(name).warning("Inotify queue overflowed; filesystem events were lost")
    (tmp_path / "marker").write_bytes(b"")  # through the reader after the log lines
    wait_for(lambda: any(h[1].endswith("marker") for h in recorder.hints), what="marker hint")
    assert recorder.overflows == 0


def test_watch_limit_falls_back_to_polling(
    tmp_path: Path,
    watcher: Watcher,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher._inotify, "schedule", full)
    with structlog.testing.capture_logs() as logs:
        assert watcher.add(FolderConfig(path=tmp_path)) == "polling"
    [error] = [e for e in logs if e["event"] == "watch.limit_reached"]
    assert error["log_level"] == "error"
    assert "fs.inotify.max_user_watches" in error["hint"]
    (tmp_path / "polled.txt").write_bytes(b"seen by polling")
    wait_for(
        lambda: any(h[1].endswith("polled.txt") for h in recorder.hints),
        timeout=15,
        what="a hint from the polling observer",
    )


def test_other_schedule_errors_are_raised(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(watcher._inotify, "schedule", denied)
    with pytest.raises(OSError):
        watcher.add(FolderConfig(path=tmp_path))


def test_poll_true_uses_polling(tmp_path: Path, watcher: Watcher) -> None:
    assert watcher.add(FolderConfig(path=tmp_path, poll=True)) == "polling"
    assert list(watcher.watching()) == [str(tmp_path)]
    watcher.remove(str(tmp_path))
    assert list(watcher.watching()) == []


def _limit_below(monkeypatch: pytest.MonkeyPatch, name: bytes) -> None:
    """inotify's watch limit is reached for any folder named ``name`` (an injected ENOSPC,
    as the kernel answers when fs.inotify.max_user_watches is used up)."""
    real = watchdog.observers.inotify_c.InotifyFD._add_callback

    def add(self: Any, path: bytes, *args: Any) -> Any:
        if os.path.basename(path) == name:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return real(self, path, *args)

    monkeypatch.setattr(watchdog.observers.inotify_c.InotifyFD, "_add_callback", add)


def test_a_subfolder_inotify_could_not_watch_is_reported(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As it starts watching, watchdog refuses a folder with a subfolder it cannot watch: the
    folder is polled (its files are all seen), and the error names the subfolder."""
    (tmp_path / "ok").mkdir()
    (tmp_path / "deep" / "er").mkdir(parents=True)
    _limit_below(monkeypatch, b"deep")
    with structlog.testing.capture_logs() as logs:
        assert watcher.add(FolderConfig(path=tmp_path)) == "polling"
    [error] = [e for e in logs if e["event"] == "watch.limit_reached"]
    assert error["path"] == str(tmp_path / "deep")
    assert "fs.inotify.max_user_watches" in error["hint"]
    assert watcher.blind() == {}  # polled whole: nothing below it is blind


def test_a_subfolder_made_later_that_cannot_be_watched_is_reported(
    tmp_path: Path, watcher: Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert watcher.add(FolderConfig(path=tmp_path)) == "inotify"
    _limit_below(monkeypatch, b"deep")
    (tmp_path / "deep").mkdir()  # watchdog adds its watch from the event
    wait_for(lambda: watcher.blind(), what="the unwatched subfolder reported")


def test_the_folder_keeper_polls_a_folder_with_an_unwatched_subfolder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hottask_sync import folders as fs

    monkeypatch.setattr(fs, "CHECK_SECONDS", 0.05)
    inbox = tmp_path / "in"
    (inbox / "deep").mkdir(parents=True)
    _limit_below(monkeypatch, b"deep")
    recorder = Recorder()
    watcher = Watcher(recorder.sink, recorder.overflow)
    watcher.start()
    scans: list[tuple[str, ...]] = []
    keeper = fs.FolderKeeper(
        fs.FolderWatches(watcher), lambda f: scans.append(tuple(x.key for x in f))
    )
    try:
        with structlog.testing.capture_logs() as logs:
            keeper.start([FolderConfig(path=inbox)])
            wait_for(lambda: scans, what="the startup scan")
        [error] = [e for e in logs if e["event"] == "watch.limit_reached"]
        assert error["path"] == str(inbox / "deep")
        assert "fs.inotify.max_user_watches" in error["hint"]
        assert [e["mode"] for e in logs if e["event"] == "folder.watching"] == ["polling"]
        (inbox / "deep" / "late.txt").write_bytes(b"seen by polling")
        wait_for(
            lambda: any(h[1].endswith("late.txt") for h in recorder.hints),
            timeout=15,
            what="a hint from the polled subfolder",
        )
    finally:
        keeper.stop(5)
        watcher.stop()
