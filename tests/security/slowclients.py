"""Runs inside a container of tests/security: a device on the LAN without a key that holds N connections to
host:port, trickling a request's headers a byte a second on each, and opens a new one whenever one is refused or
closed, for S seconds. Prints one JSON line when it has tried the N ("ready") and one with its counts at the end.
Standard library only (the appliance image's python3)."""

from __future__ import annotations

import json
import socket
import sys
import time

host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
HEAD = b"GET /api/tags HTTP/1.1\r\nHost: door\r\nX-Slow: " + b"a" * 100_000  # never ends within S seconds
counts = {"opened": 0, "refused_503": 0, "closed": 0, "failed": 0, "open_at_end": 0}
sent: dict[socket.socket, int] = {}


def open_one() -> None:
    try:
        s = socket.create_connection((host, port), timeout=2)
    except OSError:
        counts["failed"] += 1
        return
    s.setblocking(False)
    sent[s] = 0
    counts["opened"] += 1


for _ in range(n):
    open_one()
print(json.dumps({"ready": len(sent), **counts}), flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    for s in list(sent):
        data: bytes | None
        try:
            data = s.recv(4096)
        except BlockingIOError:
            data = None
        except OSError:
            data = b""
        if data is None:
            try:
                s.send(HEAD[sent[s] : sent[s] + 1])
                sent[s] += 1
                continue
            except OSError:
                data = b""
        counts["refused_503" if data.startswith(b"HTTP/1.1 503") else "closed"] += 1
        del sent[s]
        s.close()
    while len(sent) < n and time.monotonic() < end:  # as many new ones as were lost
        open_one()
    time.sleep(1.0)
counts["open_at_end"] = len(sent)
print(json.dumps(counts), flush=True)
