"""The watchdog adapter: events become hints, overflow becomes a rescan, limits become polling."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

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


def test_queue_overflow_warning_triggers_a_rescan(watcher: Watcher, recorder: Recorder) -> None:
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    assert recorder.overflows == 1
    logging.getLogger("watchdog.observers.inotify_c").warning("something else")
    assert recorder.overflows == 1


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
