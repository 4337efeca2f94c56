"""Claude-style and Responses clients (issue 22): the real `anthropic` SDK against /v1/messages (and
/v1/messages/count_tokens) and the real `openai` SDK's `responses` against /v1/responses, streamed and not, with the
key as each SDK sends it (x-api-key, or Bearer for ANTHROPIC_AUTH_TOKEN), a wrong key, no key and a named key; in
single-model mode (the session's appliance) and in router mode (a second project: two models on the board, served by
name) with a small reply cap (LLMPI_MAX_TOKENS=8) that a request asking for 500 tokens on either door cannot pass."""

from __future__ import annotations

import os
from collections.abc import Iterator

import anthropic
import openai
import pytest
import requests

from tests.compose_helpers import Project, wait_for

pytestmark = pytest.mark.ollama

CAP = 8  # LLMPI_MAX_TOKENS of the router project
SECOND = "second"  # a copy of the embedded model under another name, the router's second model
LONG = "Write a long story about a dragon who learns to bake bread. Use many paragraphs."
SYSTEM = "You are Capybara, a helpful assistant. Answer in English."
# a copy of the embedded model in /data/models with a manifest (what `llmpi models pull` leaves), before the first
# start: the launcher finds two models and starts llama-server's router
SEED = (
    "set -e; cd /opt/llmpi/models; cp gemma-3-270m-q4_k_m.gguf /data/models/second.gguf; "
    "if [ -f gemma-3-270m-q4_k_m.jinja ]; then cp gemma-3-270m-q4_k_m.jinja /data/models/second.jinja; fi; "
    'printf \'{"name": "second", "file": "second.gguf", "kind": "chat", "quant": "Q4_K_M"}\' '
    "> /data/models/second.json"
)


def claude(url: str, key: str | None = None, bearer: str | None = None) -> anthropic.Anthropic:
    """The anthropic SDK as Claude-style tools set it up: ANTHROPIC_BASE_URL is the server's root (the SDK adds
    /v1/messages); ANTHROPIC_API_KEY goes out as x-api-key, ANTHROPIC_AUTH_TOKEN as Authorization: Bearer."""
    return anthropic.Anthropic(base_url=url, api_key=key, auth_token=bearer, max_retries=0, timeout=120)


def responses_client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def streamed_message(client: anthropic.Anthropic, **kwargs: object) -> tuple[str, anthropic.types.Message]:
    """The text deltas joined, and the message the SDK assembled from the stream's events."""
    with client.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    return text, final


def streamed_response(client: openai.OpenAI, **kwargs: object) -> tuple[str, list[str], object]:
    """The output_text deltas joined, the event types in order, and the response.completed event's response."""
    deltas: list[str] = []
    types: list[str] = []
    completed = None
    for event in client.responses.create(stream=True, **kwargs):  # type: ignore[call-overload]
        types.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            completed = event.response
    assert completed is not None, types
    return "".join(deltas), types, completed


def assert_capped_message(message: anthropic.types.Message, cap: int) -> None:
    """Asked for far more than the cap: the reply stops at the cap, and says it stopped on the token limit."""
    assert message.role == "assistant" and text_of(message).strip(), message
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == cap, message


# --- single-model mode: the session's appliance (the embedded Gemma 3 270M, the default cap) --------------------


def test_anthropic_sdk_messages(appliance: Project, api_key: str) -> None:
    client = claude(appliance.url, key=api_key)
    reply = client.messages.create(
        model="claude-sonnet-4-5",  # any name: one model on the board
        max_tokens=16,
        system=SYSTEM,
        messages=[{"role": "user", "content": "What is a Raspberry Pi?"}],
    )
    assert reply.type == "message" and reply.role == "assistant" and text_of(reply).strip(), reply
    assert reply.stop_reason in ("end_turn", "max_tokens"), reply
    assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 16, reply.usage
    # a conversation with a system prompt given as blocks, answered the same way
    reply = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=8,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "Name a fruit."}]},
        ],
    )
    assert text_of(reply).strip() and 0 < reply.usage.output_tokens <= 8, reply


