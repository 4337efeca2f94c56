"""llmpi: what runs around llama-server inside the appliance container (launcher, health check, supervisor glue)."""
