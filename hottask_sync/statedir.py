"""The state directory's lock: one daemon per state directory, and who holds it."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import LockedError, UserError


def lock_state_dir(state_dir: Path) -> int:
    """Takes the state directory's exclusive lock; returns its descriptor (keep it open).

    Raises LockedError naming the other daemon's PID when it is taken, UserError when the
    directory cannot be created or written.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UserError(f"sync.state_dir {state_dir}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise LockedError(
                f"another hottask-sync (PID {other}) is already using {state_dir}; "
                "stop it first or give this one its own sync.state_dir"
            ) from None
        raise UserError(f"sync.state_dir {state_dir}: cannot lock: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def daemon_pid(state_dir: Path) -> int | None:
    """Returns the PID of the daemon holding the state directory's lock, or None."""
    try:
        fd = os.open(state_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # nobody holds it
    finally:
        os.close(fd)
