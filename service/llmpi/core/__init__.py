"""The bottom layer: reading the environment (env), runtime paths and file names (paths), the typed Settings, keys,
sizes (units) and the one failure state (failure). It imports nothing else of llmpi."""
