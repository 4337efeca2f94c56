"""A local stand-in for the Hugging Face hub: the few HTTP routes huggingface_hub uses to read a model repo
(model info, file tree, file download with HEAD/Range), serving repos the tests make. Point huggingface_hub at it
with HF_ENDPOINT. It also counts what it served and can cut a download off mid-file, once."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    token: str = ""
    # the size the hub lists for a file whose content here is only its first bytes (a big model's header: enough
    # for a fit before download, never downloaded whole)
    listed_sizes: dict[str, int] = field(default_factory=dict)
    # a sha256 the hub lists instead of the content's own (a corrupted upload, or a tampered mirror)
    listed_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class Stats:
    body_bytes: dict[str, int] = field(default_factory=dict)  # path -> bytes of file content served
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header) of ranged GETs


class Hub:
    def __init__(self, host: str = "127.0.0.1") -> None:
        """Serves on `host` (loopback; a container reaches it on the Docker bridge's address), a free port."""
        self.repos: dict[str, Repo] = {}
        self.stats = Stats()
        self.cut_after: dict[str, int] = {}  # path -> bytes, then drop the connection (once)
        self.rate: float | None = None  # bytes per second for file contents (None: as fast as it goes)
        self.host = host
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def ranges_for(self, name: str) -> list[tuple[str, str]]:
        return [(n, r) for n, r in self.stats.ranges if n == name]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_address[1]}"

    def __enter__(self) -> Hub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
            self._send(
                status,
                json.dumps({"error": message}).encode(),
                {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                head,
            )

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository {repo_id} not found", head)  # as the hub: 401
            return repo

        def _rev_ok(self, repo: Repo, rev: str, head: bool = False) -> bool:
            if rev in ("main", repo.sha):
                return True
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return False

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = unquote(urlparse(self.path).path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = f"{parts[2]}/{parts[3]}"
                repo = self._repo(repo_id, head)
                if repo is None:
                    return
                rest = parts[4:]
                if rest and rest[0] == "tree":
                    if self._rev_ok(repo, rest[1], head):
                        self._send(200, json.dumps(_tree(repo)).encode(), {"Content-Type": "application/json"}, head)
                    return
                rev = rest[1] if rest[:1] == ["revision"] else "main"
                if self._rev_ok(repo, rev, head):
                    self._send(
                        200, json.dumps(_info(repo_id, repo)).encode(), {"Content-Type": "application/json"}, head
                    )
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id = f"{parts[0]}/{parts[1]}"
                repo = self._repo(repo_id, head)
                if repo is None or not self._rev_ok(repo, parts[3], head):
                    return
                if repo.gated and self.headers.get("Authorization", "") != f"Bearer {repo.token}":
                    self._error(
                        401,
                        "GatedRepo",
                        f"Access to model {repo_id} is restricted. You must have access "
                        "to it and be authenticated to access it.",
                        head,
                    )
                    return
                name = "/".join(parts[4:])
                if name not in repo.files:
                    self._error(404, "EntryNotFound", f"{name} does not exist", head)
                    return
                self._file(repo, name, head)
                return
            self._error(404, "NotFound", f"no route {path}", head)

        def _file(self, repo: Repo, name: str, head: bool) -> None:
            data = repo.files[name]
            headers = {
                "X-Repo-Commit": repo.sha,
                "ETag": f'"{_etag(data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start, end, status = 0, len(data) - 1, 200
            rng = self.headers.get("Range")
            if rng and not head and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start = int(a)
                end = min(int(b), len(data) - 1) if b else len(data) - 1
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                hub.stats.ranges.append((name, rng))
            body = data[start : end + 1]
            headers["Content-Length"] = str(len(body))
            if head:
                self._send(200, b"", {**headers, "Content-Length": str(len(data))}, head=True)
                return
            cut = hub.cut_after.get(name) if status == 200 else None  # cut a whole-file download, once
            if cut is not None:
                del hub.cut_after[name]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if cut is not None and cut < len(body):
                self.wfile.write(body[:cut])
                hub.stats.body_bytes[name] = hub.stats.body_bytes.get(name, 0) + cut
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            step = 1 << 20
            for i in range(0, len(body), step):
                try:
                    self.wfile.write(body[i : i + step])
                except OSError:  # the client went away (a container stopped mid-download)
                    return
                hub.stats.body_bytes[name] = hub.stats.body_bytes.get(name, 0) + len(body[i : i + step])
                if hub.rate:
                    time.sleep(step / hub.rate)

    return Handler


def _tree(repo: Repo) -> list[dict[str, Any]]:
    out = []
    for name, data in sorted(repo.files.items()):
        size = repo.listed_sizes.get(name, len(data))
        entry: dict[str, Any] = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": size, "path": name}
        if name.endswith((".safetensors", ".gguf", ".bin")):
            entry["lfs"] = {"oid": repo.listed_sha256.get(name, _etag(data)), "size": size, "pointerSize": 134}
        out.append(entry)
    return out


def _info(repo_id: str, repo: Repo) -> dict[str, Any]:
    return {
        "_id": repo_id,
        "id": repo_id,
        "modelId": repo_id,
        "sha": repo.sha,
        "private": False,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "lastModified": "2026-11-01T00:00:00.000Z",
        "createdAt": "2026-11-01T00:00:00.000Z",
        # with ?blobs=true (files_metadata) the hub adds each file's size and, for LFS files, its sha256
        "siblings": [
            {"rfilename": e["path"], "size": e["size"]}
            | ({"lfs": {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": 134}} if "lfs" in e else {})
            for e in _tree(repo)
        ],
    }


def safetensors_file(shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> bytes:
    """A valid safetensors file with zero-filled tensors of these shapes."""
    width = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
    header: dict[str, Any] = {}
    offset = 0
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n * width]}
        offset += n * width
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


def repo_from_dir(d: Path) -> Repo:
    return Repo({str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()})


if __name__ == "__main__":  # serve directories as repos, for trying the pipeline by hand
    import argparse

    ap = argparse.ArgumentParser(description="local stand-in hub: --repo owner/name=DIR ...")
    ap.add_argument("--repo", action="append", default=[], help="owner/name=DIR")
    ap.add_argument("--seconds", type=float, default=1800, help="serve this long, then stop")
    args = ap.parse_args()
    with Hub() as served:
        for spec in args.repo:
            name, _, path = spec.partition("=")
            served.repos[name] = repo_from_dir(Path(path))
        print(served.url, flush=True)
        time.sleep(args.seconds)
