"""Ollama's request and reply shapes to and from llama-server's OpenAI ones, field for field, without I/O.

Ollama's API reference (docs/api.md) and its Go types (api/types.go) are the source for every field here; what llmpi
does with each one is the endpoint table in docs/ollama.md.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NS = 1_000_000  # nanoseconds in a millisecond: llama-server times in ms, Ollama in ns

# Ollama's `options` that mean the same thing to llama-server, under llama-server's name; the runtime options
# (num_gpu, num_thread, use_mmap, num_batch, ...) are the board's to decide and are ignored, as Ollama ignores what
# a runner cannot change
SAMPLING_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "num_keep": "n_keep",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


class BadRequest(ValueError):
    """A request llmpi cannot take as it is: Ollama's 400 with this sentence."""


_second: list[Any] = [-1, ""]  # the last second formatted (a stream's chunks come many a second)


def now_iso() -> str:
    """Ollama's created_at: RFC 3339 in UTC with nanoseconds."""
    t = time.time()
    if int(t) != _second[0]:
        _second[:] = [int(t), time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))]
    return f"{_second[1]}.{int(t % 1 * 1e9):09d}Z"


def image_url(b64: Any) -> str:
    """A base64 image of Ollama's `images` as the data: URL llama-server takes (the type from its first bytes)."""
    if not isinstance(b64, str) or not b64:
        raise BadRequest("each entry of images must be a base64 string")
    if b64.startswith("data:"):
        return b64
    try:
        start = base64.b64decode(b64[:16], validate=True)
    except ValueError:
        raise BadRequest("each entry of images must be a base64 string (no URLs: send the image itself)") from None
    mime = next((m for magic, m in IMAGE_TYPES if start.startswith(magic)), "image/png")
    return f"data:{mime};base64,{b64}"


def sampling(options: Any, body: Mapping[str, Any]) -> dict[str, Any]:
    """Ollama's `options` as llama-server's sampling fields; num_predict as max_tokens (llama-server caps it at
    LLMPI_MAX_TOKENS); `format` as response_format."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    out: dict[str, Any] = {}
    for name, target in SAMPLING_OPTIONS.items():
        if options.get(name) is not None:
            out[target] = options[name]
    predict = options.get("num_predict")
    if isinstance(predict, int) and not isinstance(predict, bool) and predict >= 0:
        out["max_tokens"] = predict
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise BadRequest('format must be "json" or a JSON schema object')
    return out


def thinking(body: Mapping[str, Any]) -> dict[str, Any]:
    """`think`: off unless asked; true (or a level, "low" / "medium" / "high") turns the template's thinking on and
    returns the thoughts apart (message.thinking)."""
    think = body.get("think")
    if think in (None, False):
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if think is True:
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_format": "deepseek"}
    if think in ("low", "medium", "high"):
        return {
            "chat_template_kwargs": {"enable_thinking": True},
            "reasoning_format": "deepseek",
            "reasoning_effort": think,
        }
    raise BadRequest('think must be true, false, "low", "medium" or "high"')


def tool_arguments_text(args: Any) -> str:
    """A call's arguments as OpenAI sends them (a JSON string); Ollama sends an object."""
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {})


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: images as image parts, a tool call's arguments as a string, each tool result
    tied to the call it answers (by tool_name, else in order)."""
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out: list[dict[str, Any]] = []
    open_calls: list[tuple[str, str]] = []  # (id, name) of the last assistant message's calls not yet answered
    for n, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise BadRequest(f"messages[{n}] must be an object with a role")
        role, content = m["role"], m.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{n}].content must be a string")
        msg: dict[str, Any] = {"role": role, "content": content}
        images = m.get("images") or []
        if not isinstance(images, list):
            raise BadRequest(f"messages[{n}].images must be a list of base64 strings")
        if images:
            msg["content"] = [{"type": "text", "text": content}] + [
                {"type": "image_url", "image_url": {"url": image_url(i)}} for i in images
            ]
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if calls:
                msg["tool_calls"], open_calls = assistant_calls(calls, n)
            if m.get("thinking"):
                msg["reasoning_content"] = m["thinking"]
        elif role == "tool":
            msg["tool_call_id"] = answered_call(open_calls, m.get("tool_name") or m.get("name"), n)
        out.append(msg)
    return out


def assistant_calls(calls: Any, n: int) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    if not isinstance(calls, list):
        raise BadRequest(f"messages[{n}].tool_calls must be a list")
    wired, ids = [], []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"messages[{n}].tool_calls[{i}] must have function.name")
        call_id = str(call.get("id") or f"call_{n}_{i}")
        wired.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": fn["name"], "arguments": tool_arguments_text(fn.get("arguments"))},
            }
        )
        ids.append((call_id, fn["name"]))
    return wired, ids


def answered_call(open_calls: list[tuple[str, str]], name: Any, n: int) -> str:
    """The id of the call a tool message answers, taken off the open calls: the first of that name, else the
    first; a tool message after no call gets an id of its own (templates that take tool results without calls)."""
    for i, (call_id, call_name) in enumerate(open_calls):
        if name is None or call_name == name:
            del open_calls[i]
            return call_id
    return f"call_{n}"


def chat_request(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """POST /api/chat as llama-server's /v1/chat/completions."""
    req: dict[str, Any] = {"model": model, "messages": chat_messages(body.get("messages") or []), "stream": stream}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        req["tools"] = tools
        # not Ollama's: OpenAI's tool_choice and parallel_tool_calls, taken as they are (Ollama ignores them)
        for extra in ("tool_choice", "parallel_tool_calls"):
            if extra in body:
                req[extra] = body[extra]
    req.update(sampling(body.get("options"), body))
    req.update(thinking(body))
    if stream:
        req["stream_options"] = {"include_usage": True}
    return req


