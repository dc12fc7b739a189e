"""What a file on disk is to hottask-sync: its signature, which names are taken, and a safe open."""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileSig:
    """The parts of ``stat`` that say whether a file is still the same version.

    ``ctime_ns`` is None when unknown (a row recorded before it was kept).
    """

    size: int
    mtime_ns: int
    ino: int
    dev: int
    ctime_ns: int | None = None

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileSig:
        """Given a stat result, returns its signature."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)

    def same_version(self, other: FileSig | None) -> bool:
        """Returns True when ``other`` is the same file version: same size, mtime, inode
        and inode change time (when both know it).

        The ctime catches what the others cannot: a rewrite whose mtime was put back
        (``touch -r``, ``rsync -t``), an inode reused by a copy with the same size and
        mtime (``cp -p``, ``tar -x``), a ``chmod`` that may make a failed file readable.
        The device is left out on purpose: it changes when a network share is remounted.
        """
        return (
            self.same_but_ctime(other)
            and other is not None
            and (self.ctime_ns is None or other.ctime_ns is None or self.ctime_ns == other.ctime_ns)
        )

    def same_but_ctime(self, other: FileSig | None) -> bool:
        """Returns True when ``other`` has the same size, mtime and inode, whatever its
        ctime (a ``chmod`` alone, or a same-looking copy: only the bytes can tell)."""
        return (
            other is not None
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.ino == other.ino
        )


def lstat_regular(path: str | bytes) -> FileSig | None:
    """Given a path, returns its signature if it is a regular file (not followed if a link).

    Returns None when it does not exist, cannot be looked at, or is anything but a regular
    file.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat_mod.S_ISREG(st.st_mode):
        return None
    return FileSig.from_stat(st)
