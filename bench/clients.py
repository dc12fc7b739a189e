"""The reference clients of the bench rows, each run as its own process.

``python bench/clients.py SPEC.json`` reads a JSON spec and uploads its files to the
emulator with the three calls, then prints one JSON line of what it did. The bench runs
them as subprocesses so that their wall and CPU time (``os.wait4`` rusage) are measured the
same way as the daemon's, and never mixed with the emulator's (which runs in the bench).

Modes:

* ``naive``: what a user writes from the API page: its ``requests`` snippets in a loop, one
  file after the other (``requests.post`` / ``requests.put`` without a session: every call
  on a NEW connection), the file opened from disk for its PUT. ``requests`` is a bench-only
  requirement (``bench/requirements.txt``); with ``"naive_impl": "http.client"`` the same
  loop runs on stdlib ``http.client`` connections opened and closed per call (what
  ``requests`` does on the wire, with less Python per call: a faster "naive" script).
* ``httpx``: the floor of an httpx-based client: ``threads`` threads sharing ONE
  ``httpx.Client`` (keep-alive pool), each file read and sent with the three calls, nothing
  else (no ledger, no logging, no retries).
* ``lean``: the leanest client: stdlib ``http.client`` keep-alive connections (one per
  thread), every file's bytes read into memory first, no ledger, no logging, minimal
  checks. Its speed is the ceiling of what the emulator can serve on this machine.

Spec keys: mode, base_url, api_key, folder, files (relative paths), threads (httpx and lean),
naive_impl ("requests", the default, or "http.client"). Each mode imports only what it uses,
so start-up costs what a user's script of that kind costs.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from collections.abc import Callable
from urllib.parse import urlsplit

# Not ``typing.TYPE_CHECKING``: importing typing would add ~2 ms to every client's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PRE = "/chat/User/GetPreUploadUrl"
REPORT = "/chat/User/ReportUploadSuccess"


class UploadFailed(Exception):
    pass


def _split(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, target


def _once(
    host: str, port: int, method: str, target: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    """One request on a brand-new connection, closed afterwards."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def naive(spec: dict[str, Any]) -> int:
    if spec.get("naive_impl", "requests") == "requests":
        return naive_requests(spec)
    host, port, _ = _split(spec["base_url"])
    api = {"Authorization": spec["api_key"], "Content-Type": "application/json"}
    folder = spec["folder"]
    done = 0
    for rel in spec["files"]:
        with open(os.path.join(folder, rel), "rb") as fh:
            data = fh.read()
        name = os.path.basename(rel)
        status, body = _once(host, port, "POST", PRE, json.dumps({"fileName": name}).encode(), api)
        answer = json.loads(body)
        if status != 200 or not answer.get("Success"):
            raise UploadFailed(f"GetPreUploadUrl {status}: {body[:200]!r}")
        file_store_id = answer["Data"]["FileStoreId"]
        put_host, put_port, target = _split(answer["Data"]["PreUploadUrl"])
        status, body = _once(put_host, put_port, "PUT", target, data, {})
        if status != 200:
            raise UploadFailed(f"PUT {status}: {body[:200]!r}")
        payload = json.dumps({"fileStoreID": file_store_id}).encode()
        status, body = _once(host, port, "POST", REPORT, payload, api)
        if status != 200 or json.loads(body).get("Data") is not True:
            raise UploadFailed(f"ReportUploadSuccess {status}: {body[:200]!r}")
        done += 1
    return done


def naive_requests(spec: dict[str, Any]) -> int:
    """The API page's ``requests`` snippets in a loop, plus the PUT of the file."""
    import requests

    pre_url, report_url = spec["base_url"] + PRE, spec["base_url"] + REPORT
    headers = {"Authorization": spec["api_key"], "Content-Type": "application/json"}
    done = 0
    for rel in spec["files"]:
        data = {"fileName": os.path.basename(rel)}
        response = requests.post(pre_url, headers=headers, data=json.dumps(data))
        answer = response.json()
        if not answer.get("Success"):
            raise UploadFailed(f"GetPreUploadUrl {response.status_code}: {answer}")
        with open(os.path.join(spec["folder"], rel), "rb") as fh:
            put = requests.put(answer["Data"]["PreUploadUrl"], data=fh)
        if put.status_code != 200:
            raise UploadFailed(f"PUT {put.status_code}: {put.text[:200]}")
        data = {"fileStoreID": answer["Data"]["FileStoreId"]}
        response = requests.post(report_url, headers=headers, data=json.dumps(data))
        if response.json().get("Data") is not True:
            raise UploadFailed(f"ReportUploadSuccess {response.status_code}: {response.text}")
        done += 1
    return done


