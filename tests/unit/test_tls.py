"""llmpi.tls.certs and the settings and options of HTTPS (LLMPI_TLS): the local CA made once, the server certificate
made again when the names change, the user's own certificate served as it is, llama-server's flags (patch 0025)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llmpi.core import paths
from llmpi.core.env import ConfigError
from llmpi.core.settings import Settings
from llmpi.plan import options
from llmpi.tls import certs


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.read({"LLMPI_DATA_DIR": str(tmp_path / "data"), **env})


def san(cert: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return out.splitlines()[-1].strip()


def test_the_ca_is_made_once_and_the_certificate_again_when_the_names_change(tmp_path: Path) -> None:
    s = settings(tmp_path)
    files, done = certs.ensure_certificates(s, ["pi", "pi.local", "192.168.1.5", "localhost"])
    assert "made a local CA" in done and files.ca is not None
    assert san(files.cert) == "DNS:pi, DNS:pi.local, IP Address:192.168.1.5, DNS:localhost"
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(files.ca), str(files.cert)],
                              capture_output=True, text=True, check=False)  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert (
        oct(files.key.stat().st_mode & 0o777) == "0o600"
        and oct((files.ca.parent / "ca.key").stat().st_mode)[-3:] == "600"
    )
    ca_before, cert_before = files.ca.read_text(), files.cert.read_text()
    assert certs.ensure_certificates(s, ["pi", "pi.local", "192.168.1.5", "localhost"])[1] == ""  # nothing to do
    _, done = certs.ensure_certificates(s, ["pi", "pi.local", "192.168.1.9", "localhost"])  # DHCP gave another address
    assert "the board's names or addresses changed" in done and "CA" not in done.split("(")[0]
    assert files.ca.read_text() == ca_before and files.cert.read_text() != cert_before  # devices keep trusting it
    assert "192.168.1.9" in san(files.cert)
    made = json.loads((files.ca.parent / "server.json").read_text())
    _, done = certs.ensure_certificates(s, made["names"], now=made["until"] - 86400)  # a day before its end
    assert "expires within 30 days" in done


def test_the_fingerprint_is_what_openssl_says(tmp_path: Path) -> None:
    files, _ = certs.ensure_certificates(settings(tmp_path), ["localhost"])
    assert files.ca is not None
    out = subprocess.run(["openssl", "x509", "-in", str(files.ca), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.strip().split("=", 1)[1] == certs.pem_fingerprint(files.ca)


def test_the_users_own_certificate_is_served_as_it_is(tmp_path: Path) -> None:
    own = settings(
        tmp_path, LLMPI_TLS_CERT_FILE=str(tmp_path / "own.crt"), LLMPI_TLS_KEY_FILE=str(tmp_path / "own.key")
    )
    with pytest.raises(ConfigError, match="does not exist in the container"):
        certs.ensure_certificates(own, [])
    (tmp_path / "own.crt").write_text("x")
    (tmp_path / "own.key").write_text("x")
    files, done = certs.ensure_certificates(own, [])
    assert (files.cert, files.key, files.ca, done) == (tmp_path / "own.crt", tmp_path / "own.key", None, "")
    assert not (tmp_path / "data" / "tls").exists()  # no CA made


def test_the_names_come_from_the_announcer_and_the_settings(tmp_path: Path) -> None:
    assert certs.host_facts(tmp_path / "none", wait=60) == ("", [])  # no shared directory: no wait at all
    announce = tmp_path / "announce"
    announce.mkdir()
    (announce / paths.HOST_FILE).write_text(json.dumps({"hostname": "kitchen-pi", "addresses": ["192.168.1.5", "x"]}))
    name, addresses = certs.host_facts(announce)
    assert (name, addresses) == ("kitchen-pi", ["192.168.1.5"])
    s = settings(tmp_path, LLMPI_TLS_NAMES="llm.example.org, 10.0.0.2")
    assert certs.certificate_names(s, name, addresses) == [
        "kitchen-pi", "kitchen-pi.local", "192.168.1.5", "llm.example.org", "10.0.0.2", "localhost", "127.0.0.1", "::1",
    ]  # fmt: skip
    (announce / paths.HOST_FILE).write_text(json.dumps({"hostname": "bad\nname", "addresses": []}))
    assert certs.host_facts(announce) == ("", [])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMPI_TLS": "sometimes"}, "use auto or off"),
        ({"LLMPI_TLS_CERT_FILE": "/x.crt"}, "together"),
        ({"LLMPI_TLS_PORT": "8080"}, "taken by another port"),
        ({"LLMPI_HTTP": "off", "LLMPI_TLS": "off"}, "nothing to connect to"),
        ({"LLMPI_TLS_NAMES": "a b"}, "not a host name"),
    ],
)
def test_bad_tls_settings_are_refused(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, **env)


def flags(opts: list[options.Option]) -> dict[str, str | None]:
    return {flag: value for _, flag, value in opts}


def test_llama_server_serves_https_beside_http_or_alone(tmp_path: Path) -> None:
    on = flags(options.server_options(settings(tmp_path), router=False))
    assert on["--tls-port"] == "8443" and on["--host"] == "0.0.0.0" and "--tls-host" not in on
    assert on["--ssl-cert-file"] == str(tmp_path / "data" / "tls" / "server.crt")
    alone = flags(options.server_options(settings(tmp_path, LLMPI_HTTP="off"), router=False))
    assert alone["--host"] == "127.0.0.1" and alone["--tls-host"] == "0.0.0.0"  # plain HTTP for the container only
    off = flags(options.server_options(settings(tmp_path, LLMPI_TLS="off"), router=False))
    assert "--tls-port" not in off and "--ssl-cert-file" not in off
