"""The state directory: one daemon per state directory (its lock), who holds it, and
whether the filesystem under it can hold the ledger at all.

The lock is an open file description lock (``fcntl(F_OFD_SETLK)``, a write lock over the
whole of ``STATE_DIR/lock``), not ``flock``, for one reason: whether it is held can be
asked without taking it (``F_OFD_GETLK``, which does not see ``flock`` locks). ``status``
and ``retry`` only ask, so they can never make a starting daemon find its lock taken.
Like ``flock``, an OFD lock belongs to the open file description: it is released when the
daemon closes the descriptor or dies, and it conflicts with any other open of the file,
in this process or another (unlike classic POSIX locks, which a process never conflicts
with and loses on the first ``close`` of any descriptor of the file).

The holder's PID is written into the file (``F_OFD_GETLK`` reports -1 as the PID of an OFD
lock); the file's content counts only while the lock is held.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from .errors import LockedError, UserError
from .logs import get_logger

log = get_logger("hottask_sync.daemon")

#: How long a starting daemon waits for the lock before giving up: long enough for a
#: previous instance that is still shutting down to let go of it.
LOCK_WAIT_SECONDS = 5.0
#: How often the lock is tried again while waiting.
LOCK_POLL_SECONDS = 0.1

LOCK_FILENAME = "lock"


class _Flock(ctypes.Structure):
    """``struct flock`` as the kernel reads it for the ``F_OFD_*`` commands (64-bit
    offsets: the OFD commands always take the large-file layout)."""

    _fields_ = (
        ("l_type", ctypes.c_short),
        ("l_whence", ctypes.c_short),
        ("l_start", ctypes.c_int64),
        ("l_len", ctypes.c_int64),
        ("l_pid", ctypes.c_int),
    )


def _whole_file(lock_type: int) -> bytes:
    """A ``struct flock`` for the whole file; l_pid must be 0 for the OFD commands."""
    return bytes(_Flock(lock_type, os.SEEK_SET, 0, 0, 0))


def lock_state_dir(
    state_dir: Path,
    *,
    wait_seconds: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Takes the state directory's exclusive lock; returns its descriptor (keep it open).

    While another process holds the lock, tries again every LOCK_POLL_SECONDS for up to
    ``wait_seconds`` (logging ``state_dir.busy`` once), so that a daemon restarted while
    the previous one is still exiting gets the lock. Raises LockedError (exit code 3)
    naming the holder's PID when it is still taken then, UserError when the directory
    cannot be created, written or locked at all.
    """
    fd = _open_lock_file(state_dir)
    deadline = clock() + wait_seconds
    waiting = False
    try:
        while not _try_lock(fd, state_dir):
            if clock() >= deadline:
                raise LockedError(
                    f"another hottask-sync (PID {_holder_text(fd)}) is already using "
                    f"{state_dir}; stop it first or give this one its own sync.state_dir"
                )
            if not waiting:
                waiting = True
                log.warning(
                    "state_dir.busy",
                    state_dir=str(state_dir),
                    pid=_holder_text(fd),
                    hint=f"another hottask-sync holds its lock; waiting up to {wait_seconds:g} s",
                )
            sleep(max(0.0, min(LOCK_POLL_SECONDS, deadline - clock())))
    except BaseException:
        os.close(fd)
        raise
    # Only the holder writes: the file's content is the PID of whoever holds the lock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open_lock_file(state_dir: Path) -> int:
    """Creates the state directory (0700) and opens its lock file for writing."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(
            state_dir / LOCK_FILENAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
    except OSError as exc:
        raise UserError(f"sync.state_dir {state_dir}: {exc.strerror}") from exc


def _try_lock(fd: int, state_dir: Path) -> bool:
    """Returns True when the OFD write lock was taken, False when someone else holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _whole_file(fcntl.F_WRLCK))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise UserError(f"sync.state_dir {state_dir}: cannot lock: {exc.strerror}") from exc
    return True


def _holder_text(fd: int) -> str:
    """The PID written in the lock file, as text ("?" when there is none yet)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def daemon_pid(state_dir: Path) -> int | None:
    """Returns the PID of the daemon holding the state directory's lock, or None when
    nobody holds it (or its PID cannot be read).

    Only asks (``F_OFD_GETLK``): never takes the lock, not even for a moment, so a daemon
    starting at the same time cannot find it taken because of this call.
    """
    try:
        fd = os.open(state_dir / LOCK_FILENAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _whole_file(fcntl.F_WRLCK))
        except OSError:
            return None
        if _Flock.from_buffer_copy(answer).l_type == fcntl.F_UNLCK:
            return None  # nobody holds it: whatever PID the file names has exited
        text = _holder_text(fd)
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


# --- the filesystem under the state directory -----------------------------------------------

#: Filesystem types (as /proc/self/mountinfo names them) on which SQLite's write-ahead log,
#: which needs shared memory between processes and working byte-range locks, is unsafe.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "9p",
        "afs",
        "lustre",
        "gpfs",
        "beegfs",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.rclone",
        "davfs",
        "fuse.davfs",
        "ocfs2",
        "gfs2",
    }
)


def filesystem_type(path: Path, mountinfo: str) -> str | None:
    """Given a path and the text of /proc/self/mountinfo, returns the type of the
    filesystem the path (or its nearest existing parent) lives on, None if unknown."""
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        kind = line.split(" - ", 1)[1].split(" ", 1)[0]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, kind
    return best_type


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in mount points as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def check_filesystem(state_dir: Path, *, allow_network: bool, mountinfo: str | None = None) -> None:
    """Raises UserError naming the filesystem type when the state directory is on a network
    filesystem, unless that is explicitly allowed."""
    if allow_network:
        return
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return  # not Linux, or no /proc: nothing to go by
    kind = filesystem_type(state_dir, mountinfo)
    if kind in NETWORK_FILESYSTEMS:
        raise UserError(
            f"sync.state_dir {state_dir} is on a {kind} filesystem: the ledger's SQLite "
            "write-ahead log is unsafe on network filesystems; put it on a local disk "
            "(or set sync.allow_network_state_dir = true to take the risk)"
        )
