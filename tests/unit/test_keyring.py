"""Reading the key again off the main loop: answers come back as events, a hung read is
given up after its timeout, and anything but a regular file is refused without blocking."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from hottask_sync.config import ApiConfig, ApiKey, resolve_api_key
from hottask_sync.errors import KeyNotFoundError
from hottask_sync.keyring import KeyReader
from tests.fakes import FakeClock

API = ApiConfig()


def test_a_key_read_comes_back_as_an_event() -> None:
    woken = threading.Event()
    reader = KeyReader(woken.set, read=lambda api, env: ApiKey("k-2", "test"))
    assert reader.poll() is None  # idle
    reader.start(API, {})
    assert woken.wait(10)
    answer = reader.poll()
    assert isinstance(answer, ApiKey) and answer.value == "k-2"
    assert reader.poll() is None and not reader.busy


def test_a_hung_read_is_given_up_after_the_timeout_and_its_late_answer_dropped() -> None:
    clock = FakeClock()
    releases = [threading.Event(), threading.Event()]
    keys = iter(["late", "fresh"])
    woken = threading.Semaphore(0)

    def read(api: ApiConfig, env: Mapping[str, str]) -> ApiKey:
        value = next(keys)
        releases[0 if value == "late" else 1].wait(10)
        return ApiKey(value, "test")

    reader = KeyReader(woken.release, clock, read=read, timeout=5.0)
    reader.start(API, {})
    reader.start(API, {})  # one read at a time
    assert reader.busy and reader.deadline() == clock() + 5.0
    clock.advance(4.9)
    assert reader.poll() is None  # the main loop never waited on it
    clock.advance(0.1)
    answer = reader.poll()
    assert isinstance(answer, KeyNotFoundError) and "hung mount" in str(answer)
    assert not reader.busy
    reader.start(API, {})  # the next read (a later probe) while the hung one still hangs
    releases[0].set()  # the hung read answers now, late
    assert woken.acquire(timeout=10)
    assert reader.poll() is None  # its late answer is not taken for the new read's
    releases[1].set()
    assert woken.acquire(timeout=10)
    fresh = reader.poll()
    assert isinstance(fresh, ApiKey) and fresh.value == "fresh"


def test_a_fifo_as_the_key_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "api-key"
    os.mkfifo(fifo)
    with pytest.raises(KeyNotFoundError, match="not a regular file"):
        resolve_api_key(ApiConfig(api_key_file=fifo), {})
