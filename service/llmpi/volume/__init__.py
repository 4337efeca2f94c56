"""The data volume across llmpi releases: its format version and the migrations forward (`layout`), and the
backup of what a household cannot make again (`backup`)."""
