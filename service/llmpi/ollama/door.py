"""The Ollama door: Ollama's API on its own port (11434), translated onto llama-server's endpoints over loopback.

Run by supervisord as `python3 -m llmpi.ollama` (its `__main__`), beside llama-server. llama-server stays the only
engine and the OpenAI door (8080) has nothing in front of it; this process takes Ollama's requests, checks the key,
sends each to llama-server as its OpenAI request (with a key llama-server takes, so its own checks, caps and queue
apply), and maps the answer back, a stream chunk by chunk. The endpoint table is in docs/ollama.md.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import keys, limits
from ..core.env import ConfigError
from ..core.limits import HTTPError, Limits
from ..core.settings import DRAIN_SECONDS, OLLAMA_TLS_PORT, Settings
from ..tls import certs
from . import listing, manage, translate
from .http import (
    NDJSONStream,
    Request,
    Upstream,
    call,
    head_bytes,
    read_request,
    send,
    send_json,
    status_line,
)
from .keepalive import KeepAlive, seconds
from .listing import Served
from .translate import BadRequest

# the Ollama API version this door follows (api/types.go, docs/api.md at this release); apps read it to know which
# fields they may send
VERSION = "0.13.0"
KEEPALIVE_TICK = 5.0  # seconds between two looks at the keep_alive deadlines
LIST_FRESH = 1.0  # seconds an answer may use the last look at llama-server's model list
LOAD_WAIT = 600.0  # seconds a load request waits for the router to load the model (a large model from an SD card)
NOT_HERE = {
    "/api/create": "llmpi makes models with llmpi-prepare (docker compose run --rm prepare run ...) or pulls them "
    "with /api/pull or `llmpi models pull`",
    "/api/copy": "llmpi serves each model under its file's name; copy a GGUF into /data/models under another name",
    "/api/push": "llmpi does not publish models; its models come from the Hugging Face hub",
    "/api/blobs": "llmpi takes no uploaded blobs; copy a GGUF in with `docker compose cp`",
}


class Refused(Exception):
    """An answer in Ollama's error shape: {"error": message} with this status."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass
