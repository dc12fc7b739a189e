"""The looks at the disk the main loop must never wait on, done by one thread.

What a path from a watcher event is now (everything below a folder created or moved in),
whether a settling file is still the version that went quiet, what a file is after its
upload: each is a task handed in with the frozen folder config it belongs to, and each
answer comes back as a plain event in :attr:`Lookups.answers` (then ``wake`` is called).
A hung network mount stalls this thread, never the loop that feeds the service watchdog.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from . import folders as fs
from .config import FolderConfig
from .files import FileSig, lstat_regular
from .jobs import Key
from .logs import get_logger

log = get_logger("hottask_sync.lookups")

#: A walk of a folder moved in hands its sightings over in batches of this many.
BATCH = 500


@dataclass(frozen=True)
class Seen:
    """Files seen at a watcher's hint (or looked at again): ``(relpath, kind, sig)``."""

    folder_key: str
    sightings: tuple[fs.Sighting, ...]


@dataclass(frozen=True)
class Checked:
    """A settling file's check: ``sig`` None when it is gone or no longer a regular file."""

    key: Key
    token: int
    sig: FileSig | None


Answer = Seen | Checked


class Lookups:
    """A thread answering look-ups in the order they were asked."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.answers: deque[Answer] = deque()
        self._thread = threading.Thread(target=self._run, name="lookups", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._tasks.put(None)
        self._thread.join(timeout)

    def backlog(self) -> int:
        """How many look-ups wait for the thread (approximately)."""
        return self._tasks.qsize()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def hint(self, folder: FolderConfig, path: str, is_dir: bool) -> None:
        """Looks at a path a watcher event named (walking it if it is a folder)."""
        self._tasks.put(lambda: self._hint(folder, path, is_dir))

    def check(self, key: Key, token: int) -> None:
        """Stats a settling file whose quiet time is up (a folder's key is its path)."""
        path = os.path.join(*key)
        self._tasks.put(lambda: self._answer(Checked(key, token, lstat_regular(path))))

    def look(self, key: Key) -> None:
        """Looks at one file again (after its upload: a newer version may stand there)."""

        def task() -> None:
            seen = fs.look(os.path.join(*key))
            if seen is not None:
                self._answer(Seen(key[0], ((key[1], *seen),)))

        self._tasks.put(task)

    def _hint(self, folder: FolderConfig, path: str, is_dir: bool) -> None:
        batch: list[fs.Sighting] = []
        for sighting in fs.hint_sightings(folder, path, is_dir):
            batch.append(sighting)
            if len(batch) >= BATCH:
                self._answer(Seen(folder.key, tuple(batch)))
                batch = []
        if batch:
            self._answer(Seen(folder.key, tuple(batch)))

    def _answer(self, answer: Answer) -> None:
        self.answers.append(answer)
        self._wake()

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except Exception:  # a bug must not end the thread every look depends on
                log.exception("lookup.crashed")


__all__ = ["BATCH", "Checked", "Lookups", "Seen"]
