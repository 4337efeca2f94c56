"""Tool calls (issue 22) through the OpenAI door of the real image, with the real `openai` client: a client that
requires a tool call gets one, or a 400 that says why; never text.

One board in router mode serves the chat templates of the catalog's families side by side: the embedded Gemma 3
270M GGUF (a real model, so grammar-constrained calls are quick and short) copied under one name per template, each
with its template next to it as `<model>.jinja` (the sibling rule that `llmpi models pull` relies on). The tool-call
format is the template's, not the weights': llama.cpp's autoparser reads it from the template alone.

  tools-qwen2.5    Qwen2.5's template (Hermes-style <tool_call> JSON), llama.cpp's models/templates copy
  tools-qwen3      Qwen3's template (the same calls, with <think>)
  tools-llama3.2   Llama 3.2's template (a bare JSON object with "name" and "parameters")
  tools-mistral    service/templates/mistral-v3.jinja, the one the catalog gives Mistral 7B v0.3 ([TOOL_CALLS])
  tools-plain      a template without tools: "required" is a 400
  gemma-3-270m-q4_k_m   the embedded model with service/templates/gemma3.jinja (the image's default model)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import requests

from tests.compose_helpers import ROOT, Project

pytestmark = pytest.mark.ollama
HERE = Path(__file__).resolve().parent
EMBEDDED_FILE = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"
EMBEDDED = "gemma-3-270m-q4_k_m"
PLAIN_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
TEMPLATES = {
    "tools-qwen2.5": (HERE / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(),
    "tools-qwen3": (HERE / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text(),
    "tools-llama3.2": (HERE / "templates" / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(),
    "tools-mistral": (ROOT / "service" / "templates" / "mistral-v3.jinja").read_text(),
    "tools-plain": PLAIN_TEMPLATE,
}
CALLERS = [EMBEDDED, "tools-qwen2.5", "tools-qwen3", "tools-llama3.2", "tools-mistral"]
# small enums and booleans: a constrained call is a few dozen tokens, whatever the model would rather say
LIGHT = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a light in a room",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
            "required": ["room", "on"],
        },
    },
}
THERMOSTAT = {
    "type": "function",
    "function": {
        "name": "HassClimateSetTemperature",
        "description": "Sets the temperature of a room",
        "parameters": {
            "type": "object",
            "properties": {"temperature": {"type": "integer", "enum": [18, 20, 22]}},
            "required": ["temperature"],
        },
    },
}
ASK = [{"role": "user", "content": "Turn on the kitchen light, please."}]
CANNOT = "this model's chat template cannot call tools"
MAX_TOKENS = 64  # a call is 40 to 50 tokens


def seed(p: Project, name: str, template: str) -> None:
    """A copy of the embedded GGUF as `name`, its chat template beside it and a manifest (what a pull leaves)."""
    manifest = {"name": name, "file": f"{name}.gguf", "kind": "chat", "quant": "Q4_K_M", "source": {"test": True}}
    script = (
        f"cp {EMBEDDED_FILE} /data/models/{name}.gguf && cat > /data/models/{name}.jinja && "
        f"printf '%s' '{json.dumps(manifest)}' > /data/models/{name}.json"
    )
    p.compose("exec", "-T", "llmpi", "sh", "-c", script, input=template)


@pytest.fixture(scope="module")
def tool_board(appliance_image: str) -> Iterator[Project]:
    """The board described above: started with the embedded model alone, seeded, restarted into router mode."""
    p = Project(f"llmpi-tools-{os.getpid()}", env={"LLMPI_CTX_SIZE": "2048"})
    p.up()
    try:
        p.wait_healthy(180)
        p.exec(["mkdir", "-p", "/data/models"])
        for name, template in TEMPLATES.items():
            seed(p, name, template)
        p.compose("restart", "llmpi")
        p.wait_healthy(240)
        yield p
    finally:
        p.save_logs()
        p.down()


@pytest.fixture(scope="module")
def client(tool_board: Project) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{tool_board.url}/v1", api_key=tool_board.stored_key(), max_retries=0, timeout=180)


def calls_of(reply: Any, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The reply's tool calls as (name, parsed arguments): there are some, and each call's arguments are JSON."""
    choice = reply.choices[0]
    assert choice.message.tool_calls, f"no tool calls: finish_reason={choice.finish_reason} {choice.message.content!r}"
    # Mistral's calls end with an id the model writes itself: a small model may write it until max_tokens, after
    # the call's arguments are complete
    assert choice.finish_reason == "tool_calls" or (model == "tools-mistral" and choice.finish_reason == "length")
    return [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]


def ask(client: openai.OpenAI, model: str, **kw: Any) -> Any:
    extra = {"chat_template_kwargs": {"enable_thinking": False}} if model == "tools-qwen3" else None
    kw.setdefault("max_tokens", MAX_TOKENS)
    return client.chat.completions.create(
        model=model, messages=kw.pop("messages", ASK), temperature=0, extra_body=extra, **kw
    )


def test_the_board_serves_every_template(client: openai.OpenAI) -> None:
    assert {m.id for m in client.models.list().data} >= {*CALLERS, "tools-plain"}


