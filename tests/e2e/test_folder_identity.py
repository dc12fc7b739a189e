"""The real daemon and CLI with folders spelled through links: nested folders are refused, a
folder configured through a link is watched (inotify, no rescans), and respelling a folder
in the config does not upload it again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hottask_sync.emulator import Emulator
from hottask_sync.files import FileSig
from hottask_sync.ledger import Ledger
from tests.conftest import DaemonProcess, reported_files, start_daemon, wait_for, write_config
from tests.e2e.support import cli
from tests.fakes import clean_env, sha256


@pytest.fixture
def procs(daemons: list[DaemonProcess]) -> Iterator[list[DaemonProcess]]:
    """``daemons``, plus each daemon's log printed at teardown (pytest shows it on failure)."""
    yield daemons
    for i, d in enumerate(daemons):
        print(f"--- daemon {i} log ---\n{d.log_text()}")


@pytest.fixture
def real(tmp_path: Path) -> Path:
    """The real inbox (with a subfolder ``sub``); ``tmp_path/alias`` is a link to it, as
    ``/srv/inbox -> /data/inbox`` would be."""
    folder = tmp_path / "data" / "inbox"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(folder)
    return folder


def launch(procs: list[DaemonProcess], config: Path) -> DaemonProcess:
    daemon = start_daemon(config)
    procs.append(daemon)
    return daemon


def test_check_refuses_nested_folders_naming_both(tmp_path: Path, real: Path) -> None:
    config = write_config(
        tmp_path / "c.toml",
        "http://127.0.0.1:9",
        [{"path": str(tmp_path / "alias")}, {"path": str(real / "sub")}],
    )
    env = clean_env() | {"HOTTASK_API_KEY": "k"}
    done = cli("check", "--config", str(config), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert f"{config}: folders[1].path: {real}/sub is inside folders[0].path" in line
    assert f"{tmp_path}/alias (resolves to {real})" in line
    assert "Traceback" not in done.stderr


def test_a_folder_configured_through_a_link_gets_inotify_events(
    tmp_path: Path, real: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    alias = tmp_path / "alias"
    config = write_config(
        tmp_path / "c.toml", emulator.base_url, [{"path": str(alias)}], sync={"rescan_seconds": 0}
    )
    daemon = launch(procs, config)
    # Dropped after the startup scan, with no rescan ever: only an inotify event finds them.
    (alias / "dropped.txt").write_bytes(b"through the link\n")
    (real / "sub" / "deep.txt").write_bytes(b"in a subfolder\n")
    wait_for(
        lambda: {"dropped.txt", "deep.txt"} <= set(reported_files(emulator)),
        timeout=15,
        what="files dropped into a linked folder reported",
    )
    tickets = {t.file_name: t for t in emulator.tickets().values()}
    assert tickets["dropped.txt"].sha256 == sha256(b"through the link\n")
    (watching,) = daemon.events("folder.watching")
    assert watching["path"] == str(real) and watching["configured"] == str(alias)
    assert daemon.stop() == 0


@pytest.mark.parametrize("first,then", [("alias", "real"), ("real", "alias/")])
def test_respelling_a_folder_uploads_nothing_again(
    tmp_path: Path,
    real: Path,
    emulator: Emulator,
    procs: list[DaemonProcess],
    first: str,
    then: str,
) -> None:
    spelled = {"alias": str(tmp_path / "alias"), "alias/": f"{tmp_path}/alias/", "real": str(real)}
    config = tmp_path / "c.toml"
    (real / "a.txt").write_bytes(b"uploaded once\n")
    write_config(config, emulator.base_url, [{"path": spelled[first]}])
    daemon = launch(procs, config)
    wait_for(lambda: "a.txt" in reported_files(emulator), what="a.txt reported")
    assert daemon.stop() == 0

    write_config(config, emulator.base_url, [{"path": spelled[then]}])
    assert_nothing_uploaded_again(launch(procs, config), emulator, real)
    for name in (real / "a.txt", tmp_path / "alias" / "a.txt"):
        done = cli("status", "--config", str(config), str(name))
        assert done.returncode == 0, f"status {name}: {done.stdout}{done.stderr}"


def test_rows_recorded_under_the_linked_spelling_are_carried_over(
    tmp_path: Path, real: Path, emulator: Emulator, procs: list[DaemonProcess]
) -> None:
    # A ledger written before keys were resolved: the folder's rows under the link's path.
    alias = str(tmp_path / "alias")
    (real / "a.txt").write_bytes(b"uploaded once\n")
    with Ledger.in_dir(tmp_path / "state") as ledger:
        sig = FileSig.from_stat(os.stat(real / "a.txt"))
        ledger.mark_ticketed(alias, "a.txt", sig, "fs-before")
        ledger.mark_put(alias, "a.txt", sha256(b"uploaded once\n"), file_store_id="fs-before")
        ledger.mark_reported(alias, "a.txt")
    config = write_config(tmp_path / "c.toml", emulator.base_url, [{"path": alias}])

    daemon = launch(procs, config)
    assert_nothing_uploaded_again(daemon, emulator, real, before={})
    (adopted,) = daemon.events("folder.adopted")
    assert (adopted["folder"], adopted["configured"], adopted["rows"]) == (str(real), alias, 1)


def assert_nothing_uploaded_again(
    daemon: DaemonProcess,
    emulator: Emulator,
    real: Path,
    before: dict[str, list[str]] | None = None,
) -> None:
    """The startup scan found nothing to do (daemon.ready counts it, deterministically);
    a file dropped afterwards is the only upload; a.txt keeps the reports it had."""
    had = reported_files(emulator) if before is None else before
    (ready,) = daemon.events("daemon.ready")
    assert (ready["waiting"], ready["queued"]) == (0, 0), ready
    (real / "marker.txt").write_bytes(b"the one new file\n")
    wait_for(lambda: "marker.txt" in reported_files(emulator), what="marker.txt reported")
    assert daemon.stop() == 0
    assert [e["path"] for e in daemon.events("upload.started")] == ["marker.txt"]
    assert reported_files(emulator).get("a.txt", []) == had.get("a.txt", [])
