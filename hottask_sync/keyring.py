"""Reading the API key again (before an auth probe, at a reload) without the main loop
waiting on it: the read runs on a short-lived thread, its answer comes back as an event,
and a read that hangs (a key file on a dead mount) is given up after a timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from . import logs
from .config import ApiConfig, ApiKey, resolve_api_key
from .errors import KeyNotFoundError

log = logs.get_logger("hottask_sync.daemon")

#: A key read taking longer than this is given up (the running key is kept).
READ_TIMEOUT_SECONDS = 5.0


class KeyReader:
    """One read at a time; :meth:`poll` says how it ended."""

    def __init__(
        self,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[ApiConfig, Mapping[str, str]], ApiKey] = resolve_api_key,
        timeout: float = READ_TIMEOUT_SECONDS,
    ) -> None:
        self._wake = wake
        self._clock = clock
        self._read = read
        self._timeout = timeout
        self._deadline: float | None = None
        self._answer: ApiKey | KeyNotFoundError | None = None
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def busy(self) -> bool:
        return self._deadline is not None

    def deadline(self) -> float | None:
        """When the running read is given up (for the main loop's wake-up), or None."""
        return self._deadline

    def start(self, api: ApiConfig, environ: Mapping[str, str]) -> None:
        """Starts reading the key (nothing if a read is already under way)."""
        if self._deadline is not None:
            return
        self._deadline = self._clock() + self._timeout
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._answer = None

        def work() -> None:
            answer: ApiKey | KeyNotFoundError
            try:
                answer = self._read(api, environ)
            except KeyNotFoundError as exc:
                answer = exc
            with self._lock:
                if generation == self._generation:  # not given up meanwhile
                    self._answer = answer
            self._wake()

        threading.Thread(target=work, name="key-reader", daemon=True).start()

    def poll(self) -> ApiKey | KeyNotFoundError | None:
        """Returns the key read, or why not (a timeout included), once; None while busy or
        idle."""
        if self._deadline is None:
            return None
        with self._lock:
            answer, self._answer = self._answer, None
            if answer is None and self._clock() >= self._deadline:
                self._generation += 1  # a late answer of the hung read is dropped
                answer = KeyNotFoundError(
                    f"reading the API key took over {self._timeout:g} s (a hung mount?); "
                    "keeping the running key"
                )
        if answer is not None:
            self._deadline = None
        return answer

    def take(self, current: ApiKey) -> ApiKey | None:
        """Returns the key a read that ended found, when it differs from ``current`` (it is
        redacted from the logs from now on); logs a read that failed (the running key is
        kept). None otherwise."""
        answer = self.poll()
        if isinstance(answer, KeyNotFoundError):
            log.error("auth.key_unreadable", error=str(answer), hint="keeping the running key")
            return None
        if answer is None or answer.value == current.value:
            return None
        logs.set_secrets([answer.value, current.value])
        log.info("auth.key_reloaded", key_source=answer.source)
        return answer
