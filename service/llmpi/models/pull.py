"""Pull a model by name into the models directory: a catalog name or a hub repo of ready GGUF files.

Used by the launcher for `LLMPI_MODEL=<name>` (before llama-server starts) and by `llmpi models pull`. The steps:
`parse_ref` (what was named), `inspect` (the repo's files with their sizes and sha256, from the hub's own
metadata), `remote_header` (the model's shape, from the first megabytes of one GGUF file, by HTTP range requests),
`plan_pull` (the quant, chosen with the same fit table as `llmpi-prepare plan`; refused before any download when
nothing fits), `download` (resumable, by huggingface_hub; sha256-checked; moved into place atomically; the manifest
is written last, so a model without a manifest was never finished).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..core import paths
from ..core.files import write_atomic
from ..plan import fit, gguf, quants, split
from ..plan.model_files import LocalModel
from . import catalog

DEFAULT_PATTERN = "*{quant}*.gguf"
PLAN_CONTEXT = 4096  # the context the fit table plans one request for (as `llmpi-prepare plan --ctx 4096`)
# `auto` pulls Q4_K_M (or the best smaller type that fits), as Ollama does: on a Pi, generation reads every weight
# once a token and is bound by memory bandwidth, so Q8_0 (1.76 x the bytes) runs at about 0.57 x the speed for a
# small gain in quality. Embedding models are small and lose more from quantization: Q8_0. A name can ask for
# any type (`qwen3-4b-instruct:Q8_0`).
AUTO_CEILING = {"chat": "Q4_K_M", "vision": "Q4_K_M", "embedding": "Q8_0"}
HUB_PREFIXES = ("https://huggingface.co/", "http://huggingface.co/", "huggingface.co/", "hf.co/")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLIT_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)
# architectures llama.cpp serves as encoders (embeddings), besides any model whose GGUF declares a pooling type
EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "t5encoder"}
TRANSFER_TRIES = 4  # a download cut off mid-file is continued (HTTP range) this many times before giving up
HEADER_FIRST_READ = 4 * fit.MiB
HEADER_MAX_READ = 256 * fit.MiB
MANUAL_COPY = (
    "To serve a model without the hub, copy a GGUF file into the data volume "
    "(docker compose cp my-model.gguf llmpi:/data/models/) and set LLMPI_MODEL=/data/models/my-model.gguf"
)


class PullError(Exception):
    """A clear reason why the model cannot be pulled; nothing half-written is left in the models directory."""


class HubUnreachable(PullError):
    """The hub could not be reached at all (no network, DNS, refused)."""


class TransferCut(PullError):
    """A download stopped mid-file; the part on disk is kept and the next try continues from it."""


@dataclass(frozen=True)
class Ref:
    """What the user named, resolved to a repo of ready GGUF files."""

    text: str  # as given
    repo: str
    quant: str  # "auto" or a normalized quant type
    name: str  # the model's name on this board (the router serves it by this name)
    pattern: str = DEFAULT_PATTERN
    mmproj: str = ""  # a pattern for the projector; "" = any mmproj*.gguf of the repo
    kind: str = ""  # from the catalog; "" = decided from the GGUF header and the projector
    revision: str = "main"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # the LFS object id the hub lists (None for small non-LFS files)


@dataclass(frozen=True)
class Remote:
    repo: str
    revision: str  # the commit the revision resolved to; every download uses it
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class PullPlan:
    ref: Ref
    remote: Remote
    model_file: str
    mmproj_file: str | None
    quant: str
    kind: str
    shape: fit.ModelShape
    table: str  # the fit table, as `llmpi-prepare plan` prints it

    @property
    def files(self) -> list[RemoteFile]:
        names = [self.model_file] + ([self.mmproj_file] if self.mmproj_file else [])
        return [self.remote.files[n] for n in names]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def stem(self) -> str:
        return f"{self.ref.name}.{self.quant}"


def derived_name(repo: str) -> str:
    """A model's name on the board from its repo: bartowski/Qwen_Qwen3-4B-GGUF -> qwen_qwen3-4b."""
    name = repo.split("/")[-1]
    name = re.sub(r"[-_.]gguf$", "", name, flags=re.IGNORECASE)
    return name.lower()