@pytest.mark.contract
@pytest.mark.parametrize("model", CALLERS)
def test_required_and_named_calls_parse_and_their_results_go_back(client: openai.OpenAI, model: str) -> None:
    """One model at a time (each model's checks together, so the router never swaps models back and forth):
    "required" gives one call, first, with JSON arguments; the next turn carries the call and its result back (200);
    a named choice calls that function and no other."""
    reply = ask(client, model, tools=[LIGHT, THERMOSTAT], tool_choice="required", parallel_tool_calls=False)
    calls = calls_of(reply, model)
    assert len(calls) == 1 and not reply.choices[0].message.content  # the call first, and only one
    name, args = calls[0]
    assert (name, sorted(args)) in (("HassTurnOn", ["on", "room"]), ("HassClimateSetTemperature", ["temperature"]))
    first = reply.choices[0].message.tool_calls[0]
    assert first.id
    follow = ask(
        client,
        model,
        tools=[LIGHT, THERMOSTAT],
        max_tokens=8,
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [first.model_dump(exclude_none=True)]},
            {"role": "tool", "tool_call_id": first.id, "content": '{"success": true}'},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")

    named = {"type": "function", "function": {"name": "HassClimateSetTemperature"}}
    reply = ask(client, model, tools=[LIGHT, THERMOSTAT], tool_choice=named, parallel_tool_calls=False)
    calls = calls_of(reply, model)
    assert [name for name, _ in calls] == ["HassClimateSetTemperature"]
    assert calls[0][1]["temperature"] in (18, 20, 22), calls

    # parallel calls: several may come; a small model may go on calling until max_tokens, so the last call of a
    # reply cut short may be unfinished: every call before it parses
    reply = ask(client, model, tools=[LIGHT, THERMOSTAT], tool_choice="required", parallel_tool_calls=True)
    got = reply.choices[0].message.tool_calls
    assert got and reply.choices[0].finish_reason in ("tool_calls", "length"), reply
    finished = got if reply.choices[0].finish_reason == "tool_calls" or model == "tools-mistral" else got[:-1]
    assert finished, f"a reply cut short holds no finished call: {reply}"
    for call in finished:
        assert call.function.name in ("HassTurnOn", "HassClimateSetTemperature")
        assert isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("model", CALLERS)
def test_the_same_exchange_through_the_ollama_door(tool_board: Project, model: str) -> None:
    """/api/chat with the same tools: each NDJSON line is the official client's ChatResponse; the call comes whole,
    its arguments an object; its result goes back as Ollama's tool message. Ollama's API has no tool_choice: the door
    takes OpenAI's as it is (forced here, so that every family must call), and the ollama client's own request (the
    model free to choose) comes back as a call or as text, never broken."""
    key = tool_board.stored_key()
    body: dict[str, Any] = {"model": model, "messages": ASK, "tools": [LIGHT, THERMOSTAT], "tool_choice": "required",
                            "parallel_tool_calls": False, "think": False,
                            "options": {"temperature": 0, "num_predict": MAX_TOKENS}}  # fmt: skip
    r = requests.post(f"{tool_board.ollama_url}/api/chat", json=body, timeout=180,
                      headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    assert r.status_code == 200, r.text
    lines = [ollama.ChatResponse.model_validate_json(line) for line in r.text.splitlines() if line.strip()]
    calls = [c for line in lines for c in line.message.tool_calls or []]
    assert len(calls) == 1 and lines[-1].done, lines
    assert calls[0].function.name in ("HassTurnOn", "HassClimateSetTemperature")
    assert isinstance(calls[0].function.arguments, dict) and calls[0].function.arguments
    c = ollama.Client(host=tool_board.ollama_url, headers={"Authorization": f"Bearer {key}"}, timeout=180)
    follow = c.chat(
        model,
        [
            *ASK,
            {"role": "assistant", "content": "", "tool_calls": [calls[0].model_dump()]},
            {"role": "tool", "content": '{"success": true}', "tool_name": calls[0].function.name},
        ],
        tools=[LIGHT, THERMOSTAT],
        think=False,
        options={"temperature": 0, "num_predict": 8},
    )
    assert follow.done
    free = c.chat(model, ASK, tools=[LIGHT, THERMOSTAT], think=False, options={"temperature": 0, "num_predict": 64})
    for call in free.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)


@pytest.mark.contract
def test_a_named_function_that_is_not_in_tools_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, EMBEDDED, tools=[LIGHT], tool_choice={"type": "function", "function": {"name": "Nope"}})
    assert '"Nope", which is not in tools' in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, EMBEDDED, tool_choice="required")  # nothing to call
    assert "needs at least one function" in str(e.value)


@pytest.mark.contract
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "HassTurnOn"}}], ids=["required", "named"]
)
def test_a_model_that_cannot_call_tools_says_so_with_a_400(client: openai.OpenAI, choice: Any) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, "tools-plain", tools=[LIGHT], tool_choice=choice)
    assert CANNOT in str(e.value) and "LLMPI_CHAT_TEMPLATE_FILE" in str(e.value)


def test_auto_without_a_tool_format_is_answered_with_text(client: openai.OpenAI) -> None:
    """With "auto" the model chooses: a template without tools is answered as before (nothing was required)."""
    reply = ask(client, "tools-plain", tools=[LIGHT], tool_choice="auto", max_tokens=4)
    assert reply.choices[0].message.tool_calls is None


def test_gemma_without_tools_renders_the_prompt_it_always_did(tool_board: Project) -> None:
    """The Gemma template's tool section changes nothing for a conversation without tools (the unit test renders it
    with jinja2; this is llama.cpp's own renderer)."""
    key = tool_board.stored_key()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " hi "}]
    r = requests.post(
        f"{tool_board.url}/apply-template",
        json={"model": EMBEDDED, "messages": messages},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    # llama-server leaves the BOS token out of the text (it is added when the prompt is tokenized)
    assert r.json()["prompt"] == "<start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n"
