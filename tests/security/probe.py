"""Runs inside a container of tests/security: another device, with a key. Sends ROUNDS keyed GET /api/tags to
host:port (each on a connection of its own) and prints a JSON list of [status, seconds] per request."""

from __future__ import annotations

import http.client
import json
import sys
import time

host, port, key, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out: list[tuple[int | str, float]] = []
for _ in range(rounds):
    t0 = time.monotonic()
    status: int | str
    try:
        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", "/api/tags", headers={"Authorization": f"Bearer {key}"})
        r = c.getresponse()
        r.read()
        status = r.status
        c.close()
    except OSError as e:
        status = f"{type(e).__name__}: {e}"
    out.append((status, round(time.monotonic() - t0, 3)))
    time.sleep(0.5)
print(json.dumps(out), flush=True)