def _in_threads(threads: int, n_items: int, work: Callable[[Callable[[], int | None]], int]) -> int:
    """Runs ``work(next_index)`` in ``threads`` threads; returns the sum of their counts.

    ``next_index()`` hands out 0, 1, 2, ... across the threads, None once ``n_items`` are
    taken. The first exception of any thread is raised after all of them have stopped.
    """
    lock = threading.Lock()
    position = [0]
    done = [0]
    errors: list[BaseException] = []

    def next_index() -> int | None:
        with lock:
            i = position[0]
            position[0] += 1
        return i if i < n_items else None

    def run() -> None:
        try:
            n = work(next_index)
        except BaseException as exc:
            errors.append(exc)
            return
        with lock:
            done[0] += n

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return done[0]


def lean(spec: dict[str, Any]) -> int:
    host, port, _ = _split(spec["base_url"])
    api = {"Authorization": spec["api_key"], "Content-Type": "application/json"}
    folder = spec["folder"]
    items = []
    for rel in spec["files"]:
        with open(os.path.join(folder, rel), "rb") as fh:
            items.append((os.path.basename(rel), fh.read()))

    def worker(next_index: Callable[[], int | None]) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        n = 0
        try:
            while (i := next_index()) is not None:
                name, data = items[i]
                conn.request("POST", PRE, json.dumps({"fileName": name}).encode(), api)
                answer = json.loads(conn.getresponse().read())
                if not answer["Success"]:
                    raise UploadFailed(f"GetPreUploadUrl: {answer}")
                url = answer["Data"]["PreUploadUrl"]
                conn.request("PUT", url[url.index("/", 8) :], data)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise UploadFailed(f"PUT {response.status}")
                payload = json.dumps({"fileStoreID": answer["Data"]["FileStoreId"]}).encode()
                conn.request("POST", REPORT, payload, api)
                if json.loads(conn.getresponse().read())["Data"] is not True:
                    raise UploadFailed("ReportUploadSuccess")
                n += 1
        finally:
            conn.close()
        return n

    return _in_threads(spec.get("threads", 1), len(items), worker)


def bare_httpx(spec: dict[str, Any]) -> int:
    """``threads`` threads, one shared httpx.Client, the three calls per file, nothing else."""
    import httpx

    pre_url, report_url = spec["base_url"] + PRE, spec["base_url"] + REPORT
    headers = {"Authorization": spec["api_key"], "Content-Type": "application/json"}
    folder, files = spec["folder"], spec["files"]
    with httpx.Client(timeout=60) as client:

        def worker(next_index: Callable[[], int | None]) -> int:
            n = 0
            while (i := next_index()) is not None:
                rel = files[i]
                with open(os.path.join(folder, rel), "rb") as fh:
                    data = fh.read()
                body = json.dumps({"fileName": os.path.basename(rel)}).encode()
                answer = client.post(pre_url, headers=headers, content=body).json()
                if not answer["Success"]:
                    raise UploadFailed(f"GetPreUploadUrl: {answer}")
                put = client.put(answer["Data"]["PreUploadUrl"], content=data)
                if put.status_code != 200:
                    raise UploadFailed(f"PUT {put.status_code}")
                body = json.dumps({"fileStoreID": answer["Data"]["FileStoreId"]}).encode()
                if (
                    client.post(report_url, headers=headers, content=body).json()["Data"]
                    is not True
                ):
                    raise UploadFailed("ReportUploadSuccess")
                n += 1
            return n

        return _in_threads(spec.get("threads", 8), len(files), worker)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    mode = spec["mode"]
    uploaded = {"naive": naive, "lean": lean, "httpx": bare_httpx}[mode](spec)
    print(json.dumps({"mode": mode, "uploaded": uploaded}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
