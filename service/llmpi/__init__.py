"""llmpi: what runs around llama-server inside the appliance container (launcher, health check, supervisor glue)."""

__version__ = "0.1.0"  # = pyproject.toml's version (a unit test keeps them equal)
