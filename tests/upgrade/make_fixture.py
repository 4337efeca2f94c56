"""Make the fixture of the data volume a release writes, from that release's image (once per release, committed
under tests/upgrade/volumes/; the upgrade test starts every later image on it):

    python -m tests.upgrade.make_fixture IMAGE RELEASE        e.g. llmpi:0.1.0 0.1.0

It starts the image through compose (loopback, nothing announced) with a stand-in hub on the Docker bridge, and
through the release's own `llmpi` makes what a household's board holds: the generated key, two named keys with a
share and a limit, a cluster secret, the local CA (made at the first start), and a model pulled by name (the
embedded Gemma, served by the stand-in). It writes what that `llmpi` says about them to <release>.json and the two
volumes, stopped, to <release>.tar.gz (the model file left out: it is the image's embedded model)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys

from tests.appliance.test_models import bridge_address
from tests.compose_helpers import Project
from tests.hubstub import Hub, Repo
from tests.upgrade.volumes import EMBEDDED, HERE, UID, run_on_volumes, said, what_llmpi_says

NAMED = {"phone": ["--priority", "high", "--max-slots", "1"], "tv": ["--daily-tokens", "20000"]}


def facts_of(project: Project) -> dict[str, object]:
    """What the release's `llmpi` says about the volume, and the volume's format."""
    return {**what_llmpi_says(project, NAMED), "volume_format": volume_format(project)}


def volume_format(project: Project) -> int:
    """The format the release wrote in /data/format.json; 0 for a release that wrote none (0.1.0)."""
    code, out = project.exec(["cat", "/data/format.json"])
    return int(json.loads(out)["format"]) if code == 0 else 0


def embedded_copies(image: str, project: str, embedded_sha256: str) -> list[str]:
    """The model files of the models volume, each checked to be the embedded model (the fixture leaves them out)."""
    listing = run_on_volumes(image, project, ["sh", "-c", "cd /data/models && sha256sum *.gguf"], str(UID))
    copies = []
    for line in listing.decode().splitlines():
        digest, name = line.split(maxsplit=1)
        if digest != embedded_sha256:
            raise SystemExit(f"{name} in the models volume is not the embedded model: the fixture would lack it")
        copies.append(name.lstrip("*"))
    return copies


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.upgrade.make_fixture", description=__doc__.split("\n\n")[0])
    p.add_argument("image")
    p.add_argument("release")
    args = p.parse_args()
    gemma = subprocess.run(["docker", "run", "--rm", "--entrypoint", "cat", args.image, EMBEDDED],
                           capture_output=True, check=True).stdout  # fmt: skip
    project = Project(f"llmpi-fixture-{args.release.replace('.', '-')}", {"LLMPI_IMAGE": args.image})
    try:
        with Hub(host=bridge_address()) as hub:
            hub.repos["test/Gemma-GGUF"] = Repo({"gemma-Q4_K_M.gguf": gemma})
            project.env["HF_ENDPOINT"] = hub.url
            project.up()
            project.wait_healthy(300)
            for name, policy in NAMED.items():
                said(project, "llmpi", "keys", "add", name, *policy)
            said(project, "llmpi", "cluster", "secret")  # a head's generated secret, stored at its first asking
            said(project, "llmpi", "models", "pull", "test/Gemma-GGUF")
        project.wait_healthy(300)
        facts = facts_of(project)
        copies = embedded_copies(args.image, project.name, hashlib.sha256(gemma).hexdigest())
        project.compose("stop", "--timeout", "45")
        archive = run_on_volumes(args.image, project.name, ["tar", "-C", "/data", "-czf", "-", "--numeric-owner",
                                 "--exclude=./.cache", "--exclude=*.gguf", "."], "0")  # fmt: skip
    finally:
        project.down()
    HERE.mkdir(exist_ok=True)
    (HERE / f"{args.release}.tar.gz").write_bytes(archive)
    record = {
        "release": args.release,
        "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "made_by": f"python -m tests.upgrade.make_fixture {args.image} {args.release}",
        "embedded_copies": copies,
        **facts,
    }
    (HERE / f"{args.release}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {HERE / args.release}.tar.gz ({len(archive)} bytes) and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
