"""Docker HEALTHCHECK: healthy only when llama-server answers /health with 200 (model loaded, serving).

/health is public, so no key is needed. When the launcher refused to start, the reason is printed, so that
`docker inspect --format '{{json .State.Health}}'` shows why the container is unhealthy.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from .config import config_error_marker


def main() -> int:
    marker = config_error_marker()
    if marker.exists():
        print(f"llmpi refused to start: {marker.read_text().strip()}")
        return 1
    port = os.environ.get("LLAMA_ARG_PORT") or os.environ.get("LLMPI_PORT") or "8080"
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            print(f"{url}: {resp.status}")
            return 0 if resp.status == 200 else 1
    except urllib.error.HTTPError as e:
        print(f"{url}: {e.code} ({'loading the model' if e.code == 503 else e.reason})")
    except OSError as e:
        print(f"{url}: not answering ({e})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
