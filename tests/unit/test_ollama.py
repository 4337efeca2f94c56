"""The Ollama door's translation, field for field, and its small parts (keep_alive, names, pull progress); the door
itself against the real image is tests/ollama/test_ollama_api.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from llmpi.core import limits
from llmpi.core.settings import Settings
from llmpi.ollama import door, http, keepalive, listing, manage, translate
from llmpi.ollama.translate import BadRequest

pytestmark = pytest.mark.unit
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()


def test_chat_request_maps_options_format_and_think() -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0, "top_k": 5, "num_predict": 7, "stop": ["x"], "seed": 3, "num_gpu": 99},
        "format": {"type": "object", "properties": {"a": {"type": "string"}}},
        "think": True,
    }
    req = translate.chat_request(body, "m", stream=True)
    assert req["model"] == "m" and req["stream"] is True and req["stream_options"] == {"include_usage": True}
    assert (req["temperature"], req["top_k"], req["max_tokens"], req["stop"], req["seed"]) == (0, 5, 7, ["x"], 3)
    assert "num_gpu" not in req  # the board's to decide
    assert req["response_format"]["json_schema"]["schema"] == body["format"]
    assert req["chat_template_kwargs"] == {"enable_thinking": True} and req["reasoning_format"] == "deepseek"
    forced = translate.chat_request({"messages": [], "tools": [{}], "tool_choice": "required"}, "m", stream=False)
    assert forced["tool_choice"] == "required"  # OpenAI's, taken as it is (Ollama has none)
    plain = translate.chat_request({"messages": [], "format": "json"}, "m", stream=False)
    assert plain["chat_template_kwargs"] == {"enable_thinking": False}  # off unless asked
    assert plain["response_format"] == {"type": "json_object"} and "stream_options" not in plain


def test_images_become_data_urls_of_their_type() -> None:
    msgs = translate.chat_messages([{"role": "user", "content": "what is it?", "images": [PNG]}])
    parts = msgs[0]["content"]
    assert parts[0] == {"type": "text", "text": "what is it?"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    with pytest.raises(BadRequest, match="base64"):
        translate.chat_messages([{"role": "user", "content": "", "images": ["https://example.com/x.png"]}])


def test_tool_calls_round_trip_with_ids_tied_to_results() -> None:
    msgs = translate.chat_messages(
        [
            {"role": "user", "content": "lights"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "HassTurnOn", "arguments": {"name": "kitchen"}}},
                    {"function": {"name": "HassLightSet", "arguments": {"brightness": 50}}},
                ],
            },
            {"role": "tool", "content": "ok", "tool_name": "HassLightSet"},
            {"role": "tool", "content": "ok"},
        ]
    )
    calls = msgs[1]["tool_calls"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"name": "kitchen"}
    assert msgs[2]["tool_call_id"] == calls[1]["id"]  # by name
    assert msgs[3]["tool_call_id"] == calls[0]["id"]  # the one left


def test_stream_deltas_of_a_call_are_put_together_as_an_object() -> None:
    c = translate.CallCollector()
    c.add([{"index": 0, "id": "call_1", "function": {"name": "Hass", "arguments": '{"na'}}])
    c.add([{"index": 0, "function": {"name": "TurnOn", "arguments": 'me": "lamp"}'}}])
    assert c.take() == [{"function": {"index": 0, "name": "HassTurnOn", "arguments": {"name": "lamp"}}, "id": "call_1"}]
    kept = translate.ollama_tool_calls([{"function": {"name": "f", "arguments": "not json"}}])
    assert kept[0]["function"]["arguments"] == {"arguments": "not json"}  # never dropped


def test_a_whole_reply_has_ollamas_fields_in_nanoseconds() -> None:
    reply: dict[str, Any] = {
        "choices": [{"message": {"content": "Hello", "reasoning_content": "hmm"}, "finish_reason": "length"}],
        "timings": {"prompt_n": 12, "prompt_ms": 30.5, "predicted_n": 4, "predicted_ms": 80.0},
    }
    timing = translate.Timing()
    timing.started -= 0.115  # the request came 115 ms ago: 110.5 of them llama-server's
    out = translate.chat_reply("m:latest", reply, generate=False, timing=timing)
    assert out["done"] is True and out["done_reason"] == "length"
    assert out["message"] == {"role": "assistant", "content": "Hello", "thinking": "hmm"}
    assert (out["prompt_eval_count"], out["prompt_eval_duration"]) == (12, 30_500_000)
    assert (out["eval_count"], out["eval_duration"]) == (4, 80_000_000)
    assert out["total_duration"] >= out["load_duration"] >= 0
    assert out["load_duration"] < 10_000_000  # a whole answer: the time that was neither prompt nor generation
    gen = translate.chat_reply("m:latest", reply, generate=True, timing=translate.Timing())
    assert gen["response"] == "Hello" and gen["thinking"] == "hmm" and "message" not in gen


@pytest.mark.parametrize("bad", [{"messages": "hi"}, {"messages": [{"content": "x"}]}, {"messages": [], "think": 3}])
def test_bad_requests_say_what_is_wrong(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        translate.chat_request(bad, "m", stream=False)


def test_generate_refuses_what_it_cannot_do_and_embed_takes_strings() -> None:
    with pytest.raises(BadRequest, match="suffix"):
        translate.generate_request({"prompt": "def f(", "suffix": "return"}, "m", stream=False)
    assert translate.embed_inputs({"input": "a"}, old=False) == ["a"]
    assert translate.embed_inputs({"prompt": "a"}, old=True) == ["a"]
    with pytest.raises(BadRequest):
        translate.embed_inputs({"input": [1, 2]}, old=False)
    raw = translate.raw_request({"prompt": "x", "options": {"num_predict": 3}, "format": "json"}, stream=False)
    assert raw["n_predict"] == 3 and raw["json_schema"] == {} and "max_tokens" not in raw


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (0, 0.0), (-1, -1.0), ("5m", 300.0), ("1h30m", 5400.0), ("-1m", -60.0)]
)
def test_keep_alive_durations(value: Any, expected: float | None) -> None:
    assert keepalive.seconds(value) == expected


def test_keep_alive_unloads_only_idle_models_whose_time_is_up() -> None:
    k = keepalive.KeepAlive()
    k.begin("a")
    k.end("a", 0)
    k.begin("b")
    k.set("b", 0)
    k.set("c", -1)
    assert k.due() == ["a"]  # b is busy, c is kept
    assert k.expires_at("c") == listing.FOREVER
    with pytest.raises(BadRequest):
        keepalive.seconds("soon")


def test_names_with_and_without_ollamas_tag() -> None:
    names = ["qwen3-4b-instruct", "gemma:2b"]
    assert listing.served_name("qwen3-4b-instruct:latest", names) == "qwen3-4b-instruct"
    assert listing.served_name("gemma:2b", names) == "gemma:2b"
    assert listing.served_name("llama3.2", names) is None
    assert listing.ollama_name("qwen3-4b-instruct") == "qwen3-4b-instruct:latest"
    assert manage.hub_name("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M") == (
        "bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    )
    assert manage.hub_name("qwen3-0.6b:latest") == "qwen3-0.6b"


def test_pull_progress_in_ollamas_shape() -> None:
    line = manage.progress_line({"file": "m.gguf", "sha256": "ab", "total_bytes": 10, "done_bytes": 4})
    assert line == {"status": "pulling m.gguf", "digest": "sha256:ab", "total": 10, "completed": 4}


def test_router_entry_gives_path_slot_context_and_kind(tmp_path: Any) -> None:
    entry = {
        "id": "emb",
        "tags": ["embedding"],
        "status": {"value": "loaded", "preset": "[emb]\nmodel = /x/e.gguf\nctx-size = 4096\nparallel = 2\n"},
    }
    m = listing.from_router(entry)
    assert (m.name, m.loaded, m.kind, str(m.path), m.slot_ctx) == ("emb", True, "embedding", "/x/e.gguf", 2048)
    assert listing.capabilities(m) == ["embedding"]
    chat = listing.Served("c", True, "vision", None, None, "{% if tools %}{{ tool_calls }}{% endif %}<think>", {})
    assert listing.capabilities(chat) == ["completion", "tools", "vision", "thinking"]


def test_requests_are_read_with_their_limits() -> None:
    async def read(data: bytes, max_body: int = 100) -> http.Request | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await http.read_request(reader, max_body)

    req = asyncio.run(read(b"POST /api/chat?x=1 HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer k\r\n\r\n{}"))
    assert req is not None and (req.method, req.path, req.body, req.keep_alive) == ("POST", "/api/chat", b"{}", True)
    assert req.headers["authorization"] == "Bearer k" and req.query == {"x": ["1"]}
    chunked = asyncio.run(read(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"))
    assert chunked is not None and chunked.body == b"{}"
    assert asyncio.run(read(b"")) is None
    with pytest.raises(limits.HTTPError) as e:
        asyncio.run(read(b"POST / HTTP/1.1\r\nContent-Length: 500\r\n\r\n"))
    assert e.value.status == 413
    with pytest.raises(limits.HTTPError):
        asyncio.run(read(b"garbage\r\n\r\n"))


class Sink:
    """The client's end of the door's stream: what was written."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, b: bytes) -> None:
        self.data += b

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    def lines(self) -> list[dict[str, Any]]:
        body, out = self.data.split(b"\r\n\r\n", 1)[1], []
        while body:
            size, _, rest = body.partition(b"\r\n")
            n = int(size, 16)
            if n:
                out.append(json.loads(rest[:n]))
            body = rest[n + 2 :]
        return out


