"""Reading a model repo on the Hugging Face hub (or a stand-in at HF_ENDPOINT) without downloading weights,
and downloading only what a conversion needs, resumably."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import requests
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from llmpi.models.pull import TRANSFER_TRIES  # a file cut off mid-transfer is continued this many times

# what convert_hf_to_gguf.py reads: config, weights, tokenizer, chat template, sentence-transformers pooling;
# never other weight formats (.bin, .pt, onnx/, ...)
NEEDED = [
    "modules.json",
    "1_Pooling/config.json",
    "vocab.txt",
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
]


class PrepareError(Exception):
    """A clear, user-facing reason why the model cannot be prepared (nothing was left half-written)."""


def token_from_env(env: dict[str, str] | None = None) -> str | None:
    """HF_TOKEN, or the contents of HF_TOKEN_FILE (never logged)."""
    e = os.environ if env is None else env
    if e.get("HF_TOKEN"):
        return e["HF_TOKEN"].strip()
    if e.get("HF_TOKEN_FILE"):
        try:
            return Path(e["HF_TOKEN_FILE"]).read_text().strip() or None
        except OSError as err:
            raise PrepareError(f"HF_TOKEN_FILE={e['HF_TOKEN_FILE']}: cannot read it ({err.strerror})") from None
    return None


@dataclass(frozen=True)
class RemoteModel:
    repo_id: str
    revision: str  # the commit sha the revision resolved to; everything after uses it
    config: dict[str, object]
    n_params: int
    files: dict[str, int]  # path -> size in bytes
    gated: bool

    @property
    def download_bytes(self) -> int:
        return sum(size for name, size in self.files.items() if _needed(name))


def endpoint() -> str | None:
    """HF_ENDPOINT, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def _needed(name: str) -> bool:
    return any(fnmatch(name, pattern) and name.count("/") == pattern.count("/") for pattern in NEEDED)


def explain(err: Exception, repo_id: str, revision: str | None) -> PrepareError:
    if isinstance(err, GatedRepoError):
        return PrepareError(
            f"{repo_id} is a gated model: accept its license on the hub, then pass a token (HF_TOKEN or HF_TOKEN_FILE)"
        )
    if isinstance(err, RevisionNotFoundError):
        return PrepareError(f"{repo_id} has no revision {revision!r}")
    if isinstance(err, RepositoryNotFoundError):
        return PrepareError(f"no model repo {repo_id!r} on the hub (or it is private and no token was given)")
    if isinstance(err, EntryNotFoundError):
        return PrepareError(f"{repo_id} has no config.json: not a transformers model llama.cpp can convert")
    return PrepareError(f"the hub answered an error for {repo_id}: {err}")


def inspect(repo_id: str, revision: str | None = None, token: str | None = None) -> RemoteModel:
    """Metadata only: the commit, the file list with sizes, config.json and the parameter count (from the
    safetensors headers, read with HTTP range requests). No weights are downloaded."""
    api = HfApi(token=token, endpoint=endpoint())
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        sha = info.sha or revision or "main"
        files = {s.rfilename: int(s.size or 0) for s in (info.siblings or [])}
        config_path = hf_hub_download(repo_id, "config.json", revision=sha, token=token, endpoint=endpoint())
        config = json.loads(Path(config_path).read_text())
        if not any(name.endswith(".safetensors") for name in files):
            raise PrepareError(f"{repo_id} has no safetensors weights (only {', '.join(sorted(files)) or 'nothing'})")
        st = api.get_safetensors_metadata(repo_id, revision=sha)
        n_params = sum(st.parameter_count.values())
    except PrepareError:
        raise
    except (HfHubHTTPError, EntryNotFoundError) as e:
        raise explain(e, repo_id, revision) from None
    return RemoteModel(repo_id, sha, config, n_params, files, bool(getattr(info, "gated", False)))


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def require_disk(where: Path, need: int, what: str, have_in: Path | None = None) -> None:
    """PrepareError unless the filesystem of `where` can take `need` bytes, less what `have_in` already holds
    (the part of an interrupted run that is already on disk)."""
    missing = need - (tree_size(have_in) if have_in is not None else 0)
    free = shutil.disk_usage(where).free
    if missing > free:
        raise PrepareError(
            f"not enough disk for {what} in {where}: {missing / 1e9:.2f} GB more needed, {free / 1e9:.2f} GB free"
        )


def download(model: RemoteModel, dest: Path, token: str | None = None) -> Path:
    """Download the files a conversion needs into `dest` (resumable: an interrupted run continues where it
    stopped), after checking the free disk. Returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    require_disk(dest, model.download_bytes, "the download", have_in=dest)
    for attempt in range(1, TRANSFER_TRIES + 1):
        try:
            snapshot_download(
                model.repo_id,
                revision=model.revision,
                token=token,
                local_dir=dest,
                allow_patterns=NEEDED,
                endpoint=endpoint(),
            )
            return dest
        except (HfHubHTTPError, EntryNotFoundError) as e:
            raise explain(e, model.repo_id, model.revision) from None
        except requests.exceptions.ChunkedEncodingError as e:  # cut off mid-file: huggingface_hub does not retry it
            if attempt == TRANSFER_TRIES:
                raise PrepareError(f"the download from {model.repo_id} was cut off {attempt} times ({e})") from None
            print(f"the download was cut off ({type(e).__name__}); continuing where it stopped", flush=True)
    return dest
