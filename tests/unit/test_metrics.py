"""Metrics: values move, the registry is private, and /metrics is served over real HTTP."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hottask_sync.errors import UserError
from hottask_sync.metrics import DURATION_BUCKETS, FAILURE_CLASSES, Metrics, MetricsServer


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parses an exposition into {(sample name, sorted labels): value}."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m.render())[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def server() -> Iterator[tuple[Metrics, MetricsServer]]:
    m = Metrics()
    srv = m.serve("127.0.0.1", 0)
    yield m, srv
    srv.close()


def test_all_series_exist_at_zero() -> None:
    m = Metrics()
    s = samples(m.render())
    for name in (
        "hottask_sync_uploads_total",
        "hottask_sync_uploaded_bytes_total",
        "hottask_sync_sent_bytes_total",
        "hottask_sync_upload_duration_seconds_count",
        "hottask_sync_last_success_timestamp_seconds",
        "hottask_sync_queue_depth",
        "hottask_sync_auth_blocked",
    ):
        assert s[(name, ())] == 0.0, name
    for error_class in FAILURE_CLASSES:
        assert s[("hottask_sync_upload_failures_total", (("class", error_class),))] == 0.0
    for state in ("uploaded", "pending", "failed"):
        assert s[("hottask_sync_files", (("state", state),))] == 0.0


def test_upload_succeeded() -> None:
    m = Metrics()
    before = time.time()
    m.upload_succeeded(1000, 0.02)
    m.upload_succeeded(500, 90.0)
    after = time.time()
    assert value(m, "hottask_sync_uploads_total") == 2
    assert value(m, "hottask_sync_uploaded_bytes_total") == 1500
    assert value(m, "hottask_sync_upload_duration_seconds_count") == 2
    assert value(m, "hottask_sync_upload_duration_seconds_sum") == pytest.approx(90.02)
    assert value(m, "hottask_sync_upload_duration_seconds_bucket", le="0.01") == 0
    assert value(m, "hottask_sync_upload_duration_seconds_bucket", le="0.025") == 1
    assert value(m, "hottask_sync_upload_duration_seconds_bucket", le="60.0") == 1
    assert value(m, "hottask_sync_upload_duration_seconds_bucket", le="120.0") == 2
    assert before <= value(m, "hottask_sync_last_success_timestamp_seconds") <= after


def test_duration_buckets_span_10ms_to_1h() -> None:
    assert DURATION_BUCKETS[0] == 0.01
    assert DURATION_BUCKETS[-1] == 3600.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_upload_failed_by_class() -> None:
    m = Metrics()
    m.upload_failed("transient")
    m.upload_failed("transient")
    m.upload_failed("auth")
    m.upload_failed("changed")
    assert value(m, "hottask_sync_upload_failures_total", **{"class": "transient"}) == 2
    assert value(m, "hottask_sync_upload_failures_total", **{"class": "auth"}) == 1
    assert value(m, "hottask_sync_upload_failures_total", **{"class": "changed"}) == 1
    assert value(m, "hottask_sync_upload_failures_total", **{"class": "permanent"}) == 0
    with pytest.raises(ValueError, match="unknown upload failure class"):
        m.upload_failed("other")


def test_gauges_and_sent_bytes() -> None:
    m = Metrics()
    m.bytes_sent(100)
    m.bytes_sent(100)  # a retry counts again
    m.set_queue_depth(7)
    m.set_queue_depth(3)
    m.set_counts(uploaded=10, pending=2, failed=1)
    m.set_auth_blocked(True)
    assert value(m, "hottask_sync_sent_bytes_total") == 200
    assert value(m, "hottask_sync_queue_depth") == 3
    assert value(m, "hottask_sync_files", state="uploaded") == 10
    assert value(m, "hottask_sync_files", state="pending") == 2
    assert value(m, "hottask_sync_files", state="failed") == 1
    assert value(m, "hottask_sync_auth_blocked") == 1
    m.set_auth_blocked(False)
    assert value(m, "hottask_sync_auth_blocked") == 0


def test_instances_are_independent_and_avoid_the_global_registry() -> None:
    a, b = Metrics(), Metrics()
    a.set_queue_depth(5)
    assert value(b, "hottask_sync_queue_depth") == 0
    assert a.registry is not REGISTRY
    assert REGISTRY.get_sample_value("hottask_sync_queue_depth") is None


def test_serve_scrape_over_loopback(server: tuple[Metrics, MetricsServer]) -> None:
    m, srv = server
    assert srv.port > 0
    m.upload_succeeded(42, 1.5)
    m.upload_failed("expired")
    m.set_queue_depth(4)
    r = httpx.get(f"http://127.0.0.1:{srv.port}/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    s = samples(r.text)
    assert s[("hottask_sync_uploads_total", ())] == 1
    assert s[("hottask_sync_uploaded_bytes_total", ())] == 42
    assert s[("hottask_sync_upload_failures_total", (("class", "expired"),))] == 1
    assert s[("hottask_sync_queue_depth", ())] == 4
    # Values are rendered at scrape time.
    m.set_queue_depth(9)
    r = httpx.get(f"http://127.0.0.1:{srv.port}/metrics?x=1", timeout=5)
    assert samples(r.text)[("hottask_sync_queue_depth", ())] == 9


def test_other_paths_are_404(server: tuple[Metrics, MetricsServer]) -> None:
    _, srv = server
    with httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=5) as client:
        assert client.get("/").status_code == 404
        assert client.get("/metrics/extra").status_code == 404
        assert client.get("/favicon.ico").status_code == 404
        assert client.head("/metrics").status_code == 200
        assert client.post("/metrics").status_code == 501


def test_close_frees_the_port() -> None:
    m = Metrics()
    srv = m.serve("127.0.0.1", 0)
    port = srv.port
    srv.close()
    srv.close()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    again = m.serve("127.0.0.1", port)  # and it can be bound again at once
    assert again.port == port
    again.close()


def test_address_in_use_is_a_user_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as info:
            Metrics().serve("127.0.0.1", port)
    assert str(info.value) == f"metrics.listen 127.0.0.1:{port}: address already in use"
    assert isinstance(info.value.__cause__, OSError)


def test_address_not_on_this_machine_is_a_user_error() -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a local interface.
    with pytest.raises(UserError, match=r"^metrics\.listen 192\.0\.2\.1:0: ") as info:
        Metrics().serve("192.0.2.1", 0)
    assert isinstance(info.value.__cause__, OSError)


def test_serve_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python build")
    m = Metrics()
    try:
        srv = m.serve("::1", 0)
    except UserError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        r = httpx.get(f"http://[::1]:{srv.port}/metrics", timeout=5)
        assert r.status_code == 200
        assert b"hottask_sync_queue_depth" in r.content
    finally:
        srv.close()
