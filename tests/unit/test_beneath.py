"""Unit tests for hottask_sync.beneath: paths resolved beneath a held folder descriptor.

Every test runs twice: with openat2 (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) and with the
component-by-component walk forced. Races are forced with ``beneath.hook``, which runs
between two resolution steps: a folder on the way is swapped for a link exactly there.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hottask_sync import beneath
from hottask_sync.beneath import NotRegular


def _kernel_has_openat2() -> bool:
    fd = os.open(".", os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(beneath._openat2(fd, ".", os.O_PATH | os.O_DIRECTORY))
    except OSError as exc:
        return exc.errno not in (errno.ENOSYS, errno.EPERM)
    finally:
        os.close(fd)
    return True


HAS_OPENAT2 = beneath.openat2_usable() and _kernel_has_openat2()
MODES = [
    pytest.param(
        "openat2",
        marks=pytest.mark.skipif(not HAS_OPENAT2, reason="this kernel has no openat2"),
    ),
    "walk",
]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each resolution mechanism in turn; the hook is reset afterwards."""
    monkeypatch.setattr(beneath, "use_openat2", None if request.param == "openat2" else False)
    monkeypatch.setattr(beneath, "hook", None)
    yield request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """inbox/a/d/x.txt (benign), outside/x.txt (a secret of the same name), inbox/other.txt."""
    inbox = tmp_path / "inbox"
    (inbox / "a" / "d").mkdir(parents=True)
    (inbox / "a" / "d" / "x.txt").write_bytes(b"benign")
    (inbox / "other.txt").write_bytes(b"other")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_bytes(b"SECRET")
    return tmp_path


def swap_for_link(folder: Path, target: Path) -> None:
    """What an inbox writer can do: move a folder aside and put a link in its place."""
    folder.rename(folder.with_name(folder.name + ".real"))
    folder.symlink_to(target, target_is_directory=True)


def hook_at(step: str, action: Callable[[], None]) -> Callable[[str], None]:
    """A hook running ``action`` once, right after resolution step ``step``."""
    fired: list[str] = []

    def run(done: str) -> None:
        if done == step and not fired:
            fired.append(done)
            action()

    return run


