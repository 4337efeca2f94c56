"""Runs in the `client` container of tests/lan: another device on the test's network. Browses one service type for
a bounded time and prints one JSON line per event (added with its resolved name, addresses, port and TXT; removed),
so a test sees both the announcement and the goodbye."""

import json
import sys
import time

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

service_type, seconds = sys.argv[1], float(sys.argv[2])
start = time.monotonic()


def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
    event: dict[str, object] = {"t": round(time.monotonic() - start, 2), "name": name, "event": state_change.name}
    if state_change is not ServiceStateChange.Removed:
        info = zeroconf.get_service_info(service_type, name, timeout=2000)
        if info is not None:
            event |= {
                "server": info.server,
                "addresses": info.parsed_addresses(),
                "port": info.port,
                "txt": {k.decode(): (v or b"").decode() for k, v in info.properties.items()},
            }
    print(json.dumps(event), flush=True)


zc = Zeroconf()
browser = ServiceBrowser(zc, service_type, handlers=[on_change])
time.sleep(seconds)
browser.cancel()
zc.close()
