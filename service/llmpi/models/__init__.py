"""Models by name: the catalog, the Hugging Face hub client, pulls, and resolving LLMPI_MODEL / LLMPI_DRAFT_MODEL
to a file on the board. Imports core, host and plan."""
