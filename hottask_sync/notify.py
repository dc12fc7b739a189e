"""Talks to systemd through the ``sd_notify`` protocol, with the standard library only.

systemd passes ``NOTIFY_SOCKET`` (an ``AF_UNIX`` datagram socket: a filesystem path, or
``@name`` for an abstract socket) to a ``Type=notify`` service. Each message is one datagram
of ``KEY=VALUE`` lines: ``READY=1`` once started, ``STATUS=...`` for ``systemctl status``,
``WATCHDOG=1`` at least every ``WatchdogSec``, ``RELOADING=1`` and ``STOPPING=1``.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning ``False``. Sending
never raises and never logs: a lost notification must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

# A datagram send must never hang the daemon if systemd stops reading its socket.
_SEND_TIMEOUT_SECONDS = 2.0


def _one_line(text: str) -> str:
    """Returns text with every line break replaced by a space (a STATUS= value is one line)."""
    return " ".join(text.splitlines())


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Returns half of WATCHDOG_USEC in seconds, or None when no watchdog applies to us.

    None when WATCHDOG_USEC is unset, not a positive integer, or WATCHDOG_PID is set and is
    not this process (or not an integer): the watchdog is meant for another process then.
    """
    raw_usec = environ.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            return None
        if pid != os.getpid():
            return None
    return usec / 2 / 1e6


class Notifier:
    """One process's channel to systemd's notification socket.

    Thread-safe: the daemon's main loop and its watchdog thread may share one instance.
    """

    enabled: bool
    """True when ``NOTIFY_SOCKET`` is set (running under systemd with ``Type=notify``)."""

    watchdog_interval: float | None
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None for no watchdog."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID from environ (default os.environ).

        Opens nothing yet: the socket is created on the first send.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.enabled = bool(raw)
        self._address: bytes | None = None
        if raw:
            # "@name" is Linux's abstract namespace: the kernel name starts with a NUL byte.
            self._address = (
                b"\0" + os.fsencode(raw[1:]) if raw.startswith("@") else os.fsencode(raw)
            )
        self.watchdog_interval = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._closed = False
        self._lock = threading.Lock()

    def send(self, *fields: str) -> bool:
        """Sends the fields (``"KEY=VALUE"``) as one datagram ``"A=1\\nB=2"``.

        Returns True once the datagram was handed to the kernel; False when not enabled,
        after close(), with no fields, or on any OSError (no socket there, refused, timeout).
        Never raises, never logs. Keeps one socket open between calls.
        """
        if not self.enabled or self._address is None or not fields:
            return False
        data = "\n".join(fields).encode("utf-8", "backslashreplace")
        with self._lock:
            if self._closed:
                return False
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    sock.settimeout(_SEND_TIMEOUT_SECONDS)
                    self._sock = sock
                self._sock.sendto(data, self._address)
            except (OSError, ValueError):
                # ValueError: a path with an embedded NUL byte.
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tells systemd start-up (or a reload) is complete: ``READY=1``, plus ``STATUS=`` if given."""
        if status is None:
            return self.send("READY=1")
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """Sets the one-line status shown by ``systemctl status`` (line breaks become spaces)."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Pings the watchdog (``WATCHDOG=1``); send it every ``watchdog_interval`` seconds."""
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """Tells systemd a reload has begun; send ``ready()`` when the new configuration is live.

        Sends ``RELOADING=1`` with ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC in microseconds), which
        systemd uses to match the reload to its request.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Tells systemd the daemon is shutting down (``STOPPING=1``)."""
        return self.send("STOPPING=1")

    def close(self) -> None:
        """Closes the socket; later sends return False. Safe to call more than once."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