def test_anthropic_sdk_streams(appliance: Project, api_key: str) -> None:
    text, final = streamed_message(
        claude(appliance.url, key=api_key),
        model="claude-sonnet-4-5",
        max_tokens=16,
        system=SYSTEM,
        messages=[{"role": "user", "content": "Count from one to ten."}],
    )
    assert text.strip() and text == text_of(final), (text, final)
    assert final.stop_reason in ("end_turn", "max_tokens") and 0 < final.usage.output_tokens <= 16, final


def test_anthropic_sdk_counts_tokens(appliance: Project, api_key: str) -> None:
    client = claude(appliance.url, key=api_key)
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "What is a Raspberry Pi?"}]
    bare = client.messages.count_tokens(model="claude-sonnet-4-5", messages=messages).input_tokens
    with_system = client.messages.count_tokens(model="claude-sonnet-4-5", system=SYSTEM, messages=messages)
    assert 0 < bare < with_system.input_tokens, (bare, with_system)
    # the count is what the server then reads as the prompt
    reply = client.messages.create(model="claude-sonnet-4-5", max_tokens=1, system=SYSTEM, messages=messages)
    assert reply.usage.input_tokens + (reply.usage.cache_read_input_tokens or 0) == with_system.input_tokens


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
def test_anthropic_sdk_key_as_each_variable_sends_it(appliance: Project, api_key: str, how: str) -> None:
    """ANTHROPIC_API_KEY (x-api-key) and ANTHROPIC_AUTH_TOKEN (Authorization: Bearer) both carry the key."""
    client = claude(appliance.url, key=api_key) if how == "x-api-key" else claude(appliance.url, bearer=api_key)
    reply = client.messages.create(model="any", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
    assert reply.usage.output_tokens > 0


@pytest.mark.parametrize("how", ["x-api-key", "bearer", "none"])
def test_anthropic_sdk_wrong_or_no_key_is_an_authentication_error(appliance: Project, how: str) -> None:
    wrong = "sk-llmpi-not-the-key-0000"
    client = claude(appliance.url, key=wrong) if how == "x-api-key" else claude(appliance.url, bearer=wrong)
    extra = {"X-Api-Key": anthropic.omit, "Authorization": anthropic.omit} if how == "none" else {}
    msg: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]
    with pytest.raises(anthropic.AuthenticationError) as e:
        client.messages.create(model="any", max_tokens=2, messages=msg, extra_headers=extra)
    assert e.value.status_code == 401
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.count_tokens(model="any", messages=msg, extra_headers=extra)
    streaming = client.messages.stream(model="any", max_tokens=2, messages=msg, extra_headers=extra)
    with pytest.raises(anthropic.AuthenticationError), streaming as stream:
        stream.get_final_message()


def test_responses_sdk(appliance: Project, api_key: str) -> None:
    client = responses_client(appliance.url, api_key)
    reply = client.responses.create(
        model="gpt-4.1", instructions=SYSTEM, input="What is a Raspberry Pi?", max_output_tokens=16
    )
    assert reply.id.startswith("resp_") and reply.output_text.strip(), reply
    assert reply.usage is not None and reply.usage.input_tokens > 0, reply
    assert 0 < reply.usage.output_tokens <= 16, reply.usage
    # the list form of the input, with a system message in it
    reply = client.responses.create(
        model="gpt-4.1",
        input=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Name a fruit."}],
        max_output_tokens=8,
    )
    assert reply.output_text.strip() and reply.usage is not None and reply.usage.output_tokens <= 8, reply


def test_responses_sdk_streams(appliance: Project, api_key: str) -> None:
    text, types, completed = streamed_response(
        responses_client(appliance.url, api_key),
        model="gpt-4.1",
        instructions=SYSTEM,
        input="Count from one to ten.",
        max_output_tokens=16,
    )
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert text.strip() and text == completed.output_text, (text, completed)  # type: ignore[attr-defined]
    assert 0 < completed.usage.output_tokens <= 16, completed  # type: ignore[attr-defined]


