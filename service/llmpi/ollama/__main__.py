"""`python3 -m llmpi.ollama`: the Ollama door's process (supervisord's program `ollama`; llmpi.ollama.door).

It lives as long as the container, so it keeps what it loads small: it needs no OpenSSL hash, and TLS only with
LLMPI_TLS on, yet asyncio imports `ssl` and hashlib `_hashlib`, which map OpenSSL's libraries (about 5 MiB of
resident memory; docs/ollama.md). Marked absent before anything imports them, asyncio runs without TLS support and
hashlib and hmac use CPython's own implementations, as they do wherever OpenSSL is missing; `ssl` is left to load
when the door serves HTTPS (LLMPI_TLS, not off).
"""

import os
import sys

if os.environ.get("LLMPI_TLS", "").strip().lower() in ("off", "0", "false", "no"):
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]

from .door import main  # noqa: E402

sys.exit(main())
