"""What each key used: the usage ledger llama-server keeps on the data volume (patch 0027), read for `llmpi keys
usage`."""