def parse_ref(text: str, entries: Mapping[str, catalog.Entry]) -> Ref:
    """A catalog name or a hub repo, each with an optional `:QUANT`; PullError (with close catalog names) else."""
    raw = base = text.strip()
    for prefix in HUB_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix) :]
    base, _, quant_text = base.partition(":")
    try:
        quant = quants.normalize(quant_text) if quant_text else ""
    except quants.UnknownQuant as e:
        raise PullError(f"{raw!r}: {e}") from None
    if base in entries:
        entry = entries[base]
        return Ref(raw, entry.gguf_repo, quant or entry.quant, base, entry.gguf_pattern, entry.mmproj, entry.kind)
    if REPO_RE.match(base):
        return Ref(raw, base, quant or "auto", derived_name(base))
    close = difflib.get_close_matches(base, list(entries), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; catalog names: {', '.join(sorted(entries))}"
    raise PullError(
        f"{raw!r} is not a model file path, a catalog name or a hub repo of GGUF files (owner/name[:QUANT]){hint}"
    )


def endpoint() -> str | None:
    """HF_ENDPOINT, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


@contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """The hub's exceptions as PullError, with what to do."""
    import requests
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise PullError(
            f"{repo} is gated: accept its license on the hub, then pass a token (HF_TOKEN or HF_TOKEN_FILE)"
        ) from None
    except RevisionNotFoundError:
        raise PullError(f"{repo} has no such revision") from None
    except RepositoryNotFoundError:
        raise PullError(f"no model repo {repo!r} on the hub (or it is private and no token was given)") from None
    except HfHubHTTPError as e:
        raise PullError(f"the hub answered an error for {repo}: {e}") from None
    except (requests.ConnectionError, requests.Timeout, LocalEntryNotFoundError) as e:
        where = endpoint() or "https://huggingface.co"
        raise HubUnreachable(
            f"cannot reach the hub at {where} for {repo} ({type(e).__name__}). {MANUAL_COPY}"
        ) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise PullError(f"HF_ENDPOINT={endpoint()!r} is not a URL the hub can be reached at") from None
    except requests.RequestException as e:  # a transfer cut off mid-file (ChunkedEncodingError, ...)
        raise TransferCut(f"the download from {repo} was cut off ({type(e).__name__}: {e})") from None


def inspect(ref: Ref, token: str | None) -> Remote:
    """The repo's files with sizes and sha256, at the commit `ref.revision` resolves to. Metadata only."""
    from huggingface_hub import HfApi

    with hub_errors(ref.repo):
        info = HfApi(token=token, endpoint=endpoint()).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        files[s.rfilename] = RemoteFile(s.rfilename, int(s.size or 0), getattr(lfs, "sha256", None) if lfs else None)
    return Remote(ref.repo, info.sha or ref.revision, files)


def is_projector(name: str) -> bool:
    return "mmproj" in name.rsplit("/", 1)[-1].lower()


def quant_files(ref: Ref, remote: Remote) -> dict[str, str]:
    """quant type -> the repo's file of it (one-file GGUFs matching the pattern; the shortest name when several)."""
    found = {}
    ggufs = [n for n in remote.files if n.lower().endswith(".gguf") and not is_projector(n) and not SPLIT_RE.search(n)]
    for q in quants.QUANTS:
        bounded = re.compile(rf"(?<![A-Za-z0-9]){q}(?![A-Za-z0-9_])", re.IGNORECASE)
        hits = [n for n in ggufs if fnmatch(n.lower(), ref.pattern.format(quant=q).lower()) and bounded.search(n)]
        if hits:
            found[q] = min(hits, key=len)
    return found


def projector_file(ref: Ref, remote: Remote) -> str | None:
    """The vision projector: the catalog's pattern, or the repo's mmproj file (f16 preferred)."""
    names = [n for n in remote.files if n.lower().endswith(".gguf") and is_projector(n)]
    if ref.mmproj:
        hits = [n for n in names if fnmatch(n.lower(), ref.mmproj.lower())]
        if not hits:
            raise PullError(f"{ref.repo} has no projector matching {ref.mmproj!r} (projectors: {names or 'none'})")
        return min(hits, key=len)
    if not names:
        return None
    for pref in ("f16", "bf16", "f32"):
        for n in sorted(names, key=len):
            if re.search(rf"(?<![a-z0-9]){pref}(?![a-z0-9])", n.lower()):
                return n
    return min(names, key=len)


def remote_header(remote: Remote, name: str, token: str | None) -> gguf.GGUFInfo:
    """A GGUF file's metadata and tensor table from its first bytes (HTTP range requests, growing as needed)."""
    import requests
    from huggingface_hub import hf_hub_url

    size = remote.files[name].size
    url = hf_hub_url(remote.repo, name, revision=remote.revision, endpoint=endpoint())
    want = HEADER_FIRST_READ
    while True:
        n = min(want, size)
        headers = {"Range": f"bytes=0-{n - 1}", **({"Authorization": f"Bearer {token}"} if token else {})}
        data = bytearray()
        try:
            # requests drops the Authorization header when the hub redirects to its CDN (another host)
            with requests.get(url, headers=headers, stream=True, timeout=30) as r:
                if r.status_code >= 400:
                    raise PullError(f"{remote.repo}/{name}: the hub answered {r.status_code} for its header")
                for chunk in r.iter_content(1 << 16):
                    data += chunk
                    if len(data) >= n:
                        break
        except requests.RequestException as e:
            raise HubUnreachable(f"reading the header of {name} from {remote.repo} failed: {e}") from None
        try:
            return gguf.parse_gguf(bytes(data[:n]), Path(name), size)
        except gguf.HeaderTruncated:
            if n >= size or want >= HEADER_MAX_READ:
                raise PullError(f"{remote.repo}/{name}: no GGUF header in its first {n} bytes") from None
            want *= 4
        except gguf.GGUFError as e:
            raise PullError(f"{remote.repo}/{name}: {e}") from None


def is_embedding(info: gguf.GGUFInfo) -> bool:
    return info.architecture in EMBEDDING_ARCHS or info.arch_value("pooling_type") is not None


def choose_auto(rows: list[quants.Row], ceiling: str) -> quants.Row:
    """The best type that fits, no bigger than `ceiling`; the smallest bigger one when the repo has none under it."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return quants.choose(rows)  # raises FitError with the numbers
    top = quants.QUANTS[ceiling][0]
    under = [r for r in fitting if r.bits <= top]
    return max(under, key=lambda r: r.bits) if under else min(fitting, key=lambda r: r.bits)


def plan_pull(
    ref: Ref, remote: Remote, budget: int, source: str, token: str | None, boards: Sequence[split.Board] = ()
) -> PullPlan:
    """The file to download: `ref.quant`, or with auto the best quality that fits `budget` (the same table as
    `llmpi-prepare plan`), or with `boards` (a cluster: the head first) the best that can be split across them.
    PullError with the table when nothing (or not the asked-for type) fits."""
    by_quant = quant_files(ref, remote)
    if not by_quant:
        ggufs = sorted(n for n in remote.files if n.lower().endswith(".gguf"))
        raise PullError(
            f"{ref.repo} has no one-file GGUF model matching {ref.pattern!r} in a known quant type "
            f"({', '.join(quants.QUANTS)}); its GGUF files: {', '.join(ggufs) or 'none'}"
        )
    mmproj = projector_file(ref, remote)
    # every quant of a repo has the same shape: read it from the smallest file's header
    info = remote_header(remote, min(by_quant.values(), key=lambda n: remote.files[n].size), token)
    shape = fit.ModelShape.from_gguf(info)
    embedding = ref.kind == "embedding" or (not ref.kind and is_embedding(info))
    kind = "embedding" if embedding else (ref.kind or ("vision" if mmproj else "chat"))
    if embedding:
        mmproj = None
    n_ctx = min(shape.n_ctx_train or PLAN_CONTEXT, PLAN_CONTEXT)
    extra = remote.files[mmproj].size if mmproj else 0
    sizes = {q: remote.files[f].size for q, f in by_quant.items()}
    rows = quants.table_from_sizes(shape, sizes, budget, n_ctx, extra=extra, boards=boards)
    head = (
        f"{ref.repo}@{remote.revision[:12]}: {info.architecture}, trained context {shape.n_ctx_train}, planned for "
        f"{n_ctx} tokens of context; {fit.fmt_bytes(budget)} usable ({source})"
        + (f", across {len(boards)} boards: " + ", ".join(b.name for b in boards) if boards else "")
    )
    try:
        chosen = quants.choose(rows, ref.quant) if ref.quant != "auto" else choose_auto(rows, AUTO_CEILING[kind])
    except (fit.FitError, quants.UnknownQuant) as e:
        raise PullError(
            f"{ref.text} does not fit: {e}\n{head}\n{quants.render(rows, budget, boards=len(boards))}"
        ) from None
    table = head + "\n" + quants.render(rows, budget, chosen.quant, len(boards))
    if boards:
        table += "\n" + quants.split_table(shape, chosen, n_ctx, boards, extra)
    return PullPlan(ref, remote, by_quant[chosen.quant], mmproj, chosen.quant, kind, shape, table)


# --- progress ------------------------------------------------------------------------------------------------


def progress_path() -> Path:
    """The pull's progress, for the status page and `/health` while the launcher pulls (runtime directory)."""
    paths.make_runtime_dir()
    return Path(paths.pull_progress())


def read_progress() -> dict[str, Any] | None:
    """The running pull's last snapshot (Progress.snapshot), or None when no pull is writing one."""
    try:
        data = json.loads(progress_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe(snap: Mapping[str, Any]) -> str:
    """A pull's snapshot as one line: model, state, file, percent, size, rate and time left (those known)."""
    rate, eta = snap.get("rate_bytes_per_s"), snap.get("eta_s")
    speed = f" at {rate / 1e6:.1f} MB/s" if rate else ""
    left = f", about {max(1, round(eta / 60))} min left" if eta else ""
    return (
        f"pulling {snap.get('model', '')}: {snap.get('state', '')} {snap.get('file', '')} "
        f"{snap.get('percent') or 0.0:.1f}% of {(snap.get('total_bytes') or 0) / 1e9:.2f} GB{speed}{left}"
    )


@dataclass
class Progress:
    """Watches a download's bytes on disk (huggingface_hub's `.incomplete` files and the finished ones) and reports
    them: a JSON file for /health and the page, and a log line every `every` seconds."""

    model: str
    work: Path
    total: int
    say: Callable[[str], object]
    write_file: bool = True
    every: float = 10.0
    state: str = "checking"
    file: str = ""
    done_before: int = 0  # bytes of the files already finished
    _stop: threading.Event = field(default_factory=threading.Event)
    _samples: list[tuple[float, int]] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def on_disk(self) -> int:
        if not self.work.exists():
            return self.done_before
        partial = sum(p.stat().st_size for p in self.work.rglob("*.incomplete") if p.is_file())
        return self.done_before + partial

    def snapshot(self) -> dict[str, Any]:
        now, done = time.monotonic(), self.on_disk()
        self._samples = [s for s in self._samples if now - s[0] <= 30] + [(now, done)]
        t0, d0 = self._samples[0]
        rate = (done - d0) / (now - t0) if now - t0 >= 1 else None
        eta = round((self.total - done) / rate) if rate else None
        return {
            "model": self.model,
            "file": self.file,
            "state": self.state,
            "done_bytes": done,
            "total_bytes": self.total,
            "percent": round(100 * done / self.total, 1) if self.total else 0.0,
            "rate_bytes_per_s": round(rate, 1) if rate is not None else None,
            "eta_s": eta,
        }

    def report(self, log: bool) -> None:
        snap = self.snapshot()
        if self.write_file:
            write_atomic(progress_path(), json.dumps(snap))
        if log:
            self.say(describe(snap))

    def _run(self) -> None:
        last = 0.0
        while not self._stop.wait(1.0):
            log = time.monotonic() - last >= self.every
            self.report(log)
            if log:
                last = time.monotonic()

    def __enter__(self) -> Progress:
        self.report(log=False)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.write_file:
            progress_path().unlink(missing_ok=True)


# --- download ------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def work_dir(models_dir: Path, remote: Remote) -> Path:
    """Where a pull keeps its partial files: on the models' filesystem (the final rename is atomic), named after
    the commit, so a pull that was cut off (a restart, a lost connection) continues where it stopped."""
    return models_dir / f".pull-{remote.repo.replace('/', '--')}-{remote.revision[:12]}"


def check_disk(models_dir: Path, p: PullPlan, work: Path) -> None:
    have = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) if work.exists() else 0
    missing = p.total_bytes - have
    free = shutil.disk_usage(models_dir).free
    if missing > free:
        raise PullError(
            f"not enough disk for {p.model_file} in {models_dir}: {missing / 1e9:.2f} GB more needed, "
            f"{free / 1e9:.2f} GB free"
        )


def download(
    p: PullPlan, models_dir: Path, token: str | None, say: Callable[[str], object], write_progress: bool = True
) -> Path:
    """Download the plan's files, check each against the hub's sha256, move them into `models_dir` and write the
    manifest (last). Returns the manifest's path. On a wrong checksum the download is deleted."""
    from huggingface_hub import hf_hub_download

    models_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir(models_dir, p.remote)
    check_disk(models_dir, p, work)
    work.mkdir(exist_ok=True)
    got: list[Path] = []
    with Progress(p.ref.name, work, p.total_bytes, say, write_progress) as progress:
        for f in p.files:
            progress.file, progress.state = f.name, "downloading"
            for attempt in range(1, TRANSFER_TRIES + 1):
                try:
                    with hub_errors(p.remote.repo):
                        path = Path(
                            hf_hub_download(
                                p.remote.repo,
                                f.name,
                                revision=p.remote.revision,
                                token=token,
                                local_dir=work,
                                endpoint=endpoint(),
                            )
                        )
                    break
                except (TransferCut, HubUnreachable) as e:
                    if attempt == TRANSFER_TRIES:
                        raise PullError(f"{e}; the part downloaded is kept: the next try continues from it") from None
                    say(f"{e}; continuing where it stopped (try {attempt + 1} of {TRANSFER_TRIES})")
                    time.sleep(2 * attempt)
            progress.state = "verifying"
            progress.done_before += f.size
            if f.sha256 and sha256_file(path) != f.sha256:
                shutil.rmtree(work, ignore_errors=True)
                raise PullError(
                    f"{p.remote.repo}/{f.name}: its sha256 does not match the hub's ({f.sha256[:16]}...); "
                    "the download was deleted, nothing was kept"
                )
            try:
                gguf.read_gguf(path).check_complete()
            except gguf.GGUFError as e:
                shutil.rmtree(work, ignore_errors=True)
                raise PullError(f"{p.remote.repo}/{f.name} is not a usable GGUF file: {e}") from None
            got.append(path)
        progress.report(log=True)
    final = models_dir / f"{p.stem}.gguf"
    final_mm = models_dir / f"{p.stem}.mmproj.gguf" if p.mmproj_file else None
    os.replace(got[0], final)
    if final_mm is not None:
        os.replace(got[1], final_mm)
    manifest = models_dir / f"{p.stem}.json"
    write_json_atomic(manifest, make_manifest(p, final, final_mm))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def make_manifest(p: PullPlan, final: Path, final_mm: Path | None) -> dict[str, object]:
    model = p.remote.files[p.model_file]
    mm = p.remote.files[p.mmproj_file] if p.mmproj_file else None
    return {
        "name": p.ref.name,
        "source": {"pulled": p.ref.text, "repo": p.remote.repo, "revision": p.remote.revision, "file": model.name},
        "architecture": p.shape.architecture,
        "kind": p.kind,
        "quant": p.quant,
        "file": final.name,
        "sha256": model.sha256 or sha256_file(final),
        "size": final.stat().st_size,
        "parameters": p.shape.n_params,
        "trained_context": p.shape.n_ctx_train,
        "mmproj": None
        if final_mm is None or mm is None
        else {"file": final_mm.name, "sha256": mm.sha256 or sha256_file(final_mm), "size": final_mm.stat().st_size},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# --- what is on the board ------------------------------------------------------------------------------------


def find_local(ref: Ref, models: list[LocalModel]) -> LocalModel | None:
    """A model on the board that is what `ref` names: the same repo (and quant, when one was asked for), or a
    model of that name."""
    for m in models:
        same_repo = str(m.source.get("repo", "")).lower() == ref.repo.lower()
        if (same_repo or m.name == ref.name) and ref.quant in ("auto", m.quant):
            return m
    return None


def token_from_env(env: Mapping[str, str]) -> str | None:
    """HF_TOKEN, or the contents of HF_TOKEN_FILE (for gated repos; never logged)."""
    if env.get("HF_TOKEN", "").strip():
        return env["HF_TOKEN"].strip()
    name = env.get("HF_TOKEN_FILE", "").strip()
    if not name:
        return None
    try:
        return Path(name).read_text().strip() or None
    except OSError as e:
        raise PullError(f"HF_TOKEN_FILE={name}: cannot read it ({e.strerror})") from None
