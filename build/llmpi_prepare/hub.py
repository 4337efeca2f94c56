"""A transformers repo on the hub, for conversion: its shape read without downloading weights (`inspect`), and the
files the converter needs downloaded resumably (`download`). Through llmpi's hub client (llmpi.models.hub: the
endpoint, the error messages, the resumable transfer); the token is read as the appliance reads it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import snapshot_download

from llmpi.core.env import ConfigError
from llmpi.core.settings import hub_token
from llmpi.models import hub, pull

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


@contextmanager
def prepare_errors() -> Iterator[None]:
    """The hub client's errors (llmpi.models.hub.HubError, a pull's too) as PrepareError, with the same message."""
    try:
        yield
    except hub.HubError as e:
        raise PrepareError(str(e)) from None


def token_from_env() -> str | None:
    """HF_TOKEN, or the contents of HF_TOKEN_FILE (llmpi.core.settings.hub_token, as the appliance reads it)."""
    try:
        return hub_token(os.environ)
    except ConfigError as e:
        raise PrepareError(str(e)) from None


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


def _needed(name: str) -> bool:
    return any(fnmatch(name, pattern) and name.count("/") == pattern.count("/") for pattern in NEEDED)


def inspect(repo_id: str, revision: str | None = None, token: str | None = None) -> RemoteModel:
    """Metadata only: the commit, the file list with sizes, config.json and the parameter count (from the
    safetensors headers, read with HTTP range requests). No weights are downloaded."""
    with prepare_errors():
        remote = hub.inspect(repo_id, revision, token)
        files = {name: f.size for name, f in remote.files.items()}
        if "config.json" not in files:
            raise PrepareError(f"{repo_id} has no config.json: not a transformers model llama.cpp can convert")
        config_path = hub.fetch_file(remote, "config.json", token, None, print)  # into huggingface_hub's cache
        config = json.loads(config_path.read_text())
        if not any(name.endswith(".safetensors") for name in files):
            raise PrepareError(f"{repo_id} has no safetensors weights (only {', '.join(sorted(files)) or 'nothing'})")
        with hub.hub_errors(repo_id, revision):
            st = hub.api(token).get_safetensors_metadata(repo_id, revision=remote.revision)
    n_params = sum(st.parameter_count.values())
    return RemoteModel(repo_id, remote.revision, config, n_params, files, remote.gated)


def download(model: RemoteModel, dest: Path, token: str | None = None, say: Callable[[str], object] = print) -> Path:
    """Download the files a conversion needs into `dest` (resumable: an interrupted run continues where it
    stopped), after checking the free disk. Returns `dest`."""
    dest.mkdir(parents=True, exist_ok=True)

    def get() -> Path:
        snapshot_download(
            model.repo_id,
            revision=model.revision,
            token=token,
            local_dir=dest,
            allow_patterns=NEEDED,
            endpoint=hub.endpoint(),
        )
        return dest

    with prepare_errors():
        pull.require_disk(dest, model.download_bytes, "the download", have_in=dest)
        return hub.transfer(model.repo_id, get, say)
