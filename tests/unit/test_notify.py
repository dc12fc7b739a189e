"""Notifier: exact sd_notify datagrams on a real AF_UNIX socket, and silent no-ops otherwise."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hottask_sync.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET value."""
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fsencode(path))
    sock.settimeout(2.0)  # an upper bound only: datagrams are queued before sendto returns
    yield sock, str(path)
    sock.close()


def recv(sock: socket.socket) -> bytes:
    return sock.recv(65536)


def assert_nothing_queued(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(65536)


def test_ready_status_watchdog_stopping(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready() is True
    assert recv(sock) == b"READY=1"
    assert n.ready("watching 3 folders") is True
    assert recv(sock) == b"READY=1\nSTATUS=watching 3 folders"
    assert n.status("uploading\na.pdf\r\nnow") is True
    assert recv(sock) == b"STATUS=uploading a.pdf now"
    assert n.watchdog() is True
    assert recv(sock) == b"WATCHDOG=1"
    assert n.stopping() is True
    assert recv(sock) == b"STOPPING=1"
    assert n.send("A=1", "B=2") is True
    assert recv(sock) == b"A=1\nB=2"
    assert n.status("déjà vu") is True
    assert recv(sock) == "STATUS=déjà vu".encode()
    n.close()


def test_reloading_sends_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    n.close()


def test_keeps_one_socket_open(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    n.watchdog()
    first = n._sock
    n.watchdog()
    assert n._sock is first is not None
    assert recv(sock) == recv(sock) == b"WATCHDOG=1"
    n.close()
    assert n._sock is None


def test_abstract_socket() -> None:
    name = f"hottask-sync-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready("up") is True
        assert recv(sock) == b"READY=1\nSTATUS=up"
        n.close()
    finally:
        sock.close()


def test_after_close_sends_nothing(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    n.close()
    n.close()
    assert n.watchdog() is False
    assert_nothing_queued(sock)


def test_no_fields_sends_nothing(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.send() is False
    assert_nothing_queued(sock)
    n.close()


def test_not_enabled_everything_is_a_silent_no_op() -> None:
    n = Notifier({})
    assert n.enabled is False
    assert n.watchdog_interval is None
    assert n.send("A=1") is False
    assert n.ready() is False
    assert n.ready("x") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.reloading() is False
    assert n.stopping() is False
    n.close()
    assert Notifier({"NOTIFY_SOCKET": ""}).enabled is False


def test_missing_socket_path_returns_false(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-here.sock")})
    assert n.enabled is True
    assert n.ready() is False
    assert n.watchdog() is False
    n.close()


def test_socket_gone_after_first_send_returns_false(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.watchdog() is True
    sock.close()
    os.unlink(path)
    assert n.watchdog() is False
    n.close()


def test_unusable_addresses_return_false() -> None:
    assert Notifier({"NOTIFY_SOCKET": "/bad\0path"}).ready() is False
    assert Notifier({"NOTIFY_SOCKET": "/" + "x" * 200}).ready() is False  # longer than sun_path
    assert Notifier({"NOTIFY_SOCKET": f"@nobody-{uuid.uuid4().hex}"}).ready() is False


def test_defaults_to_os_environ(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.watchdog_interval == 15.0
    assert n.ready() is True
    assert recv(sock) == b"READY=1"
    n.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": ""}, 1.0),
        ({"WATCHDOG_USEC": "abc"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert n.watchdog_interval == expected
