"""Unit tests for hottask_sync.backoff: retry maths, the auth circuit, the throttle."""

from __future__ import annotations

import random

import pytest

from hottask_sync.backoff import AuthCircuit, Throttle, retry_delay
from tests.fakes import FakeClock

# --- retry_delay --------------------------------------------------------------------------


@pytest.mark.parametrize("failures", range(1, 13))
def test_retry_delay_full_jitter_bounds(failures: int) -> None:
    rng = random.Random(failures)
    ceiling = min(300.0, 2.0 ** (failures - 1))
    delays = [retry_delay(failures, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter: spread over the whole range, not pinned to either end.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_retry_delay_ceiling_values() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    top = Top()
    assert [retry_delay(n, top) for n in range(1, 12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0,
    ]  # fmt: skip
    assert retry_delay(1000, top) == 300.0
    assert retry_delay(0, top) == 1.0  # treated as the first failure


def test_retry_delay_is_reproducible_with_a_seed() -> None:
    a = [retry_delay(n, random.Random(7)) for n in range(1, 8)]
    b = [retry_delay(n, random.Random(7)) for n in range(1, 8)]
    assert a == b


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(1)
    assert retry_delay(1, rng, retry_after=42.0) == 42.0
    for _ in range(200):
        d = retry_delay(12, rng, retry_after=10.0)
        assert 10.0 <= d <= 300.0
    # A short Retry-After does not shorten the backoff below the jittered value.
    assert any(retry_delay(12, rng, retry_after=1.0) > 1.0 for _ in range(20))


def test_retry_after_is_capped_at_an_hour() -> None:
    rng = random.Random(3)
    assert retry_delay(1, rng, retry_after=86400.0) == 3600.0
    assert retry_delay(12, rng, retry_after=3601.0) == 3600.0
    assert retry_delay(1, rng, retry_after=3599.0) == 3599.0


# --- AuthCircuit -----------------------------------------------------------------------------


def test_closed_circuit_allows_everything() -> None:
    circuit = AuthCircuit(FakeClock())
    assert all(circuit.allow() for _ in range(100))
    assert circuit.is_open is False
    assert circuit.seconds_until_probe() is None
    assert circuit.succeed() is False  # was not open


def test_trip_opens_and_waits_30_seconds_then_one_probe() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    assert circuit.trip() is True
    assert circuit.is_open
    assert circuit.seconds_until_probe() == 30.0
    assert not circuit.allow()
    clock.advance(29.9)
    assert not circuit.allow()
    assert circuit.seconds_until_probe() == pytest.approx(0.1)
    clock.advance(0.1)
    assert circuit.seconds_until_probe() == 0.0
    assert circuit.allow() is True  # the probe
    assert [circuit.allow() for _ in range(10)] == [False] * 10
    clock.advance(1000)
    assert not circuit.allow()  # still waiting for the probe's outcome


def test_probe_failure_doubles_up_to_ten_minutes() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    circuit.trip()
    delays = []
    for _ in range(8):
        clock.advance(circuit.seconds_until_probe() or 0.0)
        assert circuit.allow()
        assert circuit.trip() is False  # the probe failed: already open
        delays.append(circuit.seconds_until_probe())
    assert delays == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0, 600.0, 600.0]
    clock.advance(599.0)
    assert not circuit.allow()


def test_probe_success_closes() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    circuit.trip()
    clock.advance(30)
    assert circuit.allow()
    assert circuit.succeed() is True
    assert not circuit.is_open
    assert circuit.seconds_until_probe() is None
    assert all(circuit.allow() for _ in range(5))
    # A new failure starts again at 30 s, not where the last outage ended.
    assert circuit.trip() is True
    assert circuit.seconds_until_probe() == 30.0


def test_failures_of_calls_already_in_flight_do_not_double() -> None:
    # Four workers were mid-call when the key was revoked: one outage, not four.
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    assert [circuit.trip() for _ in range(4)] == [True, False, False, False]
    assert circuit.seconds_until_probe() == 30.0


def test_probe_now() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    circuit.probe_now()  # closed: nothing to do
    assert not circuit.is_open
    circuit.trip()
    clock.advance(5)
    assert not circuit.allow()
    circuit.probe_now()
    assert circuit.seconds_until_probe() == 0.0
    assert circuit.allow() is True
    assert circuit.allow() is False


def test_probe_now_while_a_probe_is_in_flight_lets_another_through() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock)
    circuit.trip()
    clock.advance(30)
    assert circuit.allow()
    assert not circuit.allow()
    circuit.probe_now()  # the key file was reloaded
    assert circuit.allow()


def test_custom_first_and_cap() -> None:
    clock = FakeClock()
    circuit = AuthCircuit(clock, first=5.0, cap=12.0)
    circuit.trip()
    assert circuit.seconds_until_probe() == 5.0
    clock.advance(5)
    circuit.allow()
    circuit.trip()
    assert circuit.seconds_until_probe() == 10.0
    clock.advance(10)
    circuit.allow()
    circuit.trip()
    assert circuit.seconds_until_probe() == 12.0


# --- Throttle ---------------------------------------------------------------------------------


def test_throttle_ten_megabytes_at_one_megabyte_per_second() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=1_000_000, clock=clock)
    total = 0.0
    for _ in range(100):
        delay = throttle.reserve(100_000)
        assert delay >= 0.0
        total += delay
        clock.advance(delay)  # the caller waits as told
    assert total == pytest.approx(10.0, rel=0.10)


def test_throttle_reservations_without_waiting_queue_up() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=1_000_000, clock=clock)
    delays = [throttle.reserve(1_000_000) for _ in range(10)]
    assert delays == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])


def test_throttle_idle_time_buys_only_a_short_burst() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=1_000_000, clock=clock, burst_seconds=0.25)
    clock.advance(3600)
    assert throttle.reserve(250_000) == 0.0
    assert throttle.reserve(1_000_000) == pytest.approx(1.0)


def test_throttle_rate_zero_never_waits() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=0, clock=clock)
    assert all(throttle.reserve(10**12) == 0.0 for _ in range(100))
    waits: list[float] = []
    throttle.consume(10**12, waits.append)
    assert waits == []


def test_throttle_consume_waits_with_the_injected_wait() -> None:
    clock = FakeClock()
    throttle = Throttle(rate=1000, clock=clock)
    waits: list[float] = []
    throttle.consume(500, waits.append)
    throttle.consume(500, waits.append)
    assert waits == pytest.approx([0.5, 1.0])
