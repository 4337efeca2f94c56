"""llmpi: what runs around llama-server inside the appliance container, in packages by role whose imports run one
way (tests/unit/test_layers.py): core <- host <- plan <- models / cluster / lan <- process <- cli."""

__version__ = "0.2.0"  # = pyproject.toml's version (a unit test keeps them equal)
