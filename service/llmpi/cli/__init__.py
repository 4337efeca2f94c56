"""`llmpi` inside the container: keys, models, cluster, board, status. The top layer."""
