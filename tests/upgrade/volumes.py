"""The data volumes of earlier releases, kept as fixtures (tests/upgrade/volumes/<release>.tar.gz with what that
release said about it in <release>.json), and putting one into a compose project's volumes before it starts.

A fixture holds the data volume and the models volume (as `models/`) as that release's image left them, owners
and modes included, minus the model files that are the image's own embedded model (listed in the .json): those
are copied from the image under test into the volume, so a fixture stays a few kilobytes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from llmpi.plan.model_files import EMBEDDED_MODEL
from tests.compose_helpers import Project

EMBEDDED = EMBEDDED_MODEL  # the image's embedded model, which the fixtures leave out

HERE = Path(__file__).resolve().parent / "volumes"
UID = 10001  # the image's llmpi user


@dataclass(frozen=True)
class Fixture:
    release: str
    archive: Path
    facts: dict[str, Any]  # what the release's own `llmpi` said: keys, named keys, secret, CA, models


def fixtures() -> list[Fixture]:
    found = []
    for facts in sorted(HERE.glob("*.json")):
        found.append(Fixture(facts.stem, facts.with_suffix(".tar.gz"), json.loads(facts.read_text())))
    return found


def volume_names(project: str) -> tuple[str, str]:
    """compose's names for a project's data and models volumes."""
    return f"{project}_llmpi-data", f"{project}_llmpi-models"


def create_volumes(project: str) -> tuple[str, str]:
    """The project's two volumes, made as compose makes them (its labels), so that `up` takes them as its own."""
    client = docker.from_env()
    names = volume_names(project)
    for name, key in zip(names, ("llmpi-data", "llmpi-models"), strict=True):
        labels = {"com.docker.compose.project": project, "com.docker.compose.volume": key}
        client.volumes.create(name=name, labels=labels)
    return names


def run_on_volumes(image: str, project: str, argv: list[str], user: str, stdin: bytes | None = None) -> bytes:
    """A one-off container of `image` with the project's volumes at /data and /data/models, no network."""
    data, models = volume_names(project)
    cmd = ["docker", "run", "--rm", "-i", "--network", "none", "--user", user, "-v", f"{data}:/data",
           "-v", f"{models}:/data/models", "--entrypoint", argv[0], image, *argv[1:]]  # fmt: skip
    return subprocess.run(cmd, input=stdin, capture_output=True, check=True, timeout=300).stdout


def load_fixture(image: str, project: str, fixture: Fixture) -> None:
    """The release's volumes, as it left them, into the project's (owners kept: tar as root, numeric owners),
    then the embedded model's copies from `image`."""
    create_volumes(project)
    run_on_volumes(image, project, ["tar", "-C", "/data", "-xzpf", "-", "--numeric-owner"], "0",
                   fixture.archive.read_bytes())  # fmt: skip
    for name in fixture.facts["embedded_copies"]:
        run_on_volumes(image, project, ["cp", EMBEDDED, f"/data/models/{name}"], str(UID))


def said(project: Project, *argv: str) -> str:
    """What a command in the project's llmpi container prints; it must succeed."""
    code, out = project.exec(list(argv))
    assert code == 0, f"{' '.join(argv)} failed: {out}"
    return out.strip()


def what_llmpi_says(project: Project, named: Iterable[str]) -> dict[str, Any]:
    """What the image's own `llmpi` says about the volume: the generated key, the named keys, `llmpi keys list`, the
    cluster secret, the CA's fingerprint and the models /v1/models lists. make_fixture records it for a release;
    the upgrade test checks that a later image says the same."""
    key = said(project, "llmpi", "keys", "show")
    models = requests.get(f"{project.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    return {
        "key": key,
        "named": {name: said(project, "llmpi", "keys", "show", name) for name in named},
        "keys_list": said(project, "llmpi", "keys", "list"),
        "cluster_secret": said(project, "llmpi", "cluster", "secret"),
        "ca_fingerprint": said(project, "llmpi", "tls", "ca").splitlines()[-1].split("fingerprint:", 1)[1].strip(),
        "models": sorted(m["id"] for m in models["data"]),
    }
