"""Signals as flags: SIGTERM/SIGINT ask to stop, SIGHUP to reload; each wakes the main loop."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class Signals:
    """Installs the handlers; the main loop reads and clears the flags.

    A handler runs on the main thread between two bytecodes, possibly while that thread
    holds the wake-up event's internal lock (inside wait() or clear()): setting the event
    there deadlocks. So a handler only sets its flag and writes a byte to a pipe; a helper
    thread turns the byte into the wake-up.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self.stop_requested = False
        self.reload_requested = False
        self._old: dict[int, Any] = {}
        self._wfd: int | None = None

    def install(self) -> None:
        rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(rfd, True)
        self._wfd = wfd
        threading.Thread(target=self._waker, args=(rfd,), name="signal-waker", daemon=True).start()
        for sig, handler in (
            (signal.SIGTERM, self._stop),
            (signal.SIGINT, self._stop),
            (signal.SIGHUP, self._reload),
        ):
            self._old[sig] = signal.signal(sig, handler)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
        if self._wfd is not None:
            wfd, self._wfd = self._wfd, None
            os.close(wfd)  # the waker thread reads EOF, closes its end and ends

    def _waker(self, rfd: int) -> None:
        try:
            while os.read(rfd, 64):
                self._wake()
        except OSError:
            pass
        finally:
            os.close(rfd)

    def _poke(self) -> None:
        if self._wfd is not None:
            with contextlib.suppress(OSError):
                os.write(self._wfd, b"!")

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_requested = True
        self._poke()

    def _reload(self, signum: int, _frame: FrameType | None) -> None:
        self.reload_requested = True
        self._poke()