def read(fd: int) -> bytes:
    return os.pread(fd, 100, 0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- what is opened, what is refused ----------------------------------------------------------


def test_a_regular_file_is_opened_with_its_folder_held(mode: str, tree: Path) -> None:
    with beneath.open_regular(tree / "inbox", "a/d/x.txt") as held:
        assert read(held.fd) == b"benign"
        assert held.name == "x.txt"
        assert os.stat("x.txt", dir_fd=held.dir_fd).st_size == 6
        assert held.current_sig() is not None


def test_openat2_is_what_resolves_when_the_kernel_has_it(
    mode: str, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    monkeypatch.setattr(beneath, "hook", steps.append)
    beneath.open_regular(tree / "inbox", "a/d/x.txt").close()
    if mode == "openat2":
        assert steps == ["", "a/d", "a/d/x.txt"]  # the folders in one call
    else:
        assert steps == ["", "a", "a/d", "a/d/x.txt"]  # one component at a time


@pytest.mark.parametrize(
    ("relpath", "error", "message"),
    [
        ("link.txt", NotRegular, beneath.LINK),
        ("linked/x.txt", NotRegular, beneath.LINKED_FOLDER),
        ("a/linked/x.txt", NotRegular, beneath.LINKED_FOLDER),
        ("linked", NotRegular, beneath.LINK),
        ("fifo", NotRegular, beneath.NOT_REGULAR),
        ("a", NotRegular, beneath.NOT_REGULAR),
        ("../outside/x.txt", NotRegular, beneath.OUTSIDE),
        ("a/../../outside/x.txt", NotRegular, beneath.OUTSIDE),
        ("/etc/passwd", NotRegular, beneath.OUTSIDE),
        ("missing.txt", FileNotFoundError, None),
        ("missing/x.txt", FileNotFoundError, None),
        ("other.txt/x.txt", FileNotFoundError, None),
    ],
)
def test_links_ways_out_and_special_files_are_refused(
    mode: str, tree: Path, relpath: str, error: type[Exception], message: str | None
) -> None:
    inbox = tree / "inbox"
    (inbox / "link.txt").symlink_to(tree / "outside" / "x.txt")
    (inbox / "linked").symlink_to(tree / "outside", target_is_directory=True)
    (inbox / "a" / "linked").symlink_to(tree / "outside", target_is_directory=True)
    os.mkfifo(inbox / "fifo")  # never waited on: the open does not block
    before = open_fds()
    with pytest.raises(error) as caught:
        beneath.open_regular(inbox, relpath)
    if message is not None:
        assert str(caught.value) == message
    assert open_fds() == before  # nothing leaks on the way out
    assert beneath.folder_sig(inbox, relpath) is None


def test_a_missing_folder_is_a_missing_file(mode: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        beneath.open_regular(tmp_path / "nope", "x.txt")
    assert beneath.folder_sig(tmp_path / "nope", "x.txt") is None


def test_the_folder_itself_may_be_reached_through_a_link(mode: str, tree: Path) -> None:
    """Its configured path is the administrator's (/srv/inbox -> /data/inbox is common)."""
    alias = tree / "alias"
    alias.symlink_to(tree / "inbox", target_is_directory=True)
    with beneath.open_regular(alias, "a/d/x.txt") as held:
        assert read(held.fd) == b"benign"


# --- the swap race --------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["", "a"])
def test_a_folder_swapped_for_a_link_during_resolution_is_never_followed(
    mode: str, tree: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """inbox/a/d becomes a link to the secret's folder after the folder (or a/) is opened
    and before d is resolved: refused, the secret is never opened."""
    if mode == "openat2" and step == "a":
        pytest.skip("openat2 resolves a/d in one call: there is no step between a and d")
    inbox = tree / "inbox"
    swap = hook_at(step, lambda: swap_for_link(inbox / "a" / "d", tree / "outside"))
    monkeypatch.setattr(beneath, "hook", swap)
    with pytest.raises(NotRegular, match="linked folder"):
        beneath.open_regular(inbox, "a/d/x.txt")
    assert (inbox / "a" / "d").is_symlink()  # the swap did happen, at that step


def test_a_swap_after_the_folder_is_held_changes_nothing(
    mode: str, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once d is held, a link put in its place is not where the file is read from, nor
    where it is unlinked."""
    inbox = tree / "inbox"
    swap = hook_at("a/d", lambda: swap_for_link(inbox / "a" / "d", tree / "outside"))
    monkeypatch.setattr(beneath, "hook", swap)
    with beneath.open_regular(inbox, "a/d/x.txt") as held:
        assert read(held.fd) == b"benign"
        os.unlink(held.name, dir_fd=held.dir_fd)
        assert held.current_sig() is None  # a/d is a link now: nothing regular there
    assert (tree / "outside" / "x.txt").read_bytes() == b"SECRET"
    assert not (inbox / "a" / "d.real" / "x.txt").exists()


def test_the_fresh_signature_is_resolved_beneath_too(
    mode: str, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change-during-PUT check re-resolves the path: through a link it finds nothing."""
    inbox = tree / "inbox"
    with beneath.open_regular(inbox, "a/d/x.txt") as held:
        assert held.current_sig() is not None
        # The same file, now reachable only through a link: not at its path any more.
        swap_for_link(inbox / "a" / "d", inbox / "a" / "d.real")
        assert os.stat(inbox / "a" / "d" / "x.txt").st_ino == os.fstat(held.fd).st_ino
        assert held.current_sig() is None


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EPERM])
def test_a_kernel_without_openat2_falls_back_to_the_walk(
    tree: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """ENOSYS (old kernel) or EPERM (a seccomp filter): the walk, from then on."""
    calls: list[str] = []

    def refused(dir_fd: int, path: str, flags: int) -> int:
        calls.append(path)
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(beneath, "use_openat2", None)
    monkeypatch.setattr(beneath, "_NR_OPENAT2", 437)
    monkeypatch.setattr(beneath, "_openat2", refused)
    with beneath.open_regular(tree / "inbox", "a/d/x.txt") as held:
        assert read(held.fd) == b"benign"
    assert calls == ["a/d"]  # tried once, then never again
    assert beneath.use_openat2 is False
    (tree / "inbox" / "l").symlink_to(tree / "outside", target_is_directory=True)
    with pytest.raises(NotRegular, match="linked folder"):
        beneath.open_regular(tree / "inbox", "l/x.txt")
    assert calls == ["a/d"]


# --- folders made beneath, renames that never replace ----------------------------------------


def test_open_dir_makes_folders_and_never_goes_through_a_link(mode: str, tree: Path) -> None:
    done = tree / "done"
    done.mkdir()
    (done / "l").symlink_to(tree / "outside", target_is_directory=True)
    root = beneath.open_folder(done)
    try:
        os.close(beneath.open_dir(root, "x/y", create=True))
        assert (done / "x" / "y").is_dir()
        with pytest.raises(NotRegular, match="linked folder"):
            beneath.open_dir(root, "l/new", create=True)
        assert sorted(os.listdir(tree / "outside")) == ["x.txt"]
    finally:
        os.close(root)


@pytest.fixture(params=["renameat2", "link"])
def renames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """renameat2(RENAME_NOREPLACE), and the link + unlink fallback (EINVAL: a file system
    without the flag)."""
    if request.param == "link":
        monkeypatch.setattr(beneath, "_renameat2_call", lambda *a: errno.EINVAL)
    return str(request.param)


def test_rename_noreplace_never_replaces(renames: str, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"mine")
    (tmp_path / "b").write_bytes(b"theirs")
    fd = beneath.open_folder(tmp_path)
    try:
        with pytest.raises(FileExistsError):
            beneath.rename_noreplace(fd, "a", fd, "b")
        assert (tmp_path / "a").read_bytes() == b"mine"
        assert (tmp_path / "b").read_bytes() == b"theirs"
        beneath.rename_noreplace(fd, "a", fd, "c")
        assert not (tmp_path / "a").exists()
        assert (tmp_path / "c").read_bytes() == b"mine"
        with pytest.raises(FileNotFoundError):
            beneath.rename_noreplace(fd, "a", fd, "d")
    finally:
        os.close(fd)


def test_rename_without_hard_links_still_refuses_a_taken_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system with neither (vfat): the last resort still refuses a name seen taken."""
    monkeypatch.setattr(beneath, "_renameat2_call", lambda *a: errno.EINVAL)

    def no_links(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a").write_bytes(b"mine")
    (tmp_path / "b").write_bytes(b"theirs")
    fd = beneath.open_folder(tmp_path)
    try:
        with pytest.raises(FileExistsError):
            beneath.rename_noreplace(fd, "a", fd, "b")
        beneath.rename_noreplace(fd, "a", fd, "c")
        assert (tmp_path / "c").read_bytes() == b"mine"
        assert (tmp_path / "b").read_bytes() == b"theirs"
    finally:
        os.close(fd)


def test_no_descriptor_leaks(mode: str, tree: Path) -> None:
    inbox = tree / "inbox"
    before = open_fds()
    for _ in range(20):
        beneath.open_regular(inbox, "a/d/x.txt").close()
        assert beneath.folder_sig(inbox, "a/d/x.txt") is not None
        with pytest.raises(FileNotFoundError):
            beneath.open_regular(inbox, "a/nope/x.txt")
    held = beneath.open_regular(inbox, "other.txt")
    held.close()
    held.close()  # idempotent
    assert open_fds() == before


def test_a_file_directly_in_the_folder_holds_two_descriptors_not_three(
    mode: str, tree: Path
) -> None:
    """Its folder is the watched folder: held once, not duplicated (a report stage holds
    one Held per file waiting; the descriptors are a bounded resource), and closed once."""
    inbox = tree / "inbox"
    before = open_fds()
    held = beneath.open_regular(inbox, "other.txt")
    assert open_fds() == before + 2
    assert held.dir_fd == held.root_fd
    assert os.stat("other.txt", dir_fd=held.dir_fd).st_size == 5
    assert held.current_sig() is not None
    assert open_fds() == before + 2  # current_sig left nothing open
    held.close()
    assert open_fds() == before
    nested = beneath.open_regular(inbox, "a/d/x.txt")
    assert open_fds() == before + 3  # the file, its folder a/d, the watched folder
    nested.close()
    assert open_fds() == before
