"""Every unit test gets a runtime directory of its own (LLMPI_RUNTIME_DIR), as each container has its own /tmp."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPI_RUNTIME_DIR", str(tmp_path / "run"))
