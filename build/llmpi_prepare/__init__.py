"""llmpi's model pipeline: from a Hugging Face repo (or a catalog preset) to a GGUF that fits the board."""
