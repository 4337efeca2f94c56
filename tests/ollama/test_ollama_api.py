"""The Ollama API on port 11434 (issue 22) with the official `ollama` Python client (the one Home Assistant's
integration uses), against the real image: the session's appliance (one model), then a board in router mode with an
admin key, pulling from the hub stand-in through /api/pull."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import ollama
import pytest
import requests

from tests.appliance.test_models import EMBEDDED, bridge_address
from tests.compose_helpers import Project, wait_for
from tests.hubstub import Hub, Repo

pytestmark = pytest.mark.ollama
ADMIN = "sk-admin-ollama-tests-0123456789"
SCHEMA = {"type": "object", "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
          "required": ["room", "on"]}  # fmt: skip
LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "HassTurnOn",
        "description": "Turns on a device or entity",
        "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
    },
}


def client(project: Project, key: str) -> ollama.Client:
    return ollama.Client(host=project.ollama_url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def door(main_project: Project, api_key: str) -> ollama.Client:
    return client(main_project, api_key)


@pytest.fixture(scope="module")
def model(door: ollama.Client) -> str:
    return str(door.list().models[0].model)


def test_list_show_ps_version_describe_the_board(door: ollama.Client, appliance: Project, api_key: str) -> None:
    models = door.list().models
    assert len(models) == 1
    m = models[0]
    assert m.model == "gemma-3-270m-q4_k_m:latest"  # Ollama's names carry a tag
    assert m.size and m.size > 200e6 and m.digest and len(m.digest) == 64
    assert m.details and m.details.family == "gemma3" and m.details.quantization_level == "Q4_K_M"
    assert m.details.parameter_size and m.details.parameter_size.endswith("M")
    shown = door.show(m.model)
    assert shown.capabilities and "completion" in shown.capabilities and "embedding" not in shown.capabilities
    assert shown.modelinfo and shown.modelinfo["gemma3.context_length"] == 32768
    assert shown.template and "start_of_turn" in shown.template
    assert shown.parameters and shown.parameters.startswith("num_ctx ")
    ps = door.ps().models
    assert [p.model for p in ps] == [m.model] and ps[0].expires_at and ps[0].context_length
    version = requests.get(f"{appliance.ollama_url}/api/version", headers={"Authorization": f"Bearer {api_key}"})
    assert version.status_code == 200 and version.json()["version"].count(".") == 2


def test_keys_as_ollama_apps_send_them(door: ollama.Client, appliance: Project, api_key: str, model: str) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        client(appliance, "sk-wrong-key-1234567890").list()
    assert e.value.status_code == 401
    for path in ("/", "/api/version", "/api/tags"):
        assert requests.get(appliance.ollama_url + path, timeout=10).status_code == 401
    root = requests.get(appliance.ollama_url + "/", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert root.status_code == 200 and root.text == "Ollama is running"
    with pytest.raises(ollama.ResponseError) as e:
        door.pull("qwen3-0.6b")
    assert e.value.status_code == 403 and "admin key" in str(e.value)
    for path in ("/api/create", "/api/copy", "/api/push"):
        r = requests.post(appliance.ollama_url + path, json={}, headers={"Authorization": f"Bearer {api_key}"})
        assert r.status_code == 501 and "llmpi" in r.json()["error"]


def test_chat_streams_ndjson_with_ollamas_final_counts(door: ollama.Client, model: str) -> None:
    parts = list(
        door.chat(
            model, [{"role": "user", "content": "Say hello."}], stream=True, options={"num_predict": 12}, keep_alive=-1
        )
    )
    assert len(parts) >= 3 and not any(p.done for p in parts[:-1])
    last = parts[-1]
    text = "".join(p.message.content or "" for p in parts)
    assert last.done and last.done_reason in ("stop", "length") and text.strip()
    assert last.eval_count and 0 < last.eval_count <= 12
    assert last.prompt_eval_count and last.prompt_eval_count > 3
    assert last.eval_duration and last.prompt_eval_duration and last.total_duration
    assert last.total_duration >= last.eval_duration + last.prompt_eval_duration
    # the same answer whole, and greedy sampling gives the same text both ways
    greedy = {"temperature": 0, "num_predict": 12}
    one = door.chat(model, [{"role": "user", "content": "Say hello."}], options=greedy)
    again = "".join(
        p.message.content or ""
        for p in door.chat(model, [{"role": "user", "content": "Say hello."}], stream=True, options=greedy)
    )
    assert one.done and one.message.content == again


def test_generate_and_a_json_schema_format(door: ollama.Client, model: str) -> None:
    out = door.generate(model, "The sky is", options={"num_predict": 8, "temperature": 0})
    assert out.done and (out.response or "").strip() and out.eval_count
    streamed = "".join(p.response or "" for p in door.generate(model, "The sky is", stream=True,
                                                          options={"num_predict": 8, "temperature": 0}))  # fmt: skip
    assert streamed == out.response
    raw = door.generate(model, "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", raw=True,
                        options={"num_predict": 6})  # fmt: skip
    assert raw.done and raw.eval_count
    reply = door.chat(
        model,
        [{"role": "user", "content": "The kitchen light is on. Answer as JSON."}],
        format=SCHEMA,
        options={"temperature": 0, "num_predict": 60},
    )
    data = json.loads(reply.message.content or "")
    assert isinstance(data["room"], str) and isinstance(data["on"], bool)


def test_tools_come_back_as_objects_or_as_text_never_broken(door: ollama.Client, model: str) -> None:
    reply = door.chat(
        model,
        [{"role": "user", "content": "Turn on the kitchen light."}],
        tools=[LIGHT_TOOL],
        options={"temperature": 0, "num_predict": 60},
    )
    assert reply.done
    for call in reply.message.tool_calls or []:
        assert call.function.name == "HassTurnOn" and isinstance(call.function.arguments, dict)
    # the next turn carries the call and its result, as Home Assistant sends it
    follow = door.chat(
        model,
        [
            {"role": "user", "content": "Turn on the kitchen light."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen light"}}}],
            },
            {"role": "tool", "content": '{"success": true}', "tool_name": "HassTurnOn"},
        ],
        tools=[LIGHT_TOOL],
        options={"num_predict": 20},
    )
    assert follow.done


def test_wrong_inputs_are_ollamas_errors(door: ollama.Client, model: str, appliance: Project, api_key: str) -> None:
    with pytest.raises(ollama.ResponseError) as e:
        door.chat("llama3.2:latest", [{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and "not found" in str(e.value)  # never another model in its place
    with pytest.raises(ollama.ResponseError) as e:
        door.embed(model, "hello")
    assert e.value.status_code == 400 and "embedding model" in str(e.value)
    headers = {"Authorization": f"Bearer {api_key}"}
    for body, status in (
        (b"{not json", 400),
        (json.dumps({"model": model, "messages": "hi"}).encode(), 400),
        (json.dumps({"model": model, "messages": [], "keep_alive": "soon"}).encode(), 400),
        (json.dumps({"model": model, "messages": [{"role": "user", "content": "x", "images": ["http://x"]}]}).encode(),
         400),
    ):  # fmt: skip
        r = requests.post(f"{appliance.ollama_url}/api/chat", data=body, headers=headers, timeout=30)
        assert r.status_code == status and r.json()["error"], (body, r.text)
    too_big = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False,
               "options": {"num_ctx": 1 << 20, "num_predict": 4}}  # fmt: skip
    r = requests.post(f"{appliance.ollama_url}/api/chat", json=too_big, headers=headers, timeout=60)
    assert r.status_code == 200 and "asked 1048576" in r.headers["X-Llmpi-Num-Ctx"]


# --- the calls of Open WebUI and Home Assistant, in their order, with their fields -----------------------------


def test_open_webui_sequence(main_project: Project, api_key: str) -> None:
    """Open WebUI's Ollama router (backend/open_webui/routers/ollama.py): the connection check (/api/version), the
    model list (/api/tags, then /api/ps, whose expires_at it parses with datetime.fromisoformat), /api/show, then a
    streamed chat with its options, with the user headers it forwards."""
    base = main_project.ollama_url
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}",
               "X-OpenWebUI-User-Name": "Ada", "X-OpenWebUI-User-Role": "user"}  # fmt: skip
    assert requests.get(f"{base}/api/version", headers=headers, timeout=10).json()["version"]
    tags = requests.get(f"{base}/api/tags", headers=headers, timeout=10).json()["models"]
    loaded = requests.get(f"{base}/api/ps", headers=headers, timeout=10).json()["models"]
    expires = {m["name"]: datetime.fromisoformat(m["expires_at"]).timestamp() for m in loaded}
    assert set(expires) == {m["name"] for m in tags} and all(t > time.time() for t in expires.values())
    name = tags[0]["model"]
    shown = requests.post(f"{base}/api/show", json={"model": name}, headers=headers, timeout=10).json()
    assert shown["details"]["format"] == "gguf" and shown["model_info"]
    body = {"model": name, "stream": True, "messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour."}], "options": {"temperature": 0.8, "num_predict": 16},
            "keep_alive": "5m"}  # fmt: skip
    with requests.post(f"{base}/api/chat", data=json.dumps(body), headers=headers, stream=True, timeout=60) as r:
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] and all(not line["done"] for line in lines[:-1])
    assert all(line["model"] == name and line["message"]["role"] == "assistant" for line in lines)


async def home_assistant_turn(c: ollama.AsyncClient, model: str) -> list[str]:
    """Home Assistant's conversation agent (homeassistant/components/ollama/entity.py): the tools of Assist, a
    streamed chat with keep_alive "-1s" and num_ctx 8192, and while the model calls tools, their results (role
    tool, JSON content, no tool name) sent back, at most 10 rounds. The rounds' texts."""
    tools = [LIGHT_TOOL, {"type": "function", "function": {"name": "HassTurnOff", "description": "Turns off a device",
             "parameters": {"type": "object", "properties": {"name": {"type": "string"}}}}}]  # fmt: skip
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a voice assistant for Home Assistant. Answer briefly."},
        {"role": "user", "content": "Turn on the kitchen light."},
    ]
    texts = []
    for _ in range(10):
        stream = await c.chat(model=model, messages=list(messages), tools=tools, stream=True, keep_alive="-1s",
                              options={"num_ctx": 8192, "num_predict": 48}, think=None, format=None)  # fmt: skip
        text, calls = "", list[ollama.Message.ToolCall]()
        async for part in stream:
            text += part.message.content or ""
            calls += part.message.tool_calls or []
        texts.append(text)
        messages.append({"role": "assistant", "content": text,
                         "tool_calls": [{"function": {"name": x.function.name, "arguments": x.function.arguments}}
                                        for x in calls] or None})  # fmt: skip
        if not calls:
            break
        for x in calls:
            assert isinstance(x.function.arguments, dict)
            messages.append({"role": "tool", "content": json.dumps({"success": True, "name": x.function.name})})
    return texts


