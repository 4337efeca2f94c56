"""supervisord, started without importing pkg_resources (setuptools) up front.

supervisor's options module imports pkg_resources at the top but uses it only to load custom RPC-interface or
result-handler factories, which llmpi does not configure. Importing it costs supervisord about 0.2 s at every start
and several MiB of resident memory for the container's whole life (docs/benchmarks.md). Here it is replaced by a
stand-in that imports the real module on first use, so a configuration that does need it still works.

The container's entrypoint: `python3 -m llmpi.supervisord --configuration ...` (this process *is* supervisord).
"""

from __future__ import annotations

import importlib
import sys
import types


class _LazyPkgResources(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        del sys.modules["pkg_resources"]
        real = importlib.import_module("pkg_resources")
        sys.modules["pkg_resources"] = real
        return getattr(real, name)


def main() -> None:
    sys.modules.setdefault("pkg_resources", _LazyPkgResources("pkg_resources"))
    from supervisor import supervisord

    sys.argv[0] = "supervisord"
    supervisord.main()


if __name__ == "__main__":
    main()
