"""The two reference clients of the throughput rows, each run as its own process.

``python bench/clients.py SPEC.json`` reads a JSON spec and uploads its files to the
emulator with the three calls, then prints one JSON line of what it did. The bench runs
them as subprocesses so that their wall and CPU time (``os.wait4`` rusage) are measured the
same way as the daemon's, and never mixed with the emulator's (which runs in the bench).

Modes:

* ``naive``: what a user writes from the API page: one file after the other, every call on
  a NEW connection (``http.client``, opened and closed per call: the stdlib equivalent of
  ``requests.post``/``requests.put`` without a session), the file read from disk.
* ``lean``: the leanest client: stdlib ``http.client`` keep-alive connections (one per
  thread), every file's bytes read into memory first, no ledger, no logging, minimal
  checks. Its speed is the ceiling of what this emulator can serve on this machine.

Spec keys: mode, base_url, api_key, folder, files (relative paths), threads (lean only).
Only the stdlib is imported, so start-up costs the same as a user's script.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from urllib.parse import urlsplit

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


def naive(spec: dict) -> int:
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


def lean(spec: dict) -> int:
    host, port, _ = _split(spec["base_url"])
    api = {"Authorization": spec["api_key"], "Content-Type": "application/json"}
    folder = spec["folder"]
    items = []
    for rel in spec["files"]:
        with open(os.path.join(folder, rel), "rb") as fh:
            items.append((os.path.basename(rel), fh.read()))
    lock = threading.Lock()
    position = [0]
    done = [0]
    errors: list[BaseException] = []

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        n = 0
        try:
            while True:
                with lock:
                    i = position[0]
                    position[0] += 1
                if i >= len(items):
                    break
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
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()
            with lock:
                done[0] += n

    threads = [threading.Thread(target=worker) for _ in range(spec.get("threads", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return done[0]


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as fh:
        spec = json.load(fh)
    mode = spec["mode"]
    uploaded = {"naive": naive, "lean": lean}[mode](spec)
    print(json.dumps({"mode": mode, "uploaded": uploaded}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