def test_home_assistant_sequence(main_project: Project, api_key: str, model: str) -> None:
    async def setup_then_a_turn() -> list[str]:
        c = ollama.AsyncClient(host=main_project.ollama_url, headers={"Authorization": f"Bearer {api_key}"})
        assert (await c.list()).models  # the integration's set-up check
        return await home_assistant_turn(c, model)

    texts = asyncio.run(setup_then_a_turn())
    assert 1 <= len(texts) <= 10 and texts[-1].strip()


# --- a board in router mode, with an admin key ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub(appliance_image: str) -> Iterator[Hub]:
    gemma = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "cat", appliance_image, EMBEDDED], capture_output=True, check=True
    ).stdout
    with Hub(host=bridge_address()) as h:
        h.repos["test/Gemma-GGUF"] = Repo({"gemma-Q4_K_M.gguf": gemma})
        h.repos["test/Second-GGUF"] = Repo({"second-Q4_K_M.gguf": gemma}, sha="1" * 40)
        yield h


@pytest.fixture(scope="module")
def board(appliance_image: str, hub: Hub) -> Iterator[Project]:
    p = Project(f"llmpi-ollama-{os.getpid()}")
    p.env.update(LLMPI_MODEL="test/Gemma-GGUF", LLMPI_MEMORY_LIMIT="2G", HF_ENDPOINT=hub.url, LLMPI_ADMIN_KEY=ADMIN,
                 LLMPI_CTX_SIZE="2048", LLMPI_PARALLEL="2", LLMPI_MAX_TOKENS="8")  # fmt: skip
    p.up()
    try:
        p.wait_healthy(300)
        yield p
    finally:
        p.down()


