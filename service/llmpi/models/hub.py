"""The Hugging Face hub client (or a stand-in at HF_ENDPOINT), for the appliance's pull and for llmpi-prepare.

`inspect` reads a repo's files with their sizes and sha256 from the hub's own metadata; `remote_header` reads a GGUF
file's header by HTTP range requests; `transfer` runs a download by huggingface_hub again from where it stopped when
it is cut off; `sha256_matches` checks a downloaded file against the hub's sha256. `hub_errors` turns the hub's
exceptions into HubError, with what to do. huggingface_hub and requests are imported in the functions that use
them, so a start that serves a model file never loads them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..plan import fit, gguf

if TYPE_CHECKING:
    from huggingface_hub import HfApi

T = TypeVar("T")

# a download cut off mid-file (or the hub out of reach) is tried this many times in all, each try continuing (HTTP
# range) from the part on disk
TRANSFER_TRIES = 4
HEADER_FIRST_READ = 4 * fit.MiB
HEADER_MAX_READ = 256 * fit.MiB
MANUAL_COPY = (
    "To serve a model without the hub, copy a GGUF file into the data volume "
    "(docker compose cp my-model.gguf llmpi:/data/models/) and set LLMPI_MODEL=/data/models/my-model.gguf"
)


class HubError(Exception):
    """A clear reason why a model cannot come from the hub, with what to do."""


class HubUnreachable(HubError):
    """The hub could not be reached at all (no network, DNS, refused)."""


class TransferCut(HubError):
    """A download stopped mid-file; the part on disk is kept and the next try continues from it."""


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
    gated: bool = False


def endpoint() -> str | None:
    """HF_ENDPOINT, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def api(token: str | None) -> HfApi:
    """huggingface_hub's API client for `endpoint()`, with the token (None: anonymous)."""
    from huggingface_hub import HfApi

    return HfApi(token=token, endpoint=endpoint())


@contextmanager
def hub_errors(repo: str, revision: str | None = None) -> Iterator[None]:
    """The hub's exceptions as HubError, with what to do: HubUnreachable when the hub cannot be reached, TransferCut
    when a transfer stops mid-file."""
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
        raise HubError(
            f"{repo} is a gated model: accept its license on the hub, then pass a token (HF_TOKEN or HF_TOKEN_FILE)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(f"{repo} has no revision {revision or 'main'!r}") from None
    except RepositoryNotFoundError:
        raise HubError(f"no model repo {repo!r} on the hub (or it is private and no token was given)") from None
    except (requests.ConnectionError, requests.Timeout, LocalEntryNotFoundError) as e:
        # LocalEntryNotFoundError: huggingface_hub could not reach the hub for a file and has none in its cache
        where = endpoint() or "https://huggingface.co"
        raise HubUnreachable(
            f"cannot reach the hub at {where} for {repo} ({type(e).__name__}). {MANUAL_COPY}"
        ) from None
    except HfHubHTTPError as e:
        raise HubError(f"the hub answered an error for {repo}: {e}") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
        raise HubError(f"HF_ENDPOINT={endpoint()!r} is not a URL the hub can be reached at") from None
    except requests.RequestException as e:  # a transfer cut off mid-file (ChunkedEncodingError, ...)
        raise TransferCut(f"the download from {repo} was cut off ({type(e).__name__}: {e})") from None


def inspect(repo: str, revision: str | None, token: str | None) -> Remote:
    """The repo's files with sizes and sha256, at the commit `revision` (None: main) resolves to. Metadata only."""
    with hub_errors(repo, revision):
        info = api(token).model_info(repo, revision=revision, files_metadata=True)
    files = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        files[s.rfilename] = RemoteFile(s.rfilename, int(s.size or 0), getattr(lfs, "sha256", None) if lfs else None)
    return Remote(repo, info.sha or revision or "main", files, bool(getattr(info, "gated", False)))


def transfer(
    repo: str, get: Callable[[], T], say: Callable[[str], object], sleep: Callable[[float], object] = time.sleep
) -> T:
    """`get()`, a download by huggingface_hub (which continues a partial file it finds on disk), tried again when it
    is cut off or the hub cannot be reached, TRANSFER_TRIES times in all; after try n it `sleep`s 2n seconds. The
    last failure is a HubError."""
    attempt = 1
    while True:
        try:
            with hub_errors(repo):
                return get()
        except (TransferCut, HubUnreachable) as e:
            if attempt == TRANSFER_TRIES:
                raise HubError(f"{e}; the part downloaded is kept: the next try continues from it") from None
            say(f"{e}; continuing where it stopped (try {attempt + 1} of {TRANSFER_TRIES})")
            sleep(2 * attempt)
            attempt += 1


def fetch_file(remote: Remote, name: str, token: str | None, dest: Path | None, say: Callable[[str], object]) -> Path:
    """One file of the repo, at its pinned commit, into `dest` (None: huggingface_hub's cache), resumable (see
    `transfer`). Returns its path."""
    from huggingface_hub import hf_hub_download

    def get() -> Path:
        return Path(
            hf_hub_download(
                remote.repo, name, revision=remote.revision, token=token, local_dir=dest, endpoint=endpoint()
            )
        )

    return transfer(remote.repo, get, say)


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
                    raise HubError(f"{remote.repo}/{name}: the hub answered {r.status_code} for its header")
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
                raise HubError(f"{remote.repo}/{name}: no GGUF header in its first {n} bytes") from None
            want *= 4
        except gguf.GGUFError as e:
            raise HubError(f"{remote.repo}/{name}: {e}") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_matches(path: Path, f: RemoteFile) -> bool:
    """Whether the downloaded `path` has the sha256 the hub lists for `f` (True when it lists none: a small non-LFS
    file)."""
    return not f.sha256 or sha256_file(path) == f.sha256
