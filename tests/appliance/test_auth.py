"""Secure by default: no key, no inference."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.compose_helpers import KEY_RE, Project

CHAT = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer sk-wrong-key-000000"}, 401),
        ({"X-Api-Key": "sk-wrong-key-000000"}, 401),
        ({"Authorization": "Bearer "}, 401),
        ("bearer", 200),
        ("x-api-key", 200),
    ],
)
def test_key_is_required(appliance: Project, api_key: str, headers: dict[str, str] | str, status: int) -> None:
    if headers == "bearer":
        headers = {"Authorization": f"Bearer {api_key}"}
    elif headers == "x-api-key":
        headers = {"X-Api-Key": api_key}
    assert isinstance(headers, dict)
    for method, path, body in [
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
    ]:
        r = requests.request(method, f"{appliance.url}{path}", json=body, headers=headers, timeout=60)
        assert r.status_code == status, (path, r.text)
        if status == 401:
            assert r.json()["error"]["type"] == "authentication_error"


def test_health_stays_public(appliance: Project) -> None:
    assert requests.get(f"{appliance.url}/health", timeout=5).status_code == 200


def test_openai_sdk_with_a_wrong_key(appliance: Project) -> None:
    client = openai.OpenAI(base_url=f"{appliance.url}/v1", api_key="sk-not-the-key-123", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}])


def test_generated_key_is_stored_privately(appliance: Project, api_key: str) -> None:
    code, out = appliance.exec(["stat", "-c", "%a %U", "/data/api_key"])
    assert (code, out.strip()) == (0, "600 llmpi")
    code, out = appliance.exec(["cat", "/data/api_key"])
    assert out.strip() == api_key
    _, cmdline = appliance.exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
    assert api_key not in cmdline, "the key must not appear on a command line"


def test_generated_key_survives_restart_and_is_not_printed_again(appliance: Project, api_key: str) -> None:
    appliance.compose("restart", "llmpi")
    appliance.wait_healthy()
    logs = appliance.logs()
    assert logs.count("a new API key was generated") == 1
    assert not KEY_RE.findall(logs) and api_key not in logs
    assert "using the API key stored in /data/api_key" in logs
    r = requests.get(f"{appliance.url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert r.status_code == 200
