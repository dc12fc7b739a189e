"""Retry maths, the auth circuit and the bandwidth throttle: pure, driven by a clock.

Retries are not sleeps inside a worker: a failed file is handed back to the daemon with the
time it may run again, so workers stay free for other files and a shutdown never waits
for a backoff to end. (This is why the retry library stamina, which sleeps in the
calling thread, is not used.)
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0
#: A Retry-After longer than this is taken as this: a misconfigured server must not park a
#: file for days.
RETRY_AFTER_CAP_SECONDS = 3600.0
AUTH_FIRST_PROBE_SECONDS = 30.0
AUTH_PROBE_CAP_SECONDS = 600.0


def retry_delay(
    failures: int,
    rng: random.Random,
    *,
    retry_after: float | None = None,
    base: float = RETRY_BASE_SECONDS,
    cap: float = RETRY_CAP_SECONDS,
) -> float:
    """Given the number of consecutive failures so far (>= 1), returns seconds to wait.

    Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(failures-1))],
    and never less than the server's Retry-After (itself capped at an hour).
    """
    ceiling = min(cap, base * 2.0 ** min(max(failures, 1) - 1, 32))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


class AuthCircuit:
    """One circuit for the whole daemon: after an auth failure, uploads pause; probes grow.

    Closed: everything may call. Open: nothing may call until ``probe_at``; then exactly
    one caller is let through as the probe. Its success closes the circuit; its failure
    opens it again with the delay doubled (30 s up to 10 min).
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        first: float = AUTH_FIRST_PROBE_SECONDS,
        cap: float = AUTH_PROBE_CAP_SECONDS,
    ) -> None:
        self._clock = clock
        self._first = first
        self._cap = cap
        self._lock = threading.Lock()
        self.is_open = False
        self.probe_at = 0.0
        self._delay = 0.0
        self._probing = False

    def allow(self) -> bool:
        """Returns True when the caller may make an API call now (it may be the probe)."""
        with self._lock:
            if not self.is_open:
                return True
            if self._probing or self._clock() < self.probe_at:
                return False
            self._probing = True
            return True

    def trip(self) -> bool:
        """Records an auth failure; returns True when this opened a closed circuit."""
        with self._lock:
            if self.is_open and not self._probing:
                return False  # a call started before the circuit opened, not the probe
            opened = not self.is_open
            self._delay = self._first if opened else min(self._cap, self._delay * 2)
            self.is_open = True
            self._probing = False
            self.probe_at = self._clock() + self._delay
            return opened

    def succeed(self) -> bool:
        """Records a successful call; returns True when this closed an open circuit."""
        with self._lock:
            was_open = self.is_open
            self.is_open = False
            self._probing = False
            self._delay = 0.0
            return was_open

    def inconclusive(self) -> None:
        """Records that a call failed without saying anything about the key (a 5xx, a lost
        answer, a business error): if it was the probe, another probe is let through after
        the current delay (otherwise the circuit would wait for a probe that never ends)."""
        with self._lock:
            if self.is_open and self._probing:
                self._probing = False
                self.probe_at = self._clock() + self._delay

    def probe_now(self) -> None:
        """Lets the next caller probe at once (the key was reloaded)."""
        with self._lock:
            if self.is_open:
                self.probe_at = self._clock()
                self._probing = False

    def seconds_until_probe(self) -> float | None:
        """Returns seconds until a probe is allowed, or None when closed."""
        with self._lock:
            return max(0.0, self.probe_at - self._clock()) if self.is_open else None


@dataclass
class Throttle:
    """A token bucket shared by all uploads: at most ``rate`` bytes per second (0 = none).

    ``reserve`` is pure maths; ``consume`` waits using the injected ``wait`` (an
    Event.wait, so a shutdown interrupts it).
    """

    rate: int
    clock: Callable[[], float]
    burst_seconds: float = 0.25

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._available = 0.0
        self._last = self.clock()

    def reserve(self, n: int) -> float:
        """Takes ``n`` bytes from the bucket; returns seconds the caller must wait first."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            burst = self.rate * self.burst_seconds
            self._available = min(burst, self._available + (now - self._last) * self.rate)
            self._last = now
            self._available -= n
            return 0.0 if self._available >= 0 else -self._available / self.rate

    def consume(self, n: int, wait: Callable[[float], object]) -> None:
        """Blocks until ``n`` more bytes may be sent."""
        delay = self.reserve(n)
        if delay > 0:
            wait(delay)
