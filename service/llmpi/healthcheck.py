"""Docker HEALTHCHECK: healthy only when llama-server answers /health with 200 (model loaded, serving) and, with
two models (router mode), when /models says that each of them is loaded.

/health is public, so no key is needed; /models is not, so the check reads the key file that llama-server reads.
When the launcher refused to start, the reason is printed, so that
`docker inspect --format '{{json .State.Health}}'` shows why the container is unhealthy.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

from .config import config_error_marker, runtime_dir


def models_not_loaded(base: str) -> list[str]:
    """Router mode: the models named in the launcher's health.json whose status is not "loaded" (all, on error)."""
    try:
        health = json.loads((runtime_dir() / "health.json").read_text())
    except (OSError, ValueError):
        return []
    wanted = [str(m) for m in health.get("models") or []]
    if not wanted:
        return []
    request = urllib.request.Request(f"{base}/models")
    if health.get("key_file"):
        with open(health["key_file"]) as f:
            request.add_header("Authorization", "Bearer " + f.readline().strip())
    with urllib.request.urlopen(request, timeout=4) as resp:
        data = json.load(resp).get("data", [])
    status = {m.get("id"): (m.get("status") or {}).get("value") for m in data if isinstance(m, dict)}
    return [f"{m} ({status.get(m, 'missing')})" for m in wanted if status.get(m) != "loaded"]


def main() -> int:
    marker = config_error_marker()
    if marker.exists():
        print(f"llmpi refused to start: {marker.read_text().strip()}")
        return 1
    port = os.environ.get("LLAMA_ARG_PORT") or os.environ.get("LLMPI_PORT") or "8080"
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            print(f"{url}: {resp.status}")
            if resp.status != 200:
                return 1
        waiting = models_not_loaded(base)
        if waiting:
            print("not loaded yet: " + ", ".join(waiting))
            return 1
        return 0
    except urllib.error.HTTPError as e:
        print(f"{url}: {e.code} ({'loading the model' if e.code == 503 else e.reason})")
    except OSError as e:
        print(f"{url}: not answering ({e})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
