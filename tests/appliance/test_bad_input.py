"""A client's mistake gets a clear 4xx (never a 5xx that SDKs retry), and the server stays healthy."""

from __future__ import annotations

import contextlib
import json
import socket
import threading

import httpx2
import openai
import pytest
import requests

from tests.compose_helpers import Project


def _post(appliance: Project, key: str, body: bytes, path: str = "/v1/chat/completions") -> requests.Response:
    return requests.post(
        f"{appliance.url}{path}",
        data=body,
        timeout=120,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


@pytest.mark.contract
@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"model": "x", "messages": [', "cut-off JSON"),
        (b"not json at all", "not JSON"),
        (b'{"model": "x", "messages": [{"role": "user", "content": "caf\xe9 \xff\xfe"}]}', "ill-formed UTF-8"),
        (b'{"model": "x", "messages": [{"role": "user", "content": "\\udc80"}]}', "lone surrogate escape"),
    ],
)
def test_malformed_body_is_400(appliance: Project, api_key: str, body: bytes, what: str) -> None:
    r = _post(appliance, api_key, body)
    assert r.status_code == 400, (what, r.status_code, r.text)
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "invalid JSON" in error["message"]
    assert appliance.health() == 200


@pytest.mark.contract
def test_malformed_body_is_not_retried_by_the_sdk(appliance: Project, api_key: str) -> None:
    # the SDK retries 5xx (twice by default): a client's mistake must cost one round trip, not three
    sent: list[httpx2.Request] = []
    http = httpx2.Client(event_hooks={"request": [sent.append]})
    client = openai.OpenAI(base_url=f"{appliance.url}/v1", api_key=api_key, http_client=http)
    with pytest.raises(openai.BadRequestError):
        client.post(
            "/chat/completions",
            cast_to=object,
            content=b'{"messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )
    assert len(sent) == 1


def test_prompt_longer_than_the_context(appliance: Project, api_key: str) -> None:
    client = openai.OpenAI(base_url=f"{appliance.url}/v1", api_key=api_key, max_retries=0, timeout=300)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-3.5-turbo", max_tokens=4, messages=[{"role": "user", "content": "word " * 20000}]
        )
    assert e.value.status_code == 400
    assert "exceed" in str(e.value).lower() and "context" in str(e.value).lower()
    assert appliance.health() == 200


def test_unknown_route_is_404(appliance: Project, api_key: str) -> None:
    r = requests.get(f"{appliance.url}/v1/no-such-thing", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found_error"


PAYLOAD_LIMIT = 32 * 1024 * 1024  # LLMPI_MAX_BODY's default: a larger body is refused (patch 0022)


def test_body_over_the_size_limit_is_413(appliance: Project, api_key: str) -> None:
    size = PAYLOAD_LIMIT + 1  # one byte over LLMPI_MAX_BODY: answered from the Content-Length, before the body

    def send_body(s: socket.socket) -> None:
        block = b" " * (1 << 20)
        with contextlib.suppress(OSError):  # the server answers and closes before all of it is sent
            for start in range(0, size, len(block)):
                s.sendall(block[: min(len(block), size - start)])

    with socket.create_connection(("127.0.0.1", appliance.port), timeout=60) as s:
        s.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        threading.Thread(target=send_body, args=(s,), daemon=True).start()
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 413 Payload Too Large", head
    error = json.loads(body)["error"]
    assert (error["code"], error["type"]) == (413, "invalid_request_error")
    assert appliance.health() == 200


def test_wrong_types_in_the_request_are_4xx(appliance: Project, api_key: str) -> None:
    r = _post(appliance, api_key, b'{"model": "x", "messages": "hello"}')
    assert 400 <= r.status_code < 500, r.text
    r = _post(appliance, api_key, b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}')
    assert 400 <= r.status_code < 500, r.text
    assert appliance.health() == 200
