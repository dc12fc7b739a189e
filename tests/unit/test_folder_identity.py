"""A watched folder is one real folder: nested or repeated folders are config errors, and a
folder's identity (its ledger key, and what is watched) is its real path however it is
spelled (a link, a trailing slash, ``a/../a``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing

from hottask_sync import cli
from hottask_sync import folders as fs
from hottask_sync.config import Config, FolderConfig, load_config
from hottask_sync.errors import ConfigError, UserError
from hottask_sync.files import FileSig
from hottask_sync.ledger import Ledger, State

ENV = {"HOME": "/home/tester"}


def toml_folders(*tables: str) -> str:
    return "".join(f"[[folders]]\n{t}\n" for t in tables)


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=ENV)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


@pytest.fixture
def real(tmp_path: Path) -> Path:
    """A real folder with a subfolder ``sub``, and ``tmp_path/alias`` a link to it."""
    folder = tmp_path / "real"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(folder)
    return folder


# --- nested and repeated folders ------------------------------------------------------------


@pytest.mark.parametrize("outer_first", [True, False])
def test_nested_folders_are_an_error_naming_both(
    tmp_path: Path, real: Path, outer_first: bool
) -> None:
    outer, inner = f'path = "{real}"', f'path = "{real}/sub"'
    tables = (outer, inner) if outer_first else (inner, outer)
    found = problems(tmp_path, toml_folders(*tables))
    assert len(found) == 1
    (line,) = found
    assert line.startswith(f"{tmp_path / 'c.toml'}: folders[1].path: ")
    assert "folders[0].path" in line
    assert str(real) in line and f"{real}/sub" in line
    assert "uploaded twice" in line
    index = 0 if outer_first else 1
    assert f"add '/sub/' to folders[{index}].exclude" in line


def test_a_folder_inside_another_through_a_link_is_an_error(tmp_path: Path, real: Path) -> None:
    found = problems(tmp_path, toml_folders(f'path = "{real}"', f'path = "{tmp_path}/alias/sub/"'))
    (line,) = found
    assert f"folders[1].path: {tmp_path}/alias/sub (resolves to {real}/sub) is inside" in line
    assert f"folders[0].path {real}" in line


@pytest.mark.parametrize(
    "second",
    ["{tmp}/alias", "{tmp}/alias/", "{tmp}/real/", "{tmp}/real/sub/..", "{tmp}/alias/../real"],
)
def test_two_entries_naming_one_real_folder_are_an_error(
    tmp_path: Path, real: Path, second: str
) -> None:
    spelled = second.format(tmp=tmp_path)
    found = problems(tmp_path, toml_folders(f'path = "{real}"', f'path = "{spelled}"'))
    (line,) = found
    assert f"folders[1].path: {os.path.normpath(spelled)}" in line
    assert f"is already configured as folders[0].path {real}" in line


@pytest.mark.parametrize(
    "outer",
    [
        'exclude = ["sub"]',
        'exclude = ["/sub/"]',
        'exclude = ["sub/**"]',
        "recursive = false",
    ],
)
def test_an_outer_folder_that_keeps_out_of_the_inner_one_is_allowed(
    tmp_path: Path, real: Path, outer: str
) -> None:
    config = load(tmp_path, toml_folders(f'path = "{real}"\n{outer}', f'path = "{real}/sub"'))
    assert [f.key for f in config.folders] == [str(real), str(real / "sub")]


def test_an_inner_folder_below_an_excluded_one_is_allowed(tmp_path: Path, real: Path) -> None:
    (real / "sub" / "deep").mkdir()
    config = load(
        tmp_path,
        toml_folders(f'path = "{real}"\nexclude = ["sub/"]', f'path = "{real}/sub/deep"'),
    )
    assert len(config.folders) == 2


def test_a_hidden_inner_folder_is_never_entered_by_the_outer_one(
    tmp_path: Path, real: Path
) -> None:
    (real / ".hidden").mkdir()
    assert len(load(tmp_path, toml_folders(f'path = "{real}"', f'path = "{real}/.hidden"')).folders)


@pytest.mark.parametrize("exclude", ['["*.pdf"]', '["other"]', '["sub/*.txt"]'])
def test_an_exclude_that_leaves_files_of_the_inner_folder_is_still_an_error(
    tmp_path: Path, real: Path, exclude: str
) -> None:
    text = toml_folders(f'path = "{real}"\nexclude = {exclude}', f'path = "{real}/sub"')
    (line,) = problems(tmp_path, text)
    assert "folders[1].path" in line and "folders[0].path" in line


def test_siblings_and_a_shared_name_prefix_do_not_overlap(tmp_path: Path) -> None:
    config = load(tmp_path, toml_folders(f'path = "{tmp_path}/in"', f'path = "{tmp_path}/in-2"'))
    assert len(config.folders) == 2


def test_a_move_to_inside_the_folder_through_a_link_is_caught(tmp_path: Path, real: Path) -> None:
    text = toml_folders(
        f'path = "{real}"\nafter_upload = "move"\nmove_to = "{tmp_path}/alias/sub/done"'
    )
    (line,) = problems(tmp_path, text)
    assert "folders[0].move_to: is inside the watched folder; add 'sub/done'" in line


# --- one key per real folder ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spelled", ["{tmp}/alias", "{tmp}/alias/", "{tmp}/real/", "{tmp}/real/../real", "{tmp}/real"]
)
def test_every_spelling_of_a_folder_gives_its_real_path_as_key(
    tmp_path: Path, real: Path, spelled: str
) -> None:
    (folder,) = load(tmp_path, toml_folders(f'path = "{spelled.format(tmp=tmp_path)}"')).folders
    assert folder.key == str(real)
    assert folder.path == real
    link = "alias" in spelled
    assert folder.configured == (tmp_path / "alias" if link else None)
    assert folder.shown == (f"{tmp_path}/alias (resolves to {real})" if link else str(real))


def test_a_missing_folder_resolves_what_exists_and_keeps_the_rest(
    tmp_path: Path, real: Path
) -> None:
    (folder,) = load(tmp_path, toml_folders(f'path = "{tmp_path}/alias/not/yet"')).folders
    assert folder.path == real / "not" / "yet"
    assert folder.configured == tmp_path / "alias" / "not" / "yet"


# --- the ledger rows of the old spelling ----------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.sqlite3")
    yield led
    led.close()


def report(ledger: Ledger, folder: str, rel: str, sig: FileSig, fsid: str) -> None:
    ledger.mark_ticketed(folder, rel, sig, fsid)
    ledger.mark_put(folder, rel, "0" * 64, file_store_id=fsid)
    ledger.mark_reported(folder, rel)


def a_sig(tmp_path: Path, name: str) -> FileSig:
    (tmp_path / name).write_bytes(name.encode())
    return FileSig.from_stat(os.stat(tmp_path / name))


def test_adopt_folder_moves_every_row_and_rows_under_the_new_key_win(
    tmp_path: Path, ledger: Ledger
) -> None:
    one, two, three = (a_sig(tmp_path, n) for n in ("one", "two", "three"))
    report(ledger, "/old", "a.txt", one, "fs-old-a")
    report(ledger, "/old", "both.txt", two, "fs-old-both")
    ledger.mark_ticketed("/old", "owed.txt", three, "fs-owed")
    ledger.mark_put("/old", "owed.txt", "1" * 64, file_store_id="fs-owed")
    report(ledger, "/new", "both.txt", two, "fs-new-both")
    report(ledger, "/elsewhere", "a.txt", one, "fs-elsewhere")

    assert ledger.adopt_folder("/old", "/new") == 2

    assert ledger.snapshot("/old") == {}
    moved = ledger.get("/new", "a.txt")
    assert moved is not None and moved.state is State.REPORTED
    assert moved.file_store_id == "fs-old-a" and moved.sig == one
    both = ledger.get("/new", "both.txt")
    assert both is not None and both.file_store_id == "fs-new-both"
    owed = ledger.get("/new", "owed.txt")
    assert owed is not None and owed.state is State.PUT and owed.file_store_id == "fs-owed"
    assert [e.relpath for e in ledger.in_state(State.PUT)] == ["owed.txt"]
    elsewhere = ledger.get("/elsewhere", "a.txt")
    assert elsewhere is not None and elsewhere.file_store_id == "fs-elsewhere"
    assert ledger.adopt_folder("/old", "/new") == 0
    assert ledger.adopt_folder("/new", "/new") == 0


def test_adopt_spellings_carries_rows_of_a_linked_folder_to_its_real_path(
    tmp_path: Path, real: Path, ledger: Ledger
) -> None:
    alias = str(tmp_path / "alias")
    report(ledger, alias, "a.txt", a_sig(tmp_path, "a"), "fs-a")  # as older versions keyed it
    config = load(tmp_path, toml_folders(f'path = "{alias}/"'))
    with structlog.testing.capture_logs() as logged:
        fs.adopt_spellings(ledger, config.folders)
    assert ledger.snapshot(alias) == {}
    entry = ledger.get(str(real), "a.txt")
    assert entry is not None and entry.state is State.REPORTED
    assert [e["event"] for e in logged] == ["folder.adopted"]
    assert logged[0]["rows"] == 1 and logged[0]["configured"] == alias


# --- watching the real folder ---------------------------------------------------------------


class FakeWatcher:
    def __init__(self) -> None:
        self.added: list[FolderConfig] = []
        self.removed: list[str] = []

    def add(self, folder: FolderConfig, *, poll: bool = False) -> str:
        self.added.append(folder)
        return "polling" if poll else "inotify"

    def remove(self, key: str) -> None:
        self.removed.append(key)


def test_a_linked_folder_is_watched_at_its_real_path_and_both_are_logged(
    tmp_path: Path, real: Path
) -> None:
    (folder,) = load(tmp_path, toml_folders(f'path = "{tmp_path}/alias"')).folders
    watcher = FakeWatcher()
    with structlog.testing.capture_logs() as logged:
        assert fs.FolderWatches(watcher).watch(folder)  # type: ignore[arg-type]
    assert [str(f.path) for f in watcher.added] == [str(real)]
    (line,) = logged
    assert line["event"] == "folder.watching"
    assert line["path"] == str(real) and line["configured"] == str(tmp_path / "alias")


def test_a_folder_that_appears_as_a_link_later_is_said_once_and_not_watched(
    tmp_path: Path, real: Path
) -> None:
    late = tmp_path / "late"
    (folder,) = load(tmp_path, toml_folders(f'path = "{late}"')).folders
    assert folder.key == str(late)
    watcher = FakeWatcher()
    watches = fs.FolderWatches(watcher)  # type: ignore[arg-type]
    assert not watches.watch(folder)
    late.symlink_to(real)
    with structlog.testing.capture_logs() as logged:
        assert watches.check([folder]) == []
        assert watches.check([folder]) == []
    assert [e["event"] for e in logged] == ["folder.relinked"]
    assert logged[0]["now"] == str(real) and "reload" in logged[0]["hint"]
    assert folder.key in watches.missing and watcher.added == []

    late.unlink()
    late.mkdir()  # the real folder after all: watched and scanned
    with structlog.testing.capture_logs() as logged:
        assert watches.check([folder]) == [folder]
    assert [e["event"] for e in logged] == ["folder.back", "folder.watching"]
    assert [f.path for f in watcher.added] == [late]


# --- naming a file on the command line ------------------------------------------------------


def test_locate_finds_a_file_through_either_spelling_and_prefers_the_inner_folder(
    tmp_path: Path, real: Path
) -> None:
    config = load(
        tmp_path,
        toml_folders(f'path = "{tmp_path}/alias"\nexclude = ["sub"]', f'path = "{real}/sub"'),
    )
    for name in (f"{real}/x.txt", f"{tmp_path}/alias/x.txt"):
        assert cli._locate(config, name) == (str(real), "x.txt")
    for name in (f"{real}/sub/y.txt", f"{tmp_path}/alias/sub/y.txt", f"{real}/sub/gone/z"):
        assert cli._locate(config, name) == (str(real / "sub"), name.split("sub/", 1)[1])
    (tmp_path / "alias").unlink()  # the link gone: the name as written still places it
    assert cli._locate(config, f"{tmp_path}/alias/x.txt") == (str(real), "x.txt")
    with pytest.raises(UserError, match="not inside any configured folder"):
        cli._locate(config, str(tmp_path / "elsewhere.txt"))
