"""HTTPS on the home network (LLMPI_TLS): a small local CA in the data volume and a server certificate for the
board's names and addresses, which llama-server (patch 0025) and the Ollama door serve beside plain HTTP."""
