from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser import browser  # noqa: F401  (a shared fixture)
from tests.compose_helpers import (
    COMPOSE_FILE,
    PREPARE_IMAGE,
    Project,
    build_logged,
    build_profile_service,
    compose_env,
)


@pytest.fixture(scope="session")
def appliance_image(pytestconfig: pytest.Config) -> str:
    """Build the image once per test session (a no-op when the layer cache is warm), as `docker compose build`."""
    image = os.environ.get("LLMPI_IMAGE", "llmpi:latest")
    cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "build", "llmpi"]
    why = "about 10 minutes the first time on 2 cores"
    build_logged(pytestconfig, f"the appliance image with docker compose ({why})", cmd, "build.log", compose_env())
    return image


@pytest.fixture(scope="session")
def prepare_image(pytestconfig: pytest.Config, appliance_image: str) -> str:
    """The model pipeline's image (compose's `prepare` service), built once per session."""
    build_profile_service(pytestconfig, "prepare", "prepare", "torch from Debian; a few minutes the first time")
    return PREPARE_IMAGE


# --- pytest-docker: the session's main appliance, started once with the defaults a user gets -----------------


@pytest.fixture(scope="session")
def docker_compose_file(appliance_image: str) -> list[str]:
    os.environ.update(compose_env())  # pytest-docker runs compose with this process's environment
    return [str(COMPOSE_FILE)]


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"llmpi-test-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans --timeout 10"]


@pytest.fixture(scope="session")
def main_project(docker_services: object, docker_compose_project_name: str) -> Iterator[Project]:
    project = Project(docker_compose_project_name)
    project.wait_healthy()
    yield project
    project.save_logs()  # artifacts/<project>.log, before pytest-docker removes the container


@pytest.fixture
def appliance(main_project: Project) -> Project:
    """The main appliance, healthy (a test before may have restarted it)."""
    main_project.wait_healthy()
    return main_project


@pytest.fixture(scope="session")
def api_key(main_project: Project) -> str:
    return main_project.generated_key()


@pytest.fixture
def extra_project(request: pytest.FixtureRequest, appliance_image: str) -> Iterator[Project]:
    """A second compose project for tests that need other settings; removed (with its volume) afterwards."""
    project = Project(f"llmpi-test-{os.getpid()}-{request.node.name[:30].lower().replace('[', '-').strip(']')}")
    project.name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in project.name)
    yield project
    project.down()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if (here / "appliance") in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.appliance)