def generate_request(body: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """POST /api/generate (not raw) as a chat: the system prompt and the prompt with its images, through the
    model's own template, as Ollama does."""
    if body.get("suffix"):
        raise BadRequest("suffix (fill-in-the-middle) is not served on this port; use llama-server's /infill on 8080")
    if body.get("template"):
        raise BadRequest("a per-request template is not served; set LLMPI_CHAT_TEMPLATE_FILE for the model instead")
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": body.get("prompt") or "", "images": body.get("images") or []})
    return chat_request({**body, "messages": messages, "tools": None}, model, stream)


def raw_request(body: Mapping[str, Any], stream: bool) -> dict[str, Any]:
    """POST /api/generate with raw: true as llama-server's /completion: the prompt as it is, no template."""
    if body.get("images"):
        raise BadRequest("images need the model's template: leave raw off")
    req: dict[str, Any] = {"prompt": body.get("prompt") or "", "stream": stream, "cache_prompt": True}
    opts = sampling(body.get("options"), body)
    if "max_tokens" in opts:
        opts["n_predict"] = opts.pop("max_tokens")
    if "response_format" in opts:
        rf = opts.pop("response_format")
        req["json_schema"] = rf.get("json_schema", {}).get("schema", {})
    req.update(opts)
    return req


def embed_inputs(body: Mapping[str, Any], old: bool) -> list[str]:
    """/api/embed's `input` (a string or a list of them); the older /api/embeddings' `prompt`."""
    raw = body.get("prompt") if old else body.get("input")
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items) or (not old and not items):
        raise BadRequest("prompt must be a string" if old else "input must be a string or a list of strings")
    return items