class KeyFile:
    """A key file llmpi writes (one key a line, its name and share after it, patch 0027; `!<until> <key>`: a key
    refused until then, as llama-server reads it, patch 0024), read again when it changes."""

    path: Path
    stamp: tuple[int, int] = (-1, -1)
    keys: tuple[str, ...] = ()
    refused: tuple[tuple[str, int], ...] = ()  # (key, until: seconds since the epoch)

    def current(self) -> tuple[str, ...]:
        try:
            st = self.path.stat()
        except OSError:
            return ()
        if (st.st_mtime_ns, st.st_size) != self.stamp:
            try:
                text = self.path.read_text()
            except OSError:
                return self.keys  # unreadable for a moment: the last good keys, as llama-server does
            lines = [line.split() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
            self.keys = tuple(words[0] for words in lines if not words[0].startswith("!"))
            self.refused = tuple(
                (words[1], int(words[0][1:]))
                for words in lines
                if words[0].startswith("!") and words[0][1:].isdigit() and len(words) > 1
            )
            self.stamp = (st.st_mtime_ns, st.st_size)
        return self.keys

    def refused_until(self, key: str) -> int:
        """Until when `key` is refused (seconds since the epoch; 0: it is not)."""
        self.current()
        return max(
            (until for k, until in self.refused if hmac.compare_digest(key.encode(), k.strip().encode())), default=0
        )


def matches(key: str, allowed: tuple[str, ...]) -> bool:
    """Constant time for each key compared (no early exit on the first that matches)."""
    found = False
    for k in allowed:
        found |= hmac.compare_digest(key.encode(), k.encode())
    return found


def requested_name(body: Any) -> str:
    """The model a request names: "model", or the older "name"; Ollama's 400 without one."""
    name = body.get("model") or body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise Refused(400, "model is required")
    return name


def named_model(served: list[Served], name: str) -> Served:
    """The served model an Ollama name means: Ollama's 404 when it is not on the board (never another model in its
    place)."""
    found = listing.served_name(name, [m.name for m in served])
    if found is None:
        raise Refused(404, f"model '{name}' not found")
    return next(m for m in served if m.name == found)


def client_key(req: Request) -> str:
    auth = req.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return req.headers.get("x-api-key", "").strip()


def ollama_error(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Refused:
    """llama-server's error answer ({"error": {"message": ...}}) as Ollama's, with the same status and its
    Retry-After (a busy server's 503, a key's spent tokens' 429)."""
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else err
    retry = {"Retry-After": v for k, v in (headers or {}).items() if k.lower() == "retry-after"}  # noqa: B035
    return Refused(status, str(message or f"llama-server answered {status}"), retry)


@dataclass
class Door:
    settings: Settings
    upstream: tuple[str, int]
    server_keys: KeyFile = field(default_factory=lambda: KeyFile(keys.server_keys_file()))
    admin_keys: KeyFile = field(default_factory=lambda: KeyFile(keys.admin_keys_file()))
    keep: KeepAlive = field(default_factory=KeepAlive)
    pulling: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0
    draining: bool = False
    router: bool = False
    listed: dict[str, tuple[float, list[Any]]] = field(default_factory=dict)  # the last /v1/models, by key

    # --- keys ---------------------------------------------------------------------------------------------------

    def upstream_key(self, req: Request) -> str | None:
        """The key this request goes to llama-server with: its own when llama-server knows it; for an admin key
        (which llama-server takes only for model management), the first ordinary key. Refused without a known
        key. None when keys are off (LLMPI_AUTH=off)."""
        if not self.settings.auth:
            return None
        key = client_key(req)
        if not key:
            raise Refused(401, "an API key is needed: send it as Authorization: Bearer <key>")
        served = self.server_keys.current()
        if matches(key, served):
            return key
        if matches(key, self.admin_keys.current()[1:]) and served:  # [0] is the container's internal key
            return served[0]
        until = self.server_keys.refused_until(key)
        if until > time.time():
            when = time.strftime("%H:%M:%S", time.gmtime(until))
            raise Refused(403, f"this key is refused until {when} UTC: requests made with it crashed the server twice "
                          "within a minute")  # fmt: skip
        raise Refused(401, "this API key is not valid (llmpi keys list shows the keys this board takes)")

    def own_key(self) -> str | None:
        """The container's internal admin key (the admin file's first key; None before the launcher wrote it)."""
        own = self.admin_keys.current()
        return own[0] if own else None

    def check_admin(self, req: Request) -> None:
        """Model management: only a key of LLMPI_ADMIN_KEY (never the container's own internal key)."""
        key = client_key(req)
        if self.settings.auth and not key:
            raise Refused(401, "an API key is needed: send it as Authorization: Bearer <key>")
        if not matches(key, self.admin_keys.current()[1:]):
            self.upstream_key(req)  # a wrong key is a 401, a good ordinary one a 403
            raise Refused(
                403,
                "pulling and deleting models needs the admin key (LLMPI_ADMIN_KEY); this key may use the models "
                "but not manage them",
            )

    def headers(self, key: str | None) -> dict[str, str]:
        out = {"Content-Type": "application/json"}
        if key:
            out["Authorization"] = f"Bearer {key}"
        return out

    # --- llama-server -------------------------------------------------------------------------------------------

    async def call(self, method: str, path: str, key: str | None, body: Any = None) -> Upstream:
        data = json.dumps(body).encode() if body is not None else b""
        try:
            return await call(*self.upstream, method, path, self.headers(key), data)
        except OSError as e:
            raise Refused(503, f"the model server is not answering yet ({e.strerror or e}); try again shortly",
                          {"Retry-After": "2"}) from None  # fmt: skip

    async def call_json(
        self, method: str, path: str, key: str | None, body: Any = None, accept: tuple[int, ...] = (200,)
    ) -> Any:
        """One request to llama-server and its JSON answer; an answer of another status than `accept` is
        llama-server's error as Ollama's."""
        up = await self.call(method, path, key, body)
        try:
            reply = await up.json()
        finally:
            up.close()
        if up.status not in accept:
            raise ollama_error(up.status, reply, up.headers)
        return reply

    async def get_json(self, path: str, key: str | None) -> Any:
        return await self.call_json("GET", path, key)

    async def models(self, key: str | None, full: bool = True) -> list[Served]:
        """What llama-server serves now: the router's list, or the one model (with its /props). `full`: with each
        model's file and chat template (for /api/tags, show, ps); an answer needs only the names, kinds and
        contexts, one request to llama-server (a few ms less before the first token)."""
        # asked with the container's own key once the client's was checked (the caller's upstream_key): the model's
        # path on disk and the router's presets are for an admin key only (patch 0020), and the door reads the files
        key = self.own_key() or key
        data = await self.model_list(key, fresh=full)
        self.router = any("status" in m for m in data)
        if self.router:
            return [listing.from_router(m, full) for m in data]
        props = await self.get_json("/props", key) if data and full else {}
        return [listing.from_single(m, props) for m in data]

    async def model_list(self, key: str | None, fresh: bool) -> list[Any]:
        """llama-server's /v1/models. An answer takes it from the last second's look when there is one (with the
        same key): the round trip to llama-server is most of the door's time before a first token."""
        now = time.monotonic()
        seen = self.listed.get(key or "")
        if not fresh and seen is not None and now - seen[0] < LIST_FRESH:
            return seen[1]
        data: list[Any] = (await self.get_json("/v1/models", key)).get("data") or []
        self.listed = {key or "": (now, data)}
        return data

    async def model(self, body: Any, key: str | None, full: bool = True) -> Served:
        """The served model a request names ("model", or the older "name"): Ollama's 404 when it is not on the board
        (never another model in its place)."""
        return named_model(await self.models(key, full), requested_name(body))

    # --- the routes ---------------------------------------------------------------------------------------------

    async def route(self, req: Request, writer: asyncio.StreamWriter) -> None:
        path, method = req.path.rstrip("/") or "/", req.method
        if path.startswith("/api/blobs"):
            path = "/api/blobs"
        if path in NOT_HERE:
            self.upstream_key(req)
            raise Refused(501, f"{path} is not part of llmpi: {NOT_HERE[path]}")
        handler = self.routes().get((method if method != "HEAD" else "GET", path))
        if handler is None:
            if path.startswith("/v1/"):
                await self.pass_through(req, writer)
                return
            known = {p for _, p in self.routes()}
            raise Refused(405 if path in known else 404, f"{method} {req.path} is not an endpoint of this API")
        await handler(req, writer)

    def routes(self) -> dict[tuple[str, str], Callable[[Request, asyncio.StreamWriter], Awaitable[None]]]:
        return {
            ("GET", "/"): self.root,
            ("GET", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags,
            ("POST", "/api/show"): self.show,
            ("GET", "/api/ps"): self.ps,
            ("POST", "/api/chat"): self.chat,
            ("POST", "/api/generate"): self.generate,
            ("POST", "/api/embed"): self.embed,
            ("POST", "/api/embeddings"): self.embeddings,
            ("POST", "/api/pull"): self.pull,
            ("DELETE", "/api/delete"): self.delete,
        }

    async def root(self, req: Request, writer: asyncio.StreamWriter) -> None:
        self.upstream_key(req)
        body = b"" if req.method == "HEAD" else b"Ollama is running"
        await send(writer, 200, body, "text/plain; charset=utf-8")

    async def version(self, req: Request, writer: asyncio.StreamWriter) -> None:
        self.upstream_key(req)
        await send_json(writer, 200, {"version": VERSION})

    async def tags(self, req: Request, writer: asyncio.StreamWriter) -> None:
        served = await self.models(self.upstream_key(req))
        await send_json(writer, 200, {"models": [listing.tag_entry(m) for m in served]})

    async def show(self, req: Request, writer: asyncio.StreamWriter) -> None:
        m = await self.model(req.json(), self.upstream_key(req))
        await send_json(writer, 200, listing.show(m))

    async def ps(self, req: Request, writer: asyncio.StreamWriter) -> None:
        served = await self.models(self.upstream_key(req))
        loaded = [listing.ps_entry(m, self.keep.expires_at(m.name)) for m in served if m.loaded]
        await send_json(writer, 200, {"models": loaded})

    async def chat(self, req: Request, writer: asyncio.StreamWriter) -> None:
        await self.answer(req, writer, generate=False)

    async def generate(self, req: Request, writer: asyncio.StreamWriter) -> None:
        await self.answer(req, writer, generate=True)

    async def answer(self, req: Request, writer: asyncio.StreamWriter, generate: bool) -> None:
        """/api/chat and /api/generate: one answer from the named model, streamed as NDJSON unless stream: false."""
        key = self.upstream_key(req)
        body = req.json()
        if not isinstance(body, dict):
            raise Refused(400, "the request body must be a JSON object")
        m = await self.model(body, key, full=False)
        if m.kind == "embedding":
            raise Refused(400, f'"{m.name}" is an embedding model: it does not generate (use /api/embed)')
        keep = seconds(body.get("keep_alive"))
        stream = body.get("stream", True) is not False
        empty = not (body.get("prompt") or body.get("images")) if generate else not body.get("messages")
        if empty:  # Ollama's way to load (or, with keep_alive 0, unload) a model: no prompt
            await self.load_or_unload(m, keep, key)
            reason = "unload" if keep == 0 else "load"
            out = translate.final_chunk(listing.ollama_name(m.name), generate, reason, translate.Timing())
            await send_json(writer, 200, {k: v for k, v in out.items() if "duration" not in k and "count" not in k})
            return
        notes = self.context_note(body, m)
        if generate and body.get("raw"):
            path, upstream_body = "/completion", translate.raw_request(body, stream)
        elif generate:
            path, upstream_body = "/v1/chat/completions", translate.generate_request(body, m.name, stream)
        else:
            path, upstream_body = "/v1/chat/completions", translate.chat_request(body, m.name, stream)
        if path == "/completion" and self.router:
            upstream_body["model"] = m.name
        self.keep.begin(m.name)
        try:
            await self.relay(writer, path, upstream_body, key, m, generate, stream, notes)
        finally:
            self.keep.end(m.name, keep)
            if keep == 0:
                await self.unload_due()

    def context_note(self, body: Mapping[str, Any], m: Served) -> dict[str, str]:
        """options.num_ctx above a slot's context: the slot's context is what the request gets (a header says so,
        and the log); the fit decided it for the board's memory."""
        opts = body.get("options") if isinstance(body.get("options"), dict) else {}
        wanted = opts.get("num_ctx") if opts else None
        if isinstance(wanted, int) and m.slot_ctx and wanted > m.slot_ctx:
            print(f"llmpi-ollama: num_ctx {wanted} asked for {m.name}: its requests have {m.slot_ctx}", flush=True)
            return {"X-Llmpi-Num-Ctx": f"{m.slot_ctx} (asked {wanted}; the fit gives each request {m.slot_ctx})"}
        return {}

    async def relay(
        self,
        writer: asyncio.StreamWriter,
        path: str,
        body: dict[str, Any],
        key: str | None,
        m: Served,
        generate: bool,
        stream: bool,
        notes: dict[str, str],
    ) -> None:
        timing = translate.Timing()
        name = listing.ollama_name(m.name)
        up = await self.call("POST", path, key, body)
        try:
            if up.status != 200:
                raise ollama_error(up.status, await up.json(), up.headers)
            if not stream:
                reply = await up.json()
                if path == "/completion":
                    out = self.completion_reply(name, reply, timing)
                else:
                    out = translate.chat_reply(name, reply, generate, timing)
                await send_json(writer, 200, out, notes)
                return
            await self.relay_stream(writer, up, name, generate, path == "/completion", timing, notes)
        finally:
            up.close()

    def completion_reply(self, name: str, reply: Mapping[str, Any], timing: translate.Timing) -> dict[str, Any]:
        timing.take(reply.get("timings"), None)
        reason = "length" if reply.get("stop_type") == "limit" else "stop"
        out = translate.final_chunk(name, True, reason, timing)
        out["response"] = reply.get("content") or ""
        return out

    async def relay_stream(
        self,
        writer: asyncio.StreamWriter,
        up: Upstream,
        name: str,
        generate: bool,
        raw: bool,
        timing: translate.Timing,
        notes: dict[str, str],
    ) -> None:
        """llama-server's server-sent events as Ollama's NDJSON lines, each as it comes; the tool calls whole, when
        the model has finished them; then the final line with the counts and durations."""
        out = NDJSONStream(writer, notes)
        calls = translate.CallCollector()
        reason = "stop"
        events = up.lines()
        while True:
            try:
                line = await anext(events)
            except StopAsyncIteration:
                break
            except (ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                # llama-server's side ended mid-answer (a crash, a stop past the drain): said in the stream, as
                # Ollama says its errors there, instead of a stream cut without a word
                await out.line({"error": f"the model server stopped answering: {type(e).__name__}"})
                await out.end()
                return
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                event = json.loads(payload)
            except ValueError:
                continue
            if timing.first_byte is None:
                timing.first_byte = time.monotonic()
            if "error" in event:
                await out.line({"error": (event["error"] or {}).get("message", str(event["error"]))})
                await out.end()
                return
            timing.take(event.get("timings"), event.get("usage"))
            reason = await self.relay_event(out, event, calls, name, generate, raw) or reason
        await out.line(translate.final_chunk(name, generate, reason, timing))
        await out.end()

    async def relay_event(
        self,
        out: NDJSONStream,
        event: dict[str, Any],
        calls: translate.CallCollector,
        name: str,
        generate: bool,
        raw: bool,
    ) -> str | None:
        """One event of llama-server's stream as Ollama's lines; the done_reason when the event ends the answer."""
        if raw:
            text = event.get("content") or ""
            if text:
                await out.line(translate.generate_chunk(name, text))
            if event.get("stop"):
                return "length" if event.get("stop_type") == "limit" else "stop"
            return None
        reason = None
        for choice in event.get("choices") or []:
            delta = choice.get("delta") or {}
            calls.add(delta.get("tool_calls"))
            text, thought = delta.get("content") or "", delta.get("reasoning_content") or ""
            if text or thought:
                chunk = (
                    translate.generate_chunk(name, text, thought)
                    if generate
                    else translate.chat_chunk(name, text, thought)
                )
                await out.line(chunk)
            if choice.get("finish_reason"):
                reason = translate.done_reason(choice["finish_reason"], bool(calls.calls))
                done = calls.take()
                if done and not generate:
                    await out.line(translate.chat_chunk(name, "", "", done))
        return reason

    async def load_or_unload(self, m: Served, keep: float | None, key: str | None) -> None:
        """A request with no prompt: load the model (router mode), or unload it with keep_alive 0."""
        if not self.router:
            return  # one model: always loaded
        if keep == 0:
            if m.loaded:
                await self.manage_call("/models/unload", m.name)
            return
        if not m.loaded:
            await self.manage_call("/models/load", m.name)
            await self.wait_loaded(m.name, key)
        self.keep.set(m.name, keep)

    async def wait_loaded(self, name: str, key: str | None) -> None:
        """The router loads a model in the background: the answer waits until it serves (as Ollama's load does),
        LOAD_WAIT seconds at most, or says why it did not."""
        deadline = time.monotonic() + LOAD_WAIT
        while time.monotonic() < deadline:
            data = (await self.get_json("/v1/models", key)).get("data") or []
            status = next(((m.get("status") or {}) for m in data if m.get("id") == name), {})
            if status.get("value") == "loaded":
                return
            if status.get("failed") or not status:
                raise Refused(500, f"{name} could not be loaded (docker compose logs llmpi says why)")
            await asyncio.sleep(0.25)
        raise Refused(503, f"{name} is still loading; try again shortly", {"Retry-After": "2"})

    async def manage_call(self, path: str, model: str) -> None:
        """Router model management with the container's internal admin key (the admin file's first key)."""
        accept = (200, 400) if path.endswith("unload") else (200,)  # an unload's 400: it was not loaded (any more)
        await self.call_json("POST", path, self.own_key(), {"model": model}, accept)

    async def unload_due(self) -> None:
        if not self.router:
            return
        for model in self.keep.due():
            try:
                await self.manage_call("/models/unload", model)
                print(f"llmpi-ollama: unloaded {model} (its keep_alive ran out)", flush=True)
            except Refused as e:
                print(f"llmpi-ollama: could not unload {model}: {e}", flush=True)

    async def embed(self, req: Request, writer: asyncio.StreamWriter) -> None:
        await self.embed_any(req, writer, old=False)

    async def embeddings(self, req: Request, writer: asyncio.StreamWriter) -> None:
        await self.embed_any(req, writer, old=True)

    async def embed_any(self, req: Request, writer: asyncio.StreamWriter, old: bool) -> None:
        """/api/embed (and the older /api/embeddings): the vectors from the named model when it embeds, else from
        the board's embedding model."""
        key = self.upstream_key(req)
        body = req.json()
        served = await self.models(key)  # one look: the named model and, when it does not embed, the one that does
        m = named_model(served, requested_name(body))
        inputs = translate.embed_inputs(body, old)
        target = m
        if m.kind != "embedding":
            others = [e for e in served if e.kind == "embedding"]
            if not others:
                raise Refused(400, f'"{m.name}" does not embed and no embedding model is on this board '
                                   "(llmpi models pull all-minilm-l6-v2)")  # fmt: skip
            target = others[0]
        timing = translate.Timing()
        reply = await self.call_json("POST", "/v1/embeddings", key, {"model": target.name, "input": inputs})
        vectors = [d.get("embedding") for d in sorted(reply.get("data") or [], key=lambda d: d.get("index", 0))]
        if old:
            await send_json(writer, 200, {"embedding": vectors[0] if vectors else []})
            return
        usage = reply.get("usage") or {}
        fields = timing.fields()
        await send_json(
            writer,
            200,
            {
                "model": listing.ollama_name(target.name),
                "embeddings": vectors,
                "total_duration": fields["total_duration"],
                "load_duration": 0,
                "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            },
        )

    async def pull(self, req: Request, writer: asyncio.StreamWriter) -> None:
        """/api/pull through `llmpi models pull` (admin key only); one pull at a time, the next one waits."""
        self.check_admin(req)
        body = req.json()
        name = requested_name(body)
        stream = body.get("stream", True) is not False
        async with self.pulling:
            if not stream:
                last: dict[str, Any] = {}
                async for line in manage.pull(name, self.settings.models_dir):
                    last = line
                if "error" in last:
                    raise Refused(500, str(last["error"]))
                await send_json(writer, 200, {"status": "success"})
                return
            out = NDJSONStream(writer)
            async for line in manage.pull(name, self.settings.models_dir):
                await out.line(line)
            await out.end()

    async def delete(self, req: Request, writer: asyncio.StreamWriter) -> None:
        self.check_admin(req)
        body = req.json()
        name = requested_name(body)
        code, why = await manage.delete(name)
        if code != 0:
            raise Refused(404 if "no pulled model named" in why else 400, why)
        await send(writer, 200, b"")

    async def pass_through(self, req: Request, writer: asyncio.StreamWriter) -> None:
        """/v1/... on this port (apps that take Ollama's address and speak OpenAI to it): llama-server's own answer,
        byte for byte."""
        headers = {k.title(): v for k, v in req.headers.items() if k in ("authorization", "x-api-key", "content-type")}
        try:
            up = await call(*self.upstream, req.method, req.path, headers, req.body)
        except OSError as e:
            raise Refused(503, f"the model server is not answering yet ({e}); try again shortly") from None
        try:
            keep = {k: v for k, v in up.headers.items() if k in ("content-type", "retry-after")}
            if "chunked" not in up.headers.get("transfer-encoding", "") and "content-length" in up.headers:
                await send(writer, up.status, await up.body(), keep.get("content-type", "application/json"),
                           {k.title(): v for k, v in keep.items() if k != "content-type"})  # fmt: skip
                return
            head = {"Content-Type": keep.get("content-type", "application/json"), "Transfer-Encoding": "chunked"}
            writer.write(head_bytes(status_line(up.status), head))
            async for chunk in up.chunks():
                writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            up.close()

    # --- connections --------------------------------------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, admitted under the caps (llmpi.core.limits.Gate refused it otherwise): its requests
        one after another (keep-alive), until it closes, stays idle, or errs."""
        fresh = True
        try:
            while not self.draining:
                try:
                    req = await read_request(reader, self.settings.max_body, fresh, self.known_key)
                except (HTTPError, Refused) as e:  # the request was not read whole: answered, then closed
                    await send_json(writer, e.status, {"error": str(e)}, getattr(e, "headers", None), keep_alive=False)
                    await limits.linger_close(reader, writer)
                    return
                fresh = False
                if req is None:
                    return
                if not await self.one(req, writer) or not req.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; llama-server's connection closed with it (it stops generating)
        finally:
            writer.close()

    def known_key(self, req: Request) -> None:
        """Before a body is read: a 401 for a request without a key this board takes (ordinary or admin), so that a
        device without a key never gets the door to hold a body for it."""
        if not matches(client_key(req), self.admin_keys.current()[1:]):
            self.upstream_key(req)

    async def one(self, req: Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection cannot go on (an answer was cut short)."""
        self.in_flight += 1
        try:
            await self.route(req, writer)
            return True
        except Refused as e:
            await send_json(writer, e.status, {"error": str(e)}, e.headers)
            return True
        except (BadRequest, HTTPError) as e:
            await send_json(writer, getattr(e, "status", 400), {"error": str(e)})
            return True
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as e:  # a bug here must not take the door down for everyone
            print(f"llmpi-ollama: {req.method} {req.path} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            await send_json(writer, 500, {"error": f"internal error: {type(e).__name__}"}, keep_alive=False)
            return False
        finally:
            self.in_flight -= 1

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_TICK)
            await self.unload_due()


BUSY = {"error": "too many connections (LLMPI_MAX_CONNECTIONS, LLMPI_MAX_CONNECTIONS_PER_CLIENT); try again shortly"}


async def start(door: Door, sock: socket.socket, caps: limits.Caps, tls: Any = None) -> asyncio.Server:
    """The door's server on a bound socket (`tls`: an ssl.SSLContext for HTTPS): a connection over a cap gets a 503
    in Ollama's error shape at once."""
    busy = limits.json_reply(503, BUSY, limits.RETRY_AFTER)
    return await limits.start_server(door.connection, sock, caps, busy, tls)


def loopback(s: Settings) -> str:
    """Where llama-server is reached from here: its own address, or loopback when it listens on every one."""
    return "127.0.0.1" if s.host in ("0.0.0.0", "", "::") else s.host


async def serve_tls(door: Door, s: Settings, caps: limits.Caps, servers: list[asyncio.Server]) -> None:
    """HTTPS on OLLAMA_TLS_PORT with the certificate the launcher makes (llmpi.tls.certs), once its files exist: at
    a first start the launcher may make them after this process started. Same caps as the plain port."""
    import ssl  # only here: without TLS the door never maps OpenSSL's libraries (llmpi.ollama.__main__)

    files = certs.served_files(s)
    while not (files.cert.is_file() and files.key.is_file()):
        await asyncio.sleep(1)
    await asyncio.sleep(1)  # the key is written first, then the certificate: both whole by now
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as e:
        print(f"llmpi-ollama: no HTTPS: cannot load {files.cert}: {e}", file=sys.stderr, flush=True)
        return
    servers.append(await start(door, limits.bind(s.host, OLLAMA_TLS_PORT), caps, context))
    print(f"llmpi-ollama: the Ollama API over HTTPS on port {OLLAMA_TLS_PORT}", flush=True)


async def serve(s: Settings, port: int) -> None:
    door = Door(s, (loopback(s), s.server_port))
    caps = limits.Caps(Limits.of(s))
    servers = [await start(door, limits.bind(s.http_host, port), caps)]
    print(f"llmpi-ollama: the Ollama API on port {port} (llama-server at {door.upstream[0]}:{door.upstream[1]})",
          flush=True)  # fmt: skip
    tls = asyncio.ensure_future(serve_tls(door, s, caps, servers)) if s.tls else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.ensure_future(door.tick())
    await stop.wait()
    # a stop is a drain, as llama-server's: no new connection, the answers in flight finish (DRAIN_SECONDS at most)
    door.draining = True
    if tls is not None:
        tls.cancel()
    for server in servers:
        server.close()
    deadline = loop.time() + DRAIN_SECONDS
    while door.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.1)
    ticker.cancel()


def main() -> int:
    try:
        s = Settings.read(os.environ)
    except ConfigError as e:
        print(f"llmpi-ollama: {e}", file=sys.stderr, flush=True)
        return 0  # the launcher names the same error as the container's failure; nothing to serve here
    if s.ollama_port is None:
        print("llmpi-ollama: LLMPI_OLLAMA_PORT=off: no Ollama API", flush=True)
        return 0
    asyncio.run(serve(s, s.ollama_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
