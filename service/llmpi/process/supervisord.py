"""supervisord, started without importing pkg_resources (setuptools).

supervisor's options module imports pkg_resources at the top, and uses it for one thing: resolving "module:attr"
specs (an event listener's result handler, custom RPC interfaces) with `EntryPoint.parse(...).resolve()`.
Importing pkg_resources costs supervisord about 0.2 s at every start and 6.5 MiB of resident memory for the
container's whole life (docs/benchmarks.md). Here a stand-in module answers that one use with importlib; any other
use of pkg_resources imports the real module.

The container's entrypoint: `python3 -m llmpi.process.supervisord --configuration ...` (this process *is* supervisord).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types

from ..core import paths


class EntryPoint:
    """What supervisor needs of pkg_resources.EntryPoint: parse("name=module:attr.attr") and resolve()."""

    def __init__(self, module: str, attrs: list[str]) -> None:
        self.module, self.attrs = module, attrs

    @classmethod
    def parse(cls, src: str) -> EntryPoint:
        _, _, target = src.partition("=")
        module, _, attrs = target.strip().partition(":")
        if not module:
            raise ValueError(f"not an entry point: {src!r}")
        return cls(module.strip(), [a for a in attrs.strip().split(".") if a])

    def resolve(self) -> object:
        obj: object = importlib.import_module(self.module)
        for attr in self.attrs:
            obj = getattr(obj, attr)
        return obj


class _PkgResources(types.ModuleType):
    EntryPoint = EntryPoint

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # the import system and inspect probe modules' dunders: not a use
            raise AttributeError(name)
        del sys.modules["pkg_resources"]
        real = importlib.import_module("pkg_resources")
        sys.modules["pkg_resources"] = real
        return getattr(real, name)


def start_without_waiting() -> None:
    """supervisord starts its programs only after its main loop's first poll, which waits up to 1 s for events that
    cannot have come yet: the container was healthy 1 s later than it could be. The first poll returns at once."""
    from supervisor import poller

    cls = poller.Poller
    original = cls.poll
    first = [True]

    def poll(self: object, timeout: float) -> object:
        if first[0]:
            first[0] = False
            timeout = 0
        return original(self, timeout)

    cls.poll = poll


def with_channels(argv: list[str]) -> list[str]:
    """The command line with the configuration that llmpi.cluster.channels prepared: spiped's key and, on a head with
    workers, its channels (in a process of its own: supervisord, living as long as the container, never imports
    the settings)."""
    if "--configuration" not in argv[:-1]:
        return argv
    at = argv.index("--configuration") + 1
    if not os.environ.get("LLMPI_WORKERS", "").strip() and not argv[at].endswith("supervisord.worker.conf"):
        return argv  # one board: nothing to prepare (no Python process more at every start)
    done = subprocess.run(
        [sys.executable, "-m", "llmpi.cluster.channels", argv[at]], stdout=subprocess.PIPE, text=True, check=False
    )
    configuration = done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else ""
    return [*argv[:at], configuration or argv[at], *argv[at + 1 :]]


def main() -> None:
    paths.clear_state()  # a new container start: no refusal or failed attempts from a start before
    sys.argv = with_channels(sys.argv)
    sys.modules.setdefault("pkg_resources", _PkgResources("pkg_resources"))
    from supervisor import supervisord

    start_without_waiting()

    sys.argv[0] = "supervisord"
    supervisord.main()


if __name__ == "__main__":
    main()