def test_pull_with_the_admin_key_then_keep_alive_and_delete(board: Project, tmp_path: Path) -> None:
    key = board.stored_key()
    user, admin = client(board, key), client(board, ADMIN)
    with pytest.raises(ollama.ResponseError) as e:
        user.pull("test/Second-GGUF")
    assert e.value.status_code == 403
    lines = list(admin.pull("hf.co/test/Second-GGUF", stream=True))
    assert lines[-1].status == "success", lines
    assert any(p.total and p.completed is not None and (p.digest or "").startswith("sha256:") for p in lines), lines

    def names() -> set[str | None]:
        try:
            return {m.model for m in user.list().models}
        except ollama.ResponseError as e:  # 503 while llama-server restarts into router mode
            assert e.status_code == 503, e
            return set()

    wait_for(lambda: names() == {"gemma:latest", "second:latest"}, 180, pause=1, what="second in /api/tags")
    assert admin.list().models  # the admin key reads too
    # keep_alive 0: the model is unloaded after its answer
    reply = user.chat("second", [{"role": "user", "content": "Hi"}], options={"num_predict": 4}, keep_alive=0)
    assert reply.done and reply.model == "second:latest"
    wait_for(lambda: "second:latest" not in {m.model for m in user.ps().models}, 60, pause=0.5, what="unloaded")
    loaded = user.generate("second", keep_alive="3s")  # no prompt: load it, Ollama's way, for 3 s of idleness
    assert loaded.done_reason == "load" and "second:latest" in {m.model for m in user.ps().models}
    wait_for(lambda: "second:latest" not in {m.model for m in user.ps().models}, 60, pause=0.5, what="3 s idle")
    # num_predict obeys LLMPI_MAX_TOKENS (8 on this board), as max_tokens does on 8080
    capped = user.chat("gemma", [{"role": "user", "content": "Count to fifty."}], options={"num_predict": 500})
    assert capped.eval_count == 8 and capped.done_reason == "length", capped
    # a name that is not on the board is Ollama's 404, even though the router would answer it with its default
    with pytest.raises(ollama.ResponseError) as e:
        user.chat("llama3.2", [{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        user.delete("second")
    assert e.value.status_code == 403
    admin.delete("second")
    wait_for(lambda: names() == {"gemma:latest"}, 60, pause=1, what="second gone from /api/tags")
    with pytest.raises(ollama.ResponseError) as e:
        admin.delete("second")
    assert e.value.status_code == 404