def test_responses_sdk_wrong_key_is_an_authentication_error(appliance: Project) -> None:
    client = responses_client(appliance.url, "sk-llmpi-not-the-key-0000")
    with pytest.raises(openai.AuthenticationError):
        client.responses.create(model="gpt-4.1", input="Hi", max_output_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        streamed_response(client, model="gpt-4.1", input="Hi", max_output_tokens=2)
    r = requests.post(f"{appliance.url}/v1/responses", json={"input": "Hi", "max_output_tokens": 2}, timeout=30)
    assert r.status_code == 401, r.text  # and no key at all


@pytest.mark.contract
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"model": "any", "max_tokens": 2}),  # no messages
        ("/v1/messages/count_tokens", {"model": "any"}),
        ("/v1/responses", {"model": "any", "max_output_tokens": 2}),  # no input
        ("/v1/responses", {"model": "any", "input": 42}),
        ("/v1/responses", {"model": "any", "input": "Hi", "previous_response_id": "resp_1"}),  # none is kept
    ],
    ids=["messages", "count-tokens", "responses", "responses-input-type", "responses-previous-id"],
)
def test_a_request_without_its_input_is_a_400(appliance: Project, api_key: str, path: str, body: object) -> None:
    """The client's mistake is a 400 (the SDKs retry a 500, which can never succeed)."""
    r = requests.post(f"{appliance.url}{path}", json=body, headers={"X-Api-Key": api_key}, timeout=30)
    assert r.status_code == 400, r.text


# --- router mode: two models by name, LLMPI_MAX_TOKENS=8 --------------------------------------------------------


@pytest.fixture(scope="module")
def router(appliance_image: str) -> Iterator[Project]:
    p = Project(f"llmpi-claude-{os.getpid()}", env={"LLMPI_MAX_TOKENS": str(CAP), "LLMPI_CTX_SIZE": "4096"})
    try:
        r = p.compose("run", "--rm", "--no-deps", "--entrypoint", "sh", "llmpi", "-c", SEED, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        p.up()
        p.wait_healthy(300)
        assert "serving 2 models by name" in p.logs(), p.logs()[-3000:]
        yield p
    finally:
        p.down()


@pytest.fixture(scope="module")
def router_key(router: Project) -> str:
    return router.stored_key()


@pytest.fixture(scope="module")
def default_model(router: Project, router_key: str) -> str:
    ids = [m.id for m in responses_client(router.url, router_key).models.list()]
    assert len(ids) == 2 and SECOND in ids, ids
    return next(i for i in ids if i != SECOND)


@pytest.mark.contract
def test_router_anthropic_sdk_by_name_capped(router: Project, router_key: str, default_model: str) -> None:
    client = claude(router.url, key=router_key)
    reply = client.messages.create(
        model=SECOND, max_tokens=500, system=SYSTEM, messages=[{"role": "user", "content": LONG}]
    )
    assert_capped_message(reply, CAP)
    assert reply.model == SECOND, reply.model
    # a name that is not on the board (a Claude model's) goes to the default model, streamed, capped too
    text, final = streamed_message(
        client, model="claude-sonnet-4-5", max_tokens=500, system=SYSTEM, messages=[{"role": "user", "content": LONG}]
    )
    assert text == text_of(final)
    assert_capped_message(final, CAP)
    # one that asks for less than the cap gets what it asked for
    reply = client.messages.create(model=SECOND, max_tokens=3, messages=[{"role": "user", "content": LONG}])
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3, reply
    # a raw request without max_tokens (the SDK always sends one; the server then takes 4096) is capped as well
    r = requests.post(
        f"{router.url}/v1/messages",
        json={"model": SECOND, "messages": [{"role": "user", "content": LONG}]},
        headers={"X-Api-Key": router_key},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == CAP, r.text


def test_router_anthropic_sdk_streams_by_name(router: Project, router_key: str) -> None:
    text, final = streamed_message(
        claude(router.url, bearer=router_key),
        model=SECOND,
        max_tokens=500,
        messages=[{"role": "user", "content": LONG}],
    )
    assert text == text_of(final)
    assert_capped_message(final, CAP)


def test_router_counts_tokens_by_name(router: Project, router_key: str, default_model: str) -> None:
    client = claude(router.url, key=router_key)
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "What is a Raspberry Pi?"}]
    counts = {m: client.messages.count_tokens(model=m, messages=messages).input_tokens for m in (SECOND, default_model)}
    assert counts[SECOND] > 0 and counts[SECOND] == counts[default_model], counts  # the same tokenizer


