"""The watched folders on disk: checking them, listing them without following links, and
keeping their watches up while they go missing, come back or are replaced.

A folder is watched at its real path, resolved once when the config is loaded
(:class:`~hottask_sync.config.FolderConfig`): inotify then sees the folder itself, not a link
to it, and the ledger knows it by that one path however it is spelled in the config."""

from __future__ import annotations

import errno
import os
import queue
import stat as stat_mod
import threading
from collections.abc import Callable, Iterable, Iterator

from .config import Config, FolderConfig
from .files import FileSig
from .ledger import Ledger
from .logs import get_logger
from .scheduler import Kind
from .watcher import Watcher

log = get_logger("hottask_sync.folders")

#: The folders are checked (gone? back? replaced?) this often.
CHECK_SECONDS = 2.0

Sighting = tuple[str, Kind, FileSig | None]  # (relative path, what it is, its signature)


def check_folders(config: Config) -> list[str]:
    """Returns one problem line per watched folder that is not a readable directory."""
    problems = []
    for i, folder in enumerate(config.folders):
        where = f"{config.source}: folders[{i}].path {folder.shown}"
        try:
            st = os.stat(folder.path)
        except FileNotFoundError:
            problems.append(f"{where}: does not exist")
            continue
        except OSError as exc:
            problems.append(f"{where}: {exc.strerror}")
            continue
        if not stat_mod.S_ISDIR(st.st_mode):
            problems.append(f"{where}: is not a directory")
        elif not os.access(folder.path, os.R_OK | os.X_OK):
            problems.append(f"{where}: not readable by this user")
    return problems


def classify(st: os.stat_result) -> tuple[Kind, FileSig | None]:
    """Given an lstat result (not a folder), returns what it is and, for a file, its sig."""
    if stat_mod.S_ISREG(st.st_mode):
        return Kind.FILE, FileSig.from_stat(st)
    return (Kind.LINK if stat_mod.S_ISLNK(st.st_mode) else Kind.OTHER), None


