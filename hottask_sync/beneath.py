"""Paths beneath a held folder descriptor, never following links.

A watched folder (or a ``move_to`` folder) is opened once as a directory descriptor; every
path inside it is then resolved relative to that descriptor, so that no component of it
can be a symbolic link, not even one swapped in while we resolve: ``openat2`` with
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` where the kernel has it (Linux 5.6+), else a walk
of ``O_NOFOLLOW | O_DIRECTORY`` opens, one component at a time, from the folder's descriptor;
the file itself, one name in the folder so reached, is opened with ``O_NOFOLLOW``.
What is found is then checked with ``fstat`` on the descriptor (never by name again), and
unlinked or renamed relative to the descriptor of the folder that holds it (``dir_fd=``).

The folder's own configured path may go through links (``/srv/inbox -> /data/inbox``): it
is the administrator's, resolved once when it is opened. Only what lies below it is the
inbox writers', and that is never followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat as stat_mod
from collections.abc import Callable

from .files import FileSig

# openat2(2) ``resolve`` flags and renameat2(2) flags (linux/openat2.h, linux/fs.h).
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RENAME_NOREPLACE = 1
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

# Syscall numbers: openat2 has the same number on every architecture of the unified table;
# renameat2 is used through glibc's wrapper when there is one (glibc >= 2.28).
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "i686": 437, "riscv64": 437}
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276}
_NR_OPENAT2 = _SYS_OPENAT2.get(platform.machine())

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

#: Tests only: called with the relative path resolved so far ("" for the folder itself)
#: after each step of a resolution, so that a test can swap a folder for a link exactly
#: between two steps. None (the default) in the daemon.
hook: Callable[[str], None] | None = None

#: Whether openat2 is used: None = try it (and settle on False for this process when the
#: kernel or a seccomp filter refuses it with ENOSYS or EPERM); tests set False to force
#: the component-by-component walk.
use_openat2: bool | None = None


class NotRegular(Exception):
    """The path is a symlink, FIFO, device or folder, or leads through a link: never used."""


LINKED_FOLDER = "reached through a linked folder (never followed)"
LINK = "a symbolic link (never followed)"
NOT_REGULAR = "not a regular file"
OUTSIDE = "leads out of its folder (never followed)"


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
try:
    _renameat2: Callable[..., int] | None = _libc.renameat2
    _libc.renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    _libc.renameat2.restype = ctypes.c_int
except AttributeError:  # an old or non-glibc libc: the raw syscall, if we know its number
    _renameat2 = None


def _step(done: str) -> None:
    if hook is not None:
        hook(done)


# --- resolution -----------------------------------------------------------------------------


def _parts(relpath: str) -> list[str]:
    """Given a path relative to a folder, returns its components; raises NotRegular for a
    path that is absolute or climbs (``..``): it would lead out of the folder."""
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if relpath.startswith("/") or ".." in parts:
        raise NotRegular(OUTSIDE)
    return parts


def _openat2(dir_fd: int, path: str, flags: int) -> int:
    """openat2(dir_fd, path, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS); raises OSError."""
    how = _OpenHow(flags, 0, _RESOLVE)
    fd = _libc.syscall(
        ctypes.c_long(_NR_OPENAT2 or -1),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def openat2_usable() -> bool:
    """Returns whether resolutions use openat2 (False once it was found missing)."""
    return use_openat2 is not False and _NR_OPENAT2 is not None


def _open(dir_fd: int, path: str, flags: int) -> int:
    """Opens ``path`` (one or more components) beneath ``dir_fd``, never following a link;
    raises OSError as openat would (ELOOP for a link, EXDEV for a way out)."""
    global use_openat2
    if openat2_usable():
        # RESOLVE_NO_SYMLINKS refuses a link anywhere (ELOOP), except a trailing one asked
        # for with O_PATH | O_NOFOLLOW (opened as the link itself): so no O_NOFOLLOW here.
        how_flags = flags & ~os.O_NOFOLLOW if flags & os.O_PATH else flags
        try:
            return _openat2(dir_fd, path, how_flags)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            use_openat2 = False  # no openat2 here (old kernel, seccomp): walk from now on
    fd = os.dup(dir_fd)
    try:
        parts = path.split("/")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                child = os.open(part, flags if last else _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_link(fd, part):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                raise
            os.close(fd)
            fd = child
            if not last:
                _step("/".join(parts[: i + 1]))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat_mod.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _translate(exc: OSError, relpath: str, leaf: bool) -> BaseException:
    """Given an error of a resolution, returns what callers see: NotRegular for links,
    ways out and special files, FileNotFoundError for a missing path, else ``exc``."""
    code = exc.errno
    if code == errno.ELOOP:
        return NotRegular(LINK if leaf else LINKED_FOLDER)
    if code == errno.EXDEV:
        return NotRegular(OUTSIDE)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), relpath)
    if code in (errno.ENXIO, errno.EISDIR):
        return NotRegular(NOT_REGULAR)
    return exc


class Held:
    """A regular file opened for reading beneath a folder, with its parent folder held too.

    ``fd`` reads the file; ``dir_fd`` (an O_PATH descriptor) is the folder holding it under
    ``name``: later unlinks and renames go through it, so they stay where the file was
    found whatever is swapped in above. ``root_fd`` is the watched folder itself (and
    ``dir_fd`` too, for a file directly in it). Close it (or use it as a context manager) to
    release them; never close one of them on its own.
    """

    def __init__(
        self, root_fd: int, dir_fd: int, fd: int, relpath: str, st: os.stat_result
    ) -> None:
        self.root_fd = root_fd
        self.dir_fd = dir_fd  # root_fd itself for a file directly in the folder
        self.fd = fd
        self.relpath = relpath
        self.name = relpath.rsplit("/", 1)[-1]
        #: ``fstat`` of ``fd`` as it was opened.
        self.st = st

    def current_sig(self) -> FileSig | None:
        """Resolves the path afresh beneath the folder; returns the signature of the
        regular file found there now (None if none: gone, a link, a link on the way)."""
        return regular_sig(self.root_fd, self.relpath)

    def close(self) -> None:
        """Closes the descriptors (idempotent)."""
        _close(self.fd, self.dir_fd, self.root_fd)
        self.fd = self.dir_fd = self.root_fd = -1

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_folder(path: str | os.PathLike[str]) -> int:
    """Opens a configured folder as an O_PATH directory descriptor; returns it.

    Its own path is resolved once (an administrator may have linked it); raises
    FileNotFoundError when it is missing or not a directory, OSError otherwise.
    """
    try:
        try:
            # The configured path was resolved at load: no link to resolve again, and a
            # realpath() for every file would stat each of its components.
            return os.open(path, _DIR_FLAGS)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # ENOTDIR: a link, say
                raise
        return os.open(os.path.realpath(path), _DIR_FLAGS)  # it is a link now
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
        raise


def open_dir(root_fd: int, reldir: str, *, create: bool = False) -> int:
    """Returns an O_PATH descriptor of folder ``reldir`` beneath ``root_fd`` ("" is the
    folder itself), never through a link; with ``create``, missing folders are made.

    Raises NotRegular for a link (or a way out) on the way, FileNotFoundError for a missing
    folder (or a file where a folder should be), OSError otherwise.
    """
    fd = os.dup(root_fd)
    _step("")
    try:
        parts = _parts(reldir)
        for i, part in enumerate(parts):
            if create:
                # There already is fine (a link there too: the open below refuses it).
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = _open(fd, part, _DIR_FLAGS)
            except OSError as exc:
                raise _translate(exc, "/".join(parts[: i + 1]), leaf=False) from None
            os.close(fd)
            fd = child
            _step("/".join(parts[: i + 1]))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _close(fd: int, dir_fd: int, root_fd: int) -> None:
    """Closes a file's descriptor, its folder's and the watched folder's (those that are
    open: >= 0), the folder's only when it is not the watched folder's itself."""
    for held in (fd, dir_fd if dir_fd != root_fd else -1, root_fd):
        if held >= 0:
            os.close(held)


def _open_parent(root_fd: int, relpath: str) -> tuple[int, str]:
    """Returns (descriptor of the folder holding ``relpath``, the file's name in it). For a
    file directly in the folder, that is ``root_fd`` itself: close it with :func:`_close`."""
    parts = _parts(relpath)
    if not parts:
        raise NotRegular(NOT_REGULAR)  # the folder itself
    _step("")
    parent = "/".join(parts[:-1])
    if not parent:
        return root_fd, parts[-1]
    try:
        fd = _open(root_fd, parent, _DIR_FLAGS)
    except OSError as exc:
        raise _translate(exc, relpath, leaf=False) from None
    _step(parent)
    return fd, parts[-1]


def open_regular(folder: str | os.PathLike[str], relpath: str) -> Held:
    """Opens the regular file ``relpath`` beneath ``folder`` for reading, never following a
    link on the way or at the end; returns it held with its folders.

    Raises NotRegular for a link, a link on the way, a way out of the folder, a FIFO,
    socket, device or folder (a FIFO is never waited on: O_NONBLOCK); FileNotFoundError
    when it (or its folder) is missing; PermissionError; OSError otherwise.
    """
    root_fd = open_folder(folder)
    dir_fd = fd = -1
    try:
        dir_fd, name = _open_parent(root_fd, relpath)
        try:
            # One name in its folder: O_NOFOLLOW refuses a link there (ELOOP), as openat2's
            # RESOLVE_NO_SYMLINKS would, with a plain openat instead of a ctypes call.
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            raise _translate(exc, relpath, leaf=True) from None
        _step(relpath)
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise NotRegular(NOT_REGULAR)
    except BaseException:
        _close(fd, dir_fd, root_fd)
        raise
    return Held(root_fd, dir_fd, fd, relpath, st)


def regular_sig(root_fd: int, relpath: str) -> FileSig | None:
    """Given a folder descriptor and a path beneath it, returns the signature of the regular
    file there (``lstat``, resolved beneath the folder without following any link), or None
    when there is none: missing, a link, a link on the way, anything but a regular file."""
    try:
        dir_fd, name = _open_parent(root_fd, relpath)
    except (OSError, NotRegular):
        return None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        if dir_fd != root_fd:
            os.close(dir_fd)
    return FileSig.from_stat(st) if stat_mod.S_ISREG(st.st_mode) else None


def folder_sig(folder: str | os.PathLike[str], relpath: str) -> FileSig | None:
    """Like :func:`regular_sig`, for a folder given by its configured path."""
    try:
        root_fd = open_folder(folder)
    except OSError:
        return None
    try:
        return regular_sig(root_fd, relpath)
    finally:
        os.close(root_fd)


# --- changes relative to folder descriptors -------------------------------------------------


def stat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in the folder ``dir_fd``; None when it is not there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def same_file(a: os.stat_result | None, b: os.stat_result) -> bool:
    """True when ``a`` is the very inode ``b`` is (device and inode number)."""
    return a is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """Renames ``src`` (in folder ``src_dir_fd``) to ``dst`` (in ``dst_dir_fd``) unless
    ``dst`` exists: then raises FileExistsError and changes nothing. Neither name is
    followed if it is a link.

    renameat2(RENAME_NOREPLACE) where the kernel and file system have it; else a hard link
    to the new name (which fails if it exists) and an unlink of the old one, which leaves
    the old name alone if another file took it in between. Raises OSError (EXDEV across
    file systems, ENOENT when ``src`` is gone).
    """
    code = _renameat2_call(src_dir_fd, src, dst_dir_fd, dst)
    if code == 0:
        return
    if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        # EEXIST makes a FileExistsError; ENOENT names the source, the one that can go.
        raise OSError(code, os.strerror(code), src if code == errno.ENOENT else dst)
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        # A file system with neither renameat2 flags nor hard links (vfat, some FUSE): the
        # last resort is a check then a rename, which a file created in between could lose.
        if stat_at(dst_dir_fd, dst) is not None:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    if same_file(stat_at(src_dir_fd, src), os.stat(dst, dir_fd=dst_dir_fd, follow_symlinks=False)):
        os.unlink(src, dir_fd=src_dir_fd)


def _renameat2_call(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> int:
    """Calls renameat2(..., RENAME_NOREPLACE); returns 0 or the errno (ENOSYS if none)."""
    args = (os.fsencode(src), dst_dir_fd, os.fsencode(dst), RENAME_NOREPLACE)
    if _renameat2 is not None:
        rc = _renameat2(src_dir_fd, *args)
    elif (number := _SYS_RENAMEAT2.get(platform.machine())) is not None:
        rc = _libc.syscall(
            ctypes.c_long(number),
            ctypes.c_int(src_dir_fd),
            ctypes.c_char_p(args[0]),
            ctypes.c_int(dst_dir_fd),
            ctypes.c_char_p(args[2]),
            ctypes.c_uint(RENAME_NOREPLACE),
        )
    else:
        return errno.ENOSYS
    return 0 if rc == 0 else ctypes.get_errno()


__all__ = [
    "LINK",
    "LINKED_FOLDER",
    "NOT_REGULAR",
    "OUTSIDE",
    "Held",
    "NotRegular",
    "folder_sig",
    "open_dir",
    "open_folder",
    "open_regular",
    "regular_sig",
    "rename_noreplace",
    "same_file",
    "stat_at",
]
