"""Ollama's API on its own port (11434), translated onto llama-server over loopback: `door.py` the process,
`http.py` its HTTP, `translate.py` the requests and answers field for field, `listing.py` the models as Ollama
describes them, `keepalive.py` keep_alive, `manage.py` pulls and deletions through `llmpi models`."""