def look(path: str) -> tuple[Kind, FileSig | None] | None:
    """Given a path, returns what it is now (never following a link); None when it is
    gone or is a folder."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return None if stat_mod.S_ISDIR(st.st_mode) else classify(st)


def walk(root: str, rel_root: str, folder: FolderConfig) -> Iterator[Sighting]:
    """Yields every wanted entry below ``root``; never follows links.

    Streams: one directory is read at a time, entry by entry, so a folder of a million
    files is never held in memory (only the paths of the subfolders still to read are).
    Unreadable subfolders are logged and skipped.
    """
    stack = [(root, rel_root)]
    while stack:
        path, rel = stack.pop()
        try:
            it = os.scandir(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning(
                    "folder.unreadable", folder=folder.key, path=rel or ".", error=exc.strerror
                )
            continue
        with it:
            for entry in _entries(it):
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if folder.recursive and folder.selector.may_descend(child):
                            stack.append((entry.path, child))
                        continue
                    if folder.selector.wants(child):
                        yield (child, *classify(entry.stat(follow_symlinks=False)))
                except OSError:
                    continue


def _entries(it: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
    """The entries of a directory being read; a read error ends it (like ENOENT: the
    directory went away while it was read)."""
    try:
        yield from it
    except OSError:
        return


def relpath(folder: FolderConfig, path: str) -> str | None:
    """Given an event's absolute path, returns it relative to the folder, or None when it
    is outside it (or below it in a folder that is not recursive)."""
    root = str(folder.path)
    if not path.startswith(root + "/"):
        return None
    rel = path[len(root) + 1 :]
    if not folder.recursive and "/" in rel:
        return None
    return rel


def hint_sightings(folder: FolderConfig, path: str, is_dir: bool) -> Iterator[Sighting]:
    """Given a watcher event's path in ``folder``, yields what is there now that the folder
    wants: the file itself, or everything below a folder created or moved in."""
    rel = relpath(folder, path)
    if rel is None:
        return
    if is_dir:
        if folder.recursive and folder.selector.may_descend(rel):
            yield from walk(path, rel, folder)  # a folder moved in may already hold files
    elif folder.selector.wants(rel) and (seen := look(path)) is not None:
        yield (rel, *seen)


def adopt_spellings(ledger: Ledger, folders: Iterable[FolderConfig]) -> None:
    """Carries the ledger rows each folder has under its configured spelling over to its
    real path (its key), so that a folder configured through a link, recorded under that
    spelling before keys were resolved, is not uploaded again. Rows already under the real
    path win. Run at start, before the ledger is read for anything else."""
    for folder in folders:
        if folder.configured is None:
            continue
        moved = ledger.adopt_folder(str(folder.configured), folder.key)
        if moved:
            log.info(
                "folder.adopted", folder=folder.key, configured=str(folder.configured), rows=moved
            )


def relinked(folder: FolderConfig) -> str | None:
    """Returns where the folder's path leads now when that is not the path itself (a link
    on the way appeared or changed since the config was loaded); None when it is real."""
    now = os.path.realpath(folder.path)
    return None if now == str(folder.path) else now


def _dir_id(path: object) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class FolderWatches:
    """Which folders are watched and which are missing; adds and drops their watches."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.missing: set[str] = set()
        self._ids: dict[str, tuple[int, int] | None] = {}  # (st_dev, st_ino) watched
        self._relinked: set[str] = set()  # missing because relinked, and said so

    def watch(self, folder: FolderConfig, *, poll: bool = False) -> bool:
        """Starts watching ``folder`` at its real path; returns False (and logs why) when it
        cannot: it is missing, or its path now leads through a link elsewhere."""
        self.missing.discard(folder.key)
        if not folder.path.is_dir():
            self.missing.add(folder.key)
            log.error("folder.missing", folder=folder.key, hint="will watch it when it appears")
            return False
        if (now := relinked(folder)) is not None:
            self.missing.add(folder.key)
            self._note_relinked(folder, now)
            return False
        folder_id = _dir_id(folder.path)
        try:
            how = self.watcher.add(folder, poll=poll)
        except OSError as exc:
            self.missing.add(folder.key)
            log.error("folder.unwatchable", folder=folder.key, error=exc.strerror)
            return False
        self._ids[folder.key] = folder_id
        self._relinked.discard(folder.key)
        spelled = {} if folder.configured is None else {"configured": str(folder.configured)}
        log.info(
            "folder.watching",
            folder=folder.key,
            path=str(folder.path),
            **spelled,
            mode=how,
            recursive=folder.recursive,
        )
        return True

    def unwatch(self, folder_key: str) -> None:
        self.watcher.remove(folder_key)
        self.missing.discard(folder_key)
        self._ids.pop(folder_key, None)
        self._relinked.discard(folder_key)

    def reconcile(self, running: Iterable[FolderConfig], wanted: Iterable[FolderConfig]) -> None:
        """After a reload: drops the watches of removed folders, (re)watches new or changed
        ones."""
        old = {f.key: f for f in running}
        new = {f.key: f for f in wanted}
        for gone in old.keys() - new.keys():
            self.unwatch(gone)
            log.info("folder.removed", folder=gone)
        for key, folder in new.items():
            if old.get(key) != folder:
                self.watch(folder)

    def check(self, folders: Iterable[FolderConfig]) -> list[FolderConfig]:
        """Notices folders that went missing, came back or were replaced; returns the
        ones to scan now (back, or replaced and watched anew). A folder whose path now
        leads through a link elsewhere counts as missing (and is said so once)."""
        rescan = []
        for folder in folders:
            now = relinked(folder)
            present = now is None and folder.path.is_dir()
            if folder.key in self.missing:
                if present:
                    log.info("folder.back", folder=folder.key)
                    if self.watch(folder):
                        rescan.append(folder)
                elif now is not None and os.path.isdir(now):
                    self._note_relinked(folder, now)
            elif not present:
                # Unmounted or deleted: nothing is taken as deleted; wait for it to return.
                self.missing.add(folder.key)
                self.watcher.remove(folder.key)
                if now is not None and os.path.isdir(now):
                    self._note_relinked(folder, now)
                else:
                    log.error(
                        "folder.missing", folder=folder.key, hint="will resume when it returns"
                    )
            elif self._ids.get(folder.key) not in (None, _dir_id(folder.path)):
                # Replaced between two checks (moved away and created again, a restore): the
                # watch still follows the old folder. Watch the new one and look into it.
                log.warning("folder.replaced", folder=folder.key, hint="watching the new folder")
                if self.watch(folder):
                    rescan.append(folder)
        return rescan

    def _note_relinked(self, folder: FolderConfig, now: str) -> None:
        """Logs, once until it is watched again, that the folder's path now leads elsewhere.

        Its identity (the ledger's key) and its watch are the real path resolved at load:
        following the new link silently would file another folder's files under this one's
        key. A reload (or restart) resolves the path again.
        """
        if folder.key in self._relinked:
            return
        self._relinked.add(folder.key)
        log.error(
            "folder.relinked",
            folder=folder.key,
            configured=str(folder.configured or folder.path),
            now=now,
            hint="its path now leads through a link to another folder; reload the config "
            "(systemctl reload hottask-sync) to watch that one",
        )