@dataclass
class Timing:
    """Ollama's durations of one answer, in ns: measured here (total, and the wait before llama-server began the
    prompt: a slot, or the model's load) and taken from llama-server's timings (prompt, generation)."""

    started: float = field(default_factory=time.monotonic)
    first_byte: float | None = None
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0

    def take(self, timings: Any, usage: Any) -> None:
        if isinstance(timings, dict):
            self.prompt_n = int(timings.get("prompt_n") or 0)
            self.prompt_ms = float(timings.get("prompt_ms") or 0.0)
            self.predicted_n = int(timings.get("predicted_n") or 0)
            self.predicted_ms = float(timings.get("predicted_ms") or 0.0)
        elif isinstance(usage, dict):
            self.prompt_n = int(usage.get("prompt_tokens") or 0)
            self.predicted_n = int(usage.get("completion_tokens") or 0)

    def fields(self) -> dict[str, int]:
        total = time.monotonic() - self.started
        if self.first_byte is None:  # a whole answer: what is not llama-server's prompt or generation
            load = max(0.0, total * 1000 - self.prompt_ms - self.predicted_ms)
        else:  # a stream: the first token came after the wait, the prompt and one token's generation
            per_token = self.predicted_ms / self.predicted_n if self.predicted_n else 0.0
            load = max(0.0, (self.first_byte - self.started) * 1000 - self.prompt_ms - per_token)
        return {
            "total_duration": int(total * 1e9),
            "load_duration": int(load * NS),
            "prompt_eval_count": self.prompt_n,
            "prompt_eval_duration": int(self.prompt_ms * NS),
            "eval_count": self.predicted_n,
            "eval_duration": int(self.predicted_ms * NS),
        }


def done_reason(finish: Any, has_calls: bool) -> str:
    """OpenAI's finish_reason as Ollama's done_reason ("stop" for a turn that ends in tool calls, as Ollama says)."""
    return "length" if finish == "length" else "stop"


def ollama_tool_calls(calls: Any) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) as Ollama's (an object). Arguments that are not a JSON object
    are kept as the text the model wrote, under "arguments": never silently dropped."""
    out = []
    for i, c in enumerate(calls or []):
        fn = c.get("function") or {}
        text = fn.get("arguments") or "{}"
        try:
            args = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            args = None
        if not isinstance(args, dict):
            args = {"arguments": text}
        call: dict[str, Any] = {"function": {"index": i, "name": fn.get("name", ""), "arguments": args}}
        if c.get("id"):
            call["id"] = c["id"]
        out.append(call)
    return out


class CallCollector:
    """A stream's tool-call deltas put together by index: Ollama sends each call whole."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        for d in deltas or []:
            i = int(d.get("index", len(self.calls)))
            call = self.calls.setdefault(i, {"id": "", "function": {"name": "", "arguments": ""}})
            if d.get("id"):
                call["id"] = d["id"]
            fn = d.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""

    def take(self) -> list[dict[str, Any]]:
        calls = ollama_tool_calls([self.calls[i] for i in sorted(self.calls)])
        self.calls = {}
        return calls


def chat_chunk(
    model: str, content: str, thinking_text: str = "", calls: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking_text:
        message["thinking"] = thinking_text
    if calls:
        message["tool_calls"] = calls
    return {"model": model, "created_at": now_iso(), "message": message, "done": False}


def generate_chunk(model: str, text: str, thinking_text: str = "") -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": model, "created_at": now_iso(), "response": text, "done": False}
    if thinking_text:
        chunk["thinking"] = thinking_text
    return chunk


def final_chunk(model: str, generate: bool, reason: str, timing: Timing) -> dict[str, Any]:
    chunk: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if generate:
        chunk["response"] = ""
    else:
        chunk["message"] = {"role": "assistant", "content": ""}
    chunk.update({"done": True, "done_reason": reason})
    chunk.update(timing.fields())
    return chunk


def chat_reply(model: str, reply: Mapping[str, Any], generate: bool, timing: Timing) -> dict[str, Any]:
    """A whole (stream: false) OpenAI chat completion as Ollama's one answer."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    timing.take(reply.get("timings"), reply.get("usage"))
    calls = ollama_tool_calls(msg.get("tool_calls"))
    out = final_chunk(model, generate, done_reason(choice.get("finish_reason"), bool(calls)), timing)
    text, thought = msg.get("content") or "", msg.get("reasoning_content") or ""
    if generate:
        out["response"] = text
        if thought:
            out["thinking"] = thought
    else:
        out["message"] = chat_chunk(model, text, thought, calls)["message"]
    return out