def relayed(sse: bytes, cut: bool = False) -> list[dict[str, Any]]:
    """llama-server's SSE events (chunked, one event a chunk, as it sends them) through the door's stream."""
    events = [e + b"\n\n" for e in sse.split(b"\n\n") if e]
    body = b"".join(f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in events) + (b"" if cut else b"0\r\n\r\n")
    sink = Sink()

    async def relay() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(body[:-7] if cut else body)
        reader.feed_eof()
        up = http.Upstream(200, {"transfer-encoding": "chunked"}, reader, Sink())  # type: ignore[arg-type]
        d = door.Door(Settings.read({}), ("127.0.0.1", 9))
        await d.relay_stream(sink, up, "m:latest", False, False, translate.Timing(), {})  # type: ignore[arg-type]

    asyncio.run(relay())
    return sink.lines()


def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"


def test_a_stream_is_relayed_line_by_line_and_a_cut_one_ends_with_an_error() -> None:
    call = {"index": 0, "id": "c1", "function": {"name": "HassTurnOn", "arguments": '{"name": "lamp"}'}}
    sse = event({"content": "Hel"}) + event({"content": "lo"}) + event({"tool_calls": [call]}, "tool_calls")
    lines = relayed(sse + b"data: [DONE]\n\n")
    assert [line["message"]["content"] for line in lines[:2]] == ["Hel", "lo"]
    assert lines[2]["message"]["tool_calls"][0]["function"]["arguments"] == {"name": "lamp"}
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop" and len(lines) == 4
    cut = relayed(event({"content": "Hel"}) + event({"content": "lo"}), cut=True)
    assert cut[-1]["error"].startswith("the model server stopped answering") and not cut[-1].get("done")


def test_a_pull_too_fast_to_watch_still_reports_its_file_whole(tmp_path: Path) -> None:
    """/api/pull's progress: the pulled file's digest and size from its manifest once the command says `pulled`."""
    (tmp_path / "second.Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(996))
    manifest = {"name": "second", "file": "second.Q4_K_M.gguf", "sha256": "ab" * 32}
    (tmp_path / "second.Q4_K_M.json").write_text(json.dumps(manifest))
    said = ["llmpi: pulling second: verifying", 'pulled second (Q4_K_M, 0.00 GB): use it with "model": "second"']
    assert manage.finished_line(said, tmp_path) == {
        "status": "pulling second.Q4_K_M.gguf",
        "digest": "sha256:" + "ab" * 32,
        "total": 1000,
        "completed": 1000,
    }
    assert manage.finished_line(said[:1], tmp_path) is None  # no `pulled` line: nothing claimed
    assert manage.finished_line(["pulled third (Q4_K_M, 0.00 GB): ..."], tmp_path) is None
