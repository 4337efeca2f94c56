"""The recipe's listing 11.1 against the real container: the OpenAI SDK, unchanged but for base_url and key."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.compose_helpers import Project, wait_for

# listing 11.1 of the recipe: a system message and a user message, model name of the client's choosing
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {
        "role": "system",
        "content": "You are Capybara, an AI assistant. Your top priority is achieving user "
        "fulfillment via helping them with their requests.",
    },
    {"role": "user", "content": "Building a website can be done in 10 simple steps:"},
]


@pytest.fixture
def client(appliance: Project, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{appliance.url}/v1", api_key=api_key, max_retries=0, timeout=120)


def test_health_is_public_and_docker_reports_healthy(appliance: Project) -> None:
    r = requests.get(f"{appliance.url}/health", timeout=5)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    wait_for(lambda: appliance.docker_health() == "healthy", 60, pause=1, what="docker health == healthy")


def test_models_lists_the_embedded_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == ["gemma-3-270m-q4_k_m"]


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES, max_tokens=24, temperature=0)
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content and completion.choices[0].message.content.strip()
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 20  # the system + user messages, through the Gemma template
    assert 0 < completion.usage.completion_tokens <= 24
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streaming_chat_completion(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    usage = None
    chunks = 0
    for chunk in stream:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 2, "a streamed reply arrives in several chunks"
    assert "".join(pieces).strip()
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 20


def test_runs_as_non_root_without_a_control_socket(appliance: Project) -> None:
    code, out = appliance.exec(["python3", "-c", "import os; print(os.getuid())"])
    assert (code, out.strip()) == (0, "10001")
    top = appliance.container().top(ps_args="-eo pid,user,comm")
    users = {row[1] for row in top["Processes"]}
    assert "root" not in users, top
    code, out = appliance.exec(["sh", "-c", "ls /tmp/*.sock /var/run/supervisor* 2>/dev/null; true"])
    assert out.strip() == ""
