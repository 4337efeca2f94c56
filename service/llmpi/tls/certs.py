"""The local CA and the server certificate, made with the `openssl` command (a well-kept TLS stack; nothing
cryptographic is written here).

At the first start with LLMPI_TLS=auto, a CA is made in the data volume (/data/tls/ca.key, 0600, never leaves it;
ca.crt, what devices trust: `llmpi tls ca` prints it with its fingerprint), then a server certificate signed by it
for the board's names and addresses. At every later start the server certificate is made again when the names or
addresses changed or it expires within 30 days; the CA stays, so devices that trust it keep trusting the board.
With LLMPI_TLS_CERT_FILE and _KEY_FILE, the user's own certificate is served instead and nothing is made.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import paths
from ..core.env import ConfigError
from ..core.files import read_no_follow
from ..core.settings import Settings

CA_DAYS = 3650  # the CA: ten years, so that devices trust the board once
SERVER_DAYS = 397  # the server certificate: within what browsers accept, renewed at a start 30 days before its end
RENEW_BEFORE = 30 * 86400
DIRNAME = "tls"  # in the data volume
TLS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # a host name as the announcer gives it
HOST_WAIT = 5.0  # seconds the launcher waits for the announcer's host.json when there is none yet


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # what llama-server and the Ollama door serve
    key: Path
    ca: Path | None  # the local CA's certificate (None: the user's own certificate is served)


def tls_dir(s: Settings) -> Path:
    return s.data_dir / DIRNAME


def served_files(s: Settings) -> TlsFiles:
    """The certificate and key to serve: the user's own, or the generated ones (which `ensure_certificates` makes)."""
    if s.tls_cert_file is not None and s.tls_key_file is not None:
        return TlsFiles(s.tls_cert_file, s.tls_key_file, None)
    d = tls_dir(s)
    return TlsFiles(d / "server.crt", d / "server.key", d / "ca.crt")


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(f"openssl {args[0]} failed: {done.stderr.strip()[-300:]}")


def make_ca(d: Path, hostname: str) -> None:
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", str(CA_DAYS),
        "-subj", f"/CN=llmpi local CA ({hostname})",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    (d / "ca.key").chmod(0o600)


def subject_alt_names(names: list[str]) -> str:
    return ",".join(f"IP:{n}" if is_address(n) else f"DNS:{n}" for n in names)


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def make_server_certificate(d: Path, names: list[str]) -> None:
    """A certificate for `names` signed by the CA in `d`, replacing the one there (written to new files first)."""
    key, cert = d / "server.key.new", d / "server.crt.new"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", str(SERVER_DAYS), "-subj", f"/CN={names[0]}",
        "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
        "-addext", f"subjectAltName={subject_alt_names(names)}",
        "-addext", "basicConstraints=critical,CA:FALSE",
        "-addext", "keyUsage=critical,digitalSignature",
        "-addext", "extendedKeyUsage=serverAuth",
    )  # fmt: skip
    key.chmod(0o600)
    key.replace(d / "server.key")
    cert.replace(d / "server.crt")
    made = {"names": names, "until": int(time.time()) + SERVER_DAYS * 86400}
    (d / "server.json").write_text(json.dumps(made) + "\n")


def needs_new_certificate(d: Path, names: list[str], now: float) -> str:
    """Why the server certificate must be made again ("" when it need not)."""
    try:
        made = json.loads((d / "server.json").read_text())
    except (OSError, ValueError):
        return "there is none yet"
    if not (d / "server.crt").is_file() or not (d / "server.key").is_file():
        return "there is none yet"
    if sorted(made.get("names", [])) != sorted(names):
        return "the board's names or addresses changed"
    if int(made.get("until", 0)) - now < RENEW_BEFORE:
        return "it expires within 30 days"
    return ""


def ensure_certificates(s: Settings, names: list[str], now: float | None = None) -> tuple[TlsFiles, str]:
    """The files to serve, made when needed; and what was done, for the log ("" when nothing)."""
    files = served_files(s)
    if files.ca is None:
        for path in (files.cert, files.key):
            if not path.is_file():
                raise ConfigError(f"{path} (LLMPI_TLS_CERT_FILE / LLMPI_TLS_KEY_FILE) does not exist in the container")
        return files, ""
    d = tls_dir(s)
    done = ""
    if not (d / "ca.key").is_file() or not (d / "ca.crt").is_file():
        make_ca(d, names[0])
        done = f"made a local CA in {d} (its certificate: `llmpi tls ca`); "
    why = needs_new_certificate(d, names, time.time() if now is None else now)
    if why or done:
        make_server_certificate(d, names)
        done += f"made the HTTPS certificate for {', '.join(names)} ({why or 'a new CA'})"
    return files, done


def pem_fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as browsers and `openssl x509 -fingerprint -sha256` show it."""
    text = path.read_text()
    body = text.split("-----BEGIN CERTIFICATE-----", 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    digest = hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def host_facts(announce_dir: Path, wait: float = HOST_WAIT) -> tuple[str, list[str]]:
    """The host's name and its addresses on the network, as the announcer (on the host's network) wrote them;
    ("", []) when it wrote none within `wait` seconds (a plain `docker run`, without the announcer), at once when
    there is no directory to share with one."""
    if not announce_dir.is_dir():
        return "", []
    deadline = time.monotonic() + wait
    while True:
        try:
            facts = json.loads(read_no_follow(announce_dir / paths.HOST_FILE))
            name = str(facts.get("hostname", ""))
            addresses = [str(a) for a in facts.get("addresses", []) if is_address(str(a))]
            return (name if TLS_NAME.match(name) else ""), addresses
        except (OSError, ValueError, AttributeError, TypeError):
            if time.monotonic() >= deadline:
                return "", []
            time.sleep(0.25)


def certificate_names(s: Settings, hostname: str, addresses: list[str]) -> list[str]:
    """What the server certificate is for: the host's name and `<name>.local` (mDNS), its addresses on the network,
    LLMPI_TLS_NAMES, and this machine's own names (localhost, loopback)."""
    names = [hostname, f"{hostname}.local"] if hostname else []
    names += [*addresses, *s.tls_names, "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(names))
