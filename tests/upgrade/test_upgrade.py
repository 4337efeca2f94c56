"""Upgrades a household never notices (marker `upgrade`): this image started on the data volume each earlier
release wrote (tests/upgrade/volumes/, made by that release's image; no old image is built here) serves every
key, named key, model and secret it held, the volume's format moved forward; `llmpi backup --models`, then a board
with empty volumes, then `llmpi restore`, gives the same keys (the `openai` SDK answers with each), models, cluster
secret and CA; a volume of a newer llmpi is refused in the one failure state, left as it was; and restoring the
backup there (going back) serves it all again."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.appliance.health_helpers import health_log
from tests.appliance.replies import assert_says_something
from tests.compose_helpers import Project, wait_for
from tests.upgrade.volumes import Fixture, fixtures, load_fixture, what_llmpi_says

pytestmark = pytest.mark.upgrade

FIXTURES = fixtures()


def project_name(what: str) -> str:
    return f"llmpi-upgrade-{os.getpid()}-{what}"


def compose_cmd(project: Project) -> list[str]:
    return ["docker", "compose", "-p", project.name, "-f", str(project.files[0])]


def assert_serves_what_the_release_held(project: Project, facts: dict[str, Any]) -> None:
    now = what_llmpi_says(project, facts["named"])
    for name in ("key", "named", "cluster_secret", "ca_fingerprint", "models"):
        assert now[name] == facts[name], name
    assert "high priority" in now["keys_list"] and "20000 tokens a day" in now["keys_list"], now["keys_list"]
    for key in [facts["key"], *facts["named"].values()]:
        client = OpenAI(base_url=f"{project.url}/v1", api_key=key, max_retries=2)
        for model in facts["models"]:
            reply = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, temperature=0
            )
            assert_says_something(reply, max_tokens=4, model=model)


@pytest.fixture
def upgraded(request: pytest.FixtureRequest, appliance_image: str) -> Iterator[tuple[Project, Fixture]]:
    fixture: Fixture = request.param
    project = Project(project_name(fixture.release.replace(".", "-")))
    load_fixture(appliance_image, project.name, fixture)
    try:
        project.up()
        project.wait_healthy(300)
        yield project, fixture
    finally:
        project.down()


@pytest.mark.parametrize("upgraded", FIXTURES, ids=[f.release for f in FIXTURES], indirect=True)
def test_an_earlier_releases_volume_is_served_then_backed_up_and_restored(
    upgraded: tuple[Project, Fixture], tmp_path: Path
) -> None:
    project, fixture = upgraded
    logs = project.logs()
    code, stamp = project.exec(["cat", "/data/format.json"])
    assert code == 0 and '"format": 1' in stamp, stamp
    if fixture.facts["volume_format"] < 1:  # a release before the format (0.1.0): migrated, said in the log
        assert "data volume format 0 -> 1" in logs
    assert_serves_what_the_release_held(project, fixture.facts)

    # backup (the model files too) -> a board with empty volumes -> restore -> restart
    archive = tmp_path / "llmpi-backup.tar"
    with archive.open("wb") as out:
        done = subprocess.run([*compose_cmd(project), "exec", "-T", "llmpi", "llmpi", "backup", "--models"],
                              stdout=out, stderr=subprocess.PIPE, env=project.environment(), timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"backed up" in done.stderr and archive.stat().st_size > 100 << 20  # the model files are in it
    fresh = Project(project_name(f"restore-{fixture.release.replace('.', '-')}"))
    try:
        fresh.up()
        fresh.wait_healthy(300)
        assert fresh.generated_key() != fixture.facts["key"]
        restore(fresh, archive)
        assert_serves_what_the_release_held(fresh, fixture.facts)
        refuse_a_newer_volume(fresh)
        restore(fresh, archive)  # going back: the backup made before, restored where the newer volume is refused
        assert_serves_what_the_release_held(fresh, fixture.facts)
    finally:
        fresh.down()


def restore(project: Project, archive: Path) -> None:
    """`llmpi restore < archive` in the running container (healthy or refusing to serve), then a restart."""
    with archive.open("rb") as source:
        done = subprocess.run([*compose_cmd(project), "exec", "-T", "llmpi", "llmpi", "restore"], stdin=source,
                              capture_output=True, env=project.environment(), timeout=300)  # fmt: skip
    said = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, said
    assert "restored a backup" in said and "docker compose restart llmpi" in said, said
    project.compose("restart", "llmpi", timeout=120)
    project.wait_healthy(300)


def refuse_a_newer_volume(project: Project) -> None:
    """A volume a newer llmpi wrote: the container stays up, unhealthy, the reason in the health log and the
    container's log, the volume untouched."""
    newer = '{"format": 99, "llmpi": "9.9.9"}\n'
    code, out = project.exec(["sh", "-c", f"printf '%s' '{newer}' > /data/format.json"])
    assert code == 0, out
    project.compose("restart", "llmpi", timeout=120)
    wait_for(lambda: project.docker_health() == "unhealthy", 120, pause=1, what="unhealthy")
    reason = re.compile(r"newer llmpi \(volume format 99; this image, llmpi [0-9.]+, reads formats up to 1\)")
    assert reason.search(health_log(project)), health_log(project)
    assert reason.search(project.logs())
    assert project.container().attrs["RestartCount"] == 0
    code, out = project.exec(["cat", "/data/format.json"])
    assert (code, out) == (0, newer)
