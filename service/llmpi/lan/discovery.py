"""Finding llmpi appliances (and cluster workers) on the home network: DNS-SD over mDNS with python-zeroconf.

Used on a laptop (`scripts/find`, the `llmpi-find` console script) and in the head's announcer
(`LLMPI_WORKERS=auto`). The announcing side is llmpi.lan.announce.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

SERVICE_TYPE = "_llmpi._tcp.local."  # the API: TXT version, api, models, auth
HTTP_TYPE = "_http._tcp.local."  # the chat page, for any Bonjour browser
WORKER_TYPE = "_llmpi-worker._tcp.local."  # a cluster worker's RPC port (llmpi.cluster.worker)
BROWSE_SECONDS = 3.0


@dataclass(frozen=True)
class Found:
    """One announced service, resolved."""

    name: str  # the instance name, e.g. "llmpi on raspberrypi"
    host: str  # its mDNS host name without the trailing dot, e.g. "raspberrypi.local"
    addresses: tuple[str, ...]
    port: int
    txt: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.txt.get('api', '/v1')}"

    @property
    def ipv4s(self) -> list[str]:
        """Its IPv4 addresses (the others are IPv6, possibly with a %scope)."""
        return [a for a in self.addresses if ipaddress.ip_address(a.split("%")[0]).version == 4]

    @property
    def ollama_url(self) -> str | None:
        """The Ollama API's address (Home Assistant, Open WebUI), when the appliance serves it."""
        port = self.txt.get("ollama", "")
        return f"http://{self.host}:{port}" if port.isdigit() else None

    @property
    def https_url(self) -> str | None:
        """The OpenAI API over HTTPS (LLMPI_TLS), when the appliance serves it."""
        port = self.txt.get("tls_port", "")
        return (
            f"https://{self.host}:{port}{self.txt.get('api', '/v1')}"
            if self.txt.get("tls") == "1" and port.isdigit()
            else None
        )

    def address_url(self) -> str:
        """The base_url with the first IPv4 address instead of the name (for clients that cannot resolve .local)."""
        address = self.ipv4s[0] if self.ipv4s else f"[{self.addresses[0]}]"
        return f"http://{address}:{self.port}{self.txt.get('api', '/v1')}"


def decode_txt(properties: dict[bytes, bytes | None]) -> dict[str, str]:
    return {k.decode(errors="replace"): (v or b"").decode(errors="replace") for k, v in properties.items()}


def browse(service_type: str, seconds: float = BROWSE_SECONDS, interfaces: Sequence[str] | None = None) -> list[Found]:
    """The services of one type that answer within `seconds`, resolved (name, addresses, port, TXT), by name."""
    from zeroconf import InterfaceChoice, ServiceBrowser, ServiceStateChange, Zeroconf

    names: set[str] = set()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            names.discard(name)
        else:
            names.add(name)

    zc = Zeroconf(interfaces=list(interfaces) if interfaces else InterfaceChoice.All)
    try:
        browser = ServiceBrowser(zc, service_type, handlers=[on_change])
        time.sleep(seconds)
        browser.cancel()
        found = []
        for name in sorted(names):
            info = zc.get_service_info(service_type, name, timeout=2000)
            if info is None or not info.server or not info.port:
                continue
            found.append(
                Found(
                    name=name.removesuffix("." + service_type),
                    host=info.server.rstrip("."),
                    addresses=tuple(info.parsed_scoped_addresses()),
                    port=info.port,
                    txt=decode_txt(info.properties),
                )
            )
        return found
    finally:
        zc.close()


def describe(found: Sequence[Found]) -> str:
    """One line per appliance: name, URL, models, version."""
    lines = []
    for i, f in enumerate(found, 1):
        models = f.txt.get("models", "") or "?"
        lines.append(
            f"{i}. {f.name}  {f.base_url}  ({', '.join(f.addresses)})  models: {models}  "
            f"llmpi {f.txt.get('version', '?')}  {'key needed' if f.txt.get('auth') == 'key' else 'no key'}"
        )
    return "\n".join(lines)


def choose(found: Sequence[Found], pick: str | None) -> Found:
    """The appliance a user picked by number or (part of) its name or host; the first when none was picked."""
    if not pick:
        return found[0]
    if pick.isdigit() and 1 <= int(pick) <= len(found):
        return found[int(pick) - 1]
    matches = [f for f in found if pick.lower() in f.name.lower() or pick.lower() in f.host.lower()]
    if not matches:
        raise LookupError(f"no appliance found matches {pick!r}")
    return matches[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llmpi-find",
        description="Find the llmpi appliances on this network (mDNS/DNS-SD) and print the line that points the "
        "OpenAI SDKs at one.",
    )
    parser.add_argument("pick", nargs="?", help="which one: its number in the list, or part of its name or host")
    parser.add_argument("--json", action="store_true", help="print what was found as JSON")
    parser.add_argument("--timeout", type=float, default=BROWSE_SECONDS, help="seconds to listen (default 3)")
    parser.add_argument("--address", action="store_true", help="use the IP address in the URL instead of <name>.local")
    args = parser.parse_args(argv)
    try:
        found = browse(SERVICE_TYPE, args.timeout)
    except OSError as e:
        print(f"llmpi-find: cannot listen for mDNS on this machine: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(f) | {"base_url": f.base_url, "ollama_url": f.ollama_url} for f in found], indent=2))
        return 0 if found else 1
    if not found:
        print(
            f"llmpi-find: no llmpi answered within {args.timeout:g} s on this network. Is it running "
            "(`docker compose ps` on the Pi), on the same network as this machine, and not started with "
            "LLMPI_ANNOUNCE=off? Some Wi-Fi networks block multicast between devices (client isolation).",
            file=sys.stderr,
        )
        return 1
    try:
        chosen = choose(found, args.pick)
    except LookupError as e:
        print(f"{describe(found)}\nllmpi-find: {e}", file=sys.stderr)
        return 1
    print(describe(found))
    if len(found) > 1 and not args.pick:
        print("# several found; the first is used below (`llmpi-find <number>` picks another)")
    print(f"export OPENAI_BASE_URL={chosen.address_url() if args.address else chosen.base_url}")
    if chosen.txt.get("auth") == "key":
        print("# and the key: export OPENAI_API_KEY=...   (on the Pi: docker compose exec llmpi llmpi keys show)")
    if chosen.ollama_url:
        print(f"# Ollama apps (Home Assistant, Open WebUI): {chosen.ollama_url} with the same key")
    if chosen.https_url:
        fingerprint = chosen.txt.get("ca", "")
        said = f"; its SHA-256 fingerprint: {fingerprint}" if fingerprint else ""
        print(f"# HTTPS: {chosen.https_url} once this device trusts the board's CA (on the Pi: docker compose exec "
              f"llmpi llmpi tls ca > llmpi-ca.pem){said}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