class FolderKeeper:
    """The watches, kept on a thread of their own: set up at start, checked every
    :data:`CHECK_SECONDS` (gone, back, replaced), reconciled at a reload. Setting up a
    recursive watch walks the tree, and a check of a hung network mount never returns:
    neither may run on the loop that feeds the service watchdog.

    After it watches a folder (at start, when it comes back, after a reload) it asks
    ``scan`` for a scan of it, so that no file created before the watch is missed.
    """

    def __init__(
        self, watches: FolderWatches, scan: Callable[[tuple[FolderConfig, ...]], None]
    ) -> None:
        self._watches = watches
        self._scan = scan
        self._folders: tuple[FolderConfig, ...] = ()
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="folders", daemon=True)
        #: The keys of the folders missing now (a new frozenset each time: read it whole).
        self.missing: frozenset[str] = frozenset()

    def start(self, folders: Iterable[FolderConfig]) -> None:
        """Starts the thread: it watches every folder, then asks for their scan."""
        self._folders = tuple(folders)
        self._tasks.put(lambda: self._watch_all(self._folders))
        self._thread.start()

    def reload(self, folders: Iterable[FolderConfig]) -> None:
        """New folders: watches of removed ones go, new or changed ones are watched, then
        every folder is scanned (a reload, and `retry`, look at every file again)."""
        wanted = tuple(folders)

        def task() -> None:
            self._watches.reconcile(self._folders, wanted)
            self._folders = wanted
            self._publish()
            self._scan(self._present(wanted))

        self._tasks.put(task)

    def stop(self, timeout: float) -> None:
        self._tasks.put(None)
        self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _watch_all(self, folders: tuple[FolderConfig, ...]) -> None:
        for folder in folders:
            self._watches.watch(folder)
        self._publish()
        self._scan(self._present(folders))

    def _present(self, folders: tuple[FolderConfig, ...]) -> tuple[FolderConfig, ...]:
        return tuple(f for f in folders if f.key not in self._watches.missing)

    def _publish(self) -> None:
        self.missing = frozenset(self._watches.missing)

    def _run(self) -> None:
        while True:
            try:
                task = self._tasks.get(timeout=CHECK_SECONDS)
            except queue.Empty:
                task = self._check
            if task is None:
                return
            try:
                task()
            except Exception:  # a bug must not end the thread that keeps the watches
                log.exception("folders.crashed")

    def _check(self) -> None:
        back = self._watches.check(self._folders) + self._poll_blind()
        self._publish()
        if back:
            self._scan(tuple(back))

    def _poll_blind(self) -> list[FolderConfig]:
        """Folders with a subfolder inotify could not watch are polled from now on (and
        scanned, for what was missed meanwhile)."""
        polled = []
        for key, path in self._watches.watcher.blind().items():
            folder = next((f for f in self._folders if f.key == key), None)
            if folder is None:
                continue
            log.error(
                "watch.limit_reached",
                folder=key,
                path=path,
                hint="a subfolder could not be watched: raise fs.inotify.max_user_watches "
                "(e.g. sysctl fs.inotify.max_user_watches=524288); polling this folder "
                "until restart",
            )
            if self._watches.watch(folder, poll=True):
                polled.append(folder)
        return polled