@pytest.mark.contract
@pytest.mark.parametrize("model", [SECOND, "gpt-4.1"], ids=["by-name", "default"])
def test_router_responses_sdk_capped(router: Project, router_key: str, default_model: str, model: str) -> None:
    client = responses_client(router.url, router_key)
    reply = client.responses.create(model=model, instructions=SYSTEM, input=LONG, max_output_tokens=500)
    assert reply.output_text.strip() and reply.usage is not None, reply
    assert reply.usage.output_tokens == CAP, reply.usage
    assert reply.model == (SECOND if model == SECOND else default_model), reply.model
    text, _, completed = streamed_response(client, model=model, input=LONG, max_output_tokens=500)
    assert text.strip() and text == completed.output_text, completed  # type: ignore[attr-defined]
    assert completed.usage.output_tokens == CAP, completed  # type: ignore[attr-defined]
    # a Responses client that sends no limit at all is capped as well
    reply = client.responses.create(model=model, input=LONG)
    assert reply.usage is not None and reply.usage.output_tokens == CAP, reply.usage


@pytest.mark.contract
def test_router_named_key_then_revoked(router: Project, router_key: str) -> None:
    code, out = router.exec(["llmpi", "keys", "add", "claude-laptop"])
    assert code == 0, out
    named = out.strip()
    msg: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]

    def taken() -> bool:  # llama-server reads its key file again within a second of a change (patch 0010)
        try:
            claude(router.url, key=named).messages.count_tokens(model=SECOND, messages=msg)
        except anthropic.AuthenticationError:
            return False
        return True

    wait_for(taken, 10, what="the new key taken")
    for client in (claude(router.url, key=named), claude(router.url, bearer=named)):
        assert client.messages.create(model=SECOND, max_tokens=2, messages=msg).usage.output_tokens > 0
    responses = responses_client(router.url, named)
    assert responses.responses.create(model=SECOND, input="Hi", max_output_tokens=2).output_text is not None
    code, out = router.exec(["llmpi", "keys", "revoke", "claude-laptop"])
    assert code == 0, out

    def refused() -> bool:
        try:
            claude(router.url, key=named).messages.create(model=SECOND, max_tokens=1, messages=msg)
        except anthropic.AuthenticationError:
            return True
        return False

    wait_for(refused, 10, what="the revoked key refused")
    with pytest.raises(anthropic.AuthenticationError):
        claude(router.url, bearer=named).messages.count_tokens(model=SECOND, messages=msg)
    with pytest.raises(openai.AuthenticationError):
        responses.responses.create(model=SECOND, input="Hi", max_output_tokens=2)
    # the generated key still works, and no key is still refused
    assert claude(router.url, key=router_key).messages.create(model=SECOND, max_tokens=1, messages=msg).content
    with pytest.raises(anthropic.AuthenticationError):
        claude(router.url, key="x").messages.create(
            model=SECOND, max_tokens=1, messages=msg, extra_headers={"X-Api-Key": anthropic.omit}
        )


@pytest.mark.contract
@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/messages", {"model": SECOND, "max_tokens": 2}), ("/v1/responses", {"model": SECOND})],
    ids=["messages", "responses"],
)
def test_router_a_request_without_its_input_is_a_400(router: Project, router_key: str, path: str, body: object) -> None:
    r = requests.post(f"{router.url}{path}", json=body, headers={"Authorization": f"Bearer {router_key}"}, timeout=30)
    assert r.status_code == 400, r.text
