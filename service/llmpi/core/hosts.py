"""Host names and ports from outside (the workers the announcer heard, LLMPI_WORKERS) checked before they go into a
command line or a configuration file: an IP address or a DNS host name (letters, digits, hyphens and dots), and a
port from 1 to 65535; nothing else, so no blank, newline, `%` or bracket ever reaches supervisord's configuration."""

from __future__ import annotations

import ipaddress
import re

HOST_NAME_MAX = 253  # DNS: the longest name; each label 1 to 63 characters
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IP_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")


def is_ip(host: str) -> bool:
    """An IPv4 or IPv6 address, written with nothing else (no zone `%eth0`, no brackets)."""
    if not host or not set(host) <= _IP_CHARACTERS:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_host_name(host: str) -> bool:
    """A DNS host name: dot-separated labels of ASCII letters, digits and inner hyphens, not all digits (a dotted
    number that is not an IPv4 address is neither)."""
    if not host or len(host) > HOST_NAME_MAX or not host.isascii():
        return False
    labels = host.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not all(label.isdigit() for label in labels)


def is_host(host: object) -> bool:
    """An IP address or a DNS host name (is_ip, is_host_name)."""
    return isinstance(host, str) and (is_ip(host) or is_host_name(host))


def is_port(port: object) -> bool:
    """A TCP port: an int (not a bool, not a string) from 1 to 65535."""
    return isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
