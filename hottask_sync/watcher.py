"""The watchdog adapter: folders scheduled on observers, every event turned into a hint.

An event is only a hint that a path may need work; the settle stage decides. The event
handler runs on watchdog's thread, so it does as little as possible: a deque append and
a wake-up.

A kernel queue overflow (IN_Q_OVERFLOW: events were lost) is caught where watchdog's
inotify reader handles it, not from its log output, and becomes one ``on_overflow`` call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
from watchdog.observers.polling import PollingObserver

from .config import FolderConfig
from .logs import get_logger

log = get_logger("hottask_sync.watcher")

#: Opened and closed-without-writing events are left out: our own reads cause them.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]

#: (folder key, path, is_dir)
HintSink = Callable[[str, str, bool], None]


class _Handler(FileSystemEventHandler):
    def __init__(self, folder_key: str, sink: HintSink) -> None:
        self.folder_key = folder_key
        self.sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        # A file renamed into place or moved in gets no close event: the destination
        # path is what needs work.
        path = event.dest_path if event.event_type == "moved" else event.src_path
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if path:
            self.sink(self.folder_key, path, event.is_directory)


class _OverflowReportingInotifyFD(InotifyFD):
    """watchdog's inotify reader thread, which also reports a kernel queue overflow.

    Every event read from the inotify descriptor goes through ``handle_event``; the kernel's
    IN_Q_OVERFLOW (wd -1) is one of them. watchdog handles it first (it rebuilds recursive
    watches), then ``on_overflow`` is called once, however many folders are watched. Nothing
    here depends on what watchdog logs about it, or at which level.
    """

    def __init__(
        self, on_overflow: Callable[[], None], on_watch_failed: Callable[[bytes], None]
    ) -> None:
        super().__init__()
        self._on_overflow = on_overflow
        self._on_watch_failed = on_watch_failed

    def add_callback(
        self, path: bytes, mask: Any, callback: Any, id_: Any
    ) -> Any:  # watchdog's types
        # watchdog swallows every error adding a watch below a folder's root (ENOSPC, the
        # watch limit, included): the subfolder would then be silently unwatched.
        try:
            return super().add_callback(path, mask, callback, id_)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                self._on_watch_failed(path)
            raise

    def handle_event(self, event: InotifyEvent) -> None:
        try:
            super().handle_event(event)
        finally:
            if event.is_queue_overflow:
                self._report_overflow()

    def _report_overflow(self) -> None:
        # This runs on the reader thread: an exception escaping would end it, and with it
        # every later inotify event.
        try:
            self._on_overflow()
        except Exception:
            log.exception("watch.overflow_callback_failed")


class _InotifyObserver(InotifyObserver):
    """watchdog's InotifyObserver, its emitters reading through ``_OverflowReportingInotifyFD``.

    ``InotifyObserver.__init__`` creates and starts a plain ``InotifyFD`` and hands it to
    every emitter; this does the same with ours (``on_thread_stop`` stops it as usual).
    """

    def __init__(
        self, on_overflow: Callable[[], None], on_watch_failed: Callable[[bytes], None]
    ) -> None:
        self._inotify_fd = _OverflowReportingInotifyFD(on_overflow, on_watch_failed)
        self._inotify_fd.start()
        BaseObserver.__init__(
            self, InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd
        )


class Watcher:
    """Watches folders with inotify (or polling) and sends each event's path to ``sink``."""

    def __init__(self, sink: HintSink, on_overflow: Callable[[], None]) -> None:
        self.sink = sink
        self._inotify: BaseObserver = _InotifyObserver(on_overflow, self._watch_failed)
        # Folders with a subfolder inotify could not watch (its limit reached): key -> path.
        # Own lock: a failure is reported from inside schedule(), under self._lock.
        self._roots: dict[str, str] = {}
        self._blind: dict[str, str] = {}
        self._blind_lock = threading.Lock()
        self._polling: BaseObserver | None = None
        self._watches: dict[str, tuple[BaseObserver, ObservedWatch]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._inotify.start()

    def _poller(self) -> BaseObserver:
        if self._polling is None:
            self._polling = PollingObserver(timeout=2.0)
            self._polling.start()
        return self._polling

    def add(self, folder: FolderConfig, *, poll: bool = False) -> str:
        """Starts watching ``folder``; returns "inotify" or "polling" (always with ``poll``).

        Falls back to polling (with an error naming fs.inotify.max_user_watches) when the
        inotify watch or instance limit is reached. Raises OSError for anything else. A
        subfolder that could not be watched is reported by :meth:`blind` instead.
        """
        with self._blind_lock:
            self._roots[folder.key] = str(folder.path)
            self._blind.pop(folder.key, None)
        handler = _Handler(folder.key, self.sink)
        kwargs: dict[str, Any] = {
            "recursive": folder.recursive,
            "event_filter": EVENT_FILTER,
            "follow_symlink": False,
        }
        with self._lock:
            self._remove_locked(folder.key)
            if not (folder.poll or poll):
                try:
                    watch = self._inotify.schedule(handler, str(folder.path), **kwargs)
                except OSError as exc:
                    if exc.errno not in (errno.ENOSPC, errno.EMFILE):
                        raise
                    # watchdog (7.1.1 on) refuses the whole folder when a subfolder cannot
                    # be watched as it starts; the one that could not is named.
                    with self._blind_lock:
                        where = self._blind.get(folder.key, str(folder.path))
                    log.error(
                        "watch.limit_reached",
                        folder=folder.key,
                        path=where,
                        error=exc.strerror,
                        hint="raise fs.inotify.max_user_watches (and max_user_instances), "
                        "e.g. sysctl fs.inotify.max_user_watches=524288; polling this "
                        "folder until restart",
                    )
                else:
                    self._watches[folder.key] = (self._inotify, watch)
                    return "inotify"
            with self._blind_lock:
                self._blind.pop(folder.key, None)  # polled: nothing below it is blind
            poller = self._poller()
            watch = poller.schedule(handler, str(folder.path), **kwargs)
            self._watches[folder.key] = (poller, watch)
            return "polling"

    def remove(self, folder_key: str) -> None:
        """Stops watching the folder (a no-op when it is not watched)."""
        with self._blind_lock:
            self._roots.pop(folder_key, None)
            self._blind.pop(folder_key, None)
        with self._lock:
            self._remove_locked(folder_key)

    def blind(self) -> dict[str, str]:
        """Returns (and forgets) the folders with a subfolder inotify could not watch, each
        with the first such path: they must be polled, or their files wait for a rescan."""
        with self._blind_lock:
            blind, self._blind = self._blind, {}
        return blind

    def _watch_failed(self, path: bytes) -> None:
        """Called by the inotify reader (or inside schedule) for a subfolder not watched."""
        where = os.fsdecode(path)
        with self._blind_lock:
            for key, root in self._roots.items():
                if where == root or where.startswith(root.rstrip("/") + "/"):
                    self._blind.setdefault(key, where)

    def _remove_locked(self, folder_key: str) -> None:
        entry = self._watches.pop(folder_key, None)
        if entry is None:
            return
        observer, watch = entry
        # The emitter may already be gone (its folder was deleted).
        with contextlib.suppress(KeyError, OSError):
            observer.unschedule(watch)

    def watching(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._watches))

    def healthy(self) -> bool:
        """Returns True while every observer thread runs."""
        if not self._inotify.is_alive():
            return False
        return self._polling is None or self._polling.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the observers; waits at most ``timeout`` seconds for all of them together."""
        for observer in (self._inotify, self._polling):
            if observer is not None and observer.is_alive():
                observer.stop()
        deadline = time.monotonic() + timeout
        for observer in (self._inotify, self._polling):
            if observer is not None and observer.is_alive():
                observer.join(timeout=max(0.0, deadline - time.monotonic()))
