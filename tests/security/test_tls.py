"""HTTPS on the home network (issue 23; patch 0025, llmpi.tls): on by default beside HTTP, with a local CA that
`llmpi tls ca` prints for devices to trust; `openssl s_client`, the `openai` SDK and the `ollama` client verify the
board with it and nothing else; LLMPI_HTTP=off leaves HTTPS only, and the container healthy."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import ollama
import openai
import pytest
import requests

from tests.compose_helpers import Project, wait_for

pytestmark = pytest.mark.security


def trusted_ca(project: Project, tmp_path: Path) -> tuple[Path, str]:
    """`llmpi tls ca`: the CA's certificate, written where the clients read it, and its fingerprint."""
    code, out = project.exec(["llmpi", "tls", "ca"])
    assert code == 0 and "BEGIN CERTIFICATE" in out, out
    pem, _, fingerprint = out.partition("# SHA-256 fingerprint: ")
    path = tmp_path / "llmpi-ca.pem"
    path.write_text(pem)
    return path, fingerprint.strip()


@pytest.mark.contract
def test_https_beside_http_verified_with_the_local_ca(appliance: Project, api_key: str, tmp_path: Path) -> None:
    ca, fingerprint = trusted_ca(appliance, tmp_path)
    done = subprocess.run(["openssl", "x509", "-in", str(ca), "-noout", "-fingerprint", "-sha256"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip().split("=", 1)[1] == fingerprint
    port = int(appliance.tls_url.rsplit(":", 1)[1])
    # openssl s_client: the chain verifies against the CA, for the name localhost
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", "-verify_hostname",
         "localhost", "-CAfile", str(ca), "-verify_return_error", "-brief"],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Verification: OK" in done.stderr, done.stderr
    # the openai SDK, given the CA, over HTTPS; without it, the board is not trusted
    client = openai.OpenAI(base_url=f"{appliance.tls_url}/v1", api_key=api_key,
                           http_client=openai.DefaultHttpxClient(verify=str(ca)), max_retries=0)  # fmt: skip
    reply = client.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert reply.choices[0].message.content is not None and reply.usage is not None
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=f"{appliance.tls_url}/v1", api_key=api_key, max_retries=0).models.list()
    # the key still counts over HTTPS, and the plain port still answers
    assert requests.get(f"{appliance.tls_url}/v1/models", verify=str(ca), timeout=30).status_code == 401
    assert requests.get(f"{appliance.url}/v1/models", headers={"Authorization": f"Bearer {api_key}"},
                        timeout=30).status_code == 200  # fmt: skip
    # the Ollama API over HTTPS too
    o = ollama.Client(host=appliance.ollama_tls_url, headers={"Authorization": f"Bearer {api_key}"}, verify=str(ca))
    assert o.list().models


def test_the_certificate_names_the_board_and_only_tls_1_2_or_later(appliance: Project, tmp_path: Path) -> None:
    ca, _ = trusted_ca(appliance, tmp_path)
    port = int(appliance.tls_url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        names = (tls.getpeercert() or {}).get("subjectAltName", ())
        assert ("DNS", "localhost") in names and ("IP Address", "127.0.0.1") in names, names
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="localhost")


@pytest.mark.contract
def test_http_off_leaves_https_only_and_the_container_healthy(extra_project: Project, tmp_path: Path) -> None:
    extra_project.env.update({"LLMPI_HTTP": "off"})
    extra_project.up()
    ca, _ = trusted_ca_when_up(extra_project, tmp_path)
    key = extra_project.stored_key()
    r = requests.get(f"{extra_project.tls_url}/v1/models", headers={"Authorization": f"Bearer {key}"},
                     verify=str(ca), timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{extra_project.url}/health", timeout=10)  # published, but nothing listens for the network
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{extra_project.ollama_url}/api/version", timeout=10)
    # the door starts its HTTPS port once the launcher's certificate files exist, maybe after llama-server's
    wait_for(lambda: status(f"{extra_project.ollama_tls_url}/api/version", ca) > 0, 60, what="the door's HTTPS port")
    o = ollama.Client(host=extra_project.ollama_tls_url, headers={"Authorization": f"Bearer {key}"}, verify=str(ca))
    assert o.list().models
    wait_for(lambda: extra_project.docker_health() == "healthy", 120, what="the container healthy")


def status(url: str, ca: Path | bool) -> int:
    """The status an HTTPS GET gets, 0 when no answer comes (nothing listens yet)."""
    try:
        return requests.get(url, verify=str(ca) if isinstance(ca, Path) else ca, timeout=5).status_code
    except requests.RequestException:
        return 0


def trusted_ca_when_up(project: Project, tmp_path: Path) -> tuple[Path, str]:
    """The CA once the server answers over HTTPS (the plain port is not there to wait on)."""

    wait_for(lambda: status(f"{project.tls_url}/health", False) == 200, 180, what="the server answering over HTTPS")
    return trusted_ca(project, tmp_path)
