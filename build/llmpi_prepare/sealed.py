"""llama.cpp's convert_hf_to_gguf.py run with transformers unable to run a model repo's own code.

`python3 -m llmpi_prepare.sealed CONVERTER [ARGS...]` runs the converter (as its own `python3 CONVERTER ARGS`
would) after `seal_transformers()`. The converter asks transformers for `trust_remote_code=True` in places (a
tokenizer that a repo's `auto_map` names); sealed, every such request is answered as `trust_remote_code=False`: a
class transformers has is used, and a repo whose conversion needs its own code is refused (RemoteCodeRefused, exit
REFUSED_EXIT, a line starting with REFUSED) before any of that code is copied or imported. llmpi_prepare.convert
starts it with the hub libraries told to stay offline (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE).
"""

from __future__ import annotations

import errno
import runpy
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

REFUSED = "llmpi-prepare: refused:"  # the converter's log line that llmpi_prepare.convert reports as the reason
REFUSED_EXIT = 3
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# transformers' modules that resolve trust_remote_code or load a repo's classes (transformers 4.57)
AUTO_MODULES = (
    "transformers.dynamic_module_utils",
    "transformers.models.auto.auto_factory",
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.auto.processing_auto",
    "transformers.models.auto.image_processing_auto",
    "transformers.models.auto.feature_extraction_auto",
    "transformers.models.auto.video_processing_auto",
)


class RemoteCodeRefused(Exception):
    """A model repo's conversion needs its own Python code, which llmpi-prepare never runs."""


def resolve_trust_remote_code(
    trust_remote_code: object, model_name: object, has_local_code: bool, has_remote_code: bool, *_: object, **__: object
) -> bool:
    """transformers' resolve_trust_remote_code, sealed: always False (whatever the caller asked for); refused when
    only the repo's own code could load it."""
    if has_remote_code and not has_local_code:
        raise RemoteCodeRefused(
            f"{model_name} needs its own Python code (auto_map) to be loaded, and llmpi-prepare never runs a "
            "model repo's code; look for a ready GGUF of this model instead"
        )
    return False


def no_repo_code(*args: object, **_: object) -> NoReturn:
    """transformers' functions that copy or import a repo's code, sealed."""
    what = ", ".join(str(a) for a in args[:2])
    raise RemoteCodeRefused(
        f"loading a model repo's own code ({what}) was asked for, and llmpi-prepare never runs it; look for a ready "
        "GGUF of this model instead"
    )


SEALED = {
    "resolve_trust_remote_code": resolve_trust_remote_code,
    "get_class_from_dynamic_module": no_repo_code,
    "get_cached_module_file": no_repo_code,
    "get_class_in_module": no_repo_code,
}


def seal(modules: Iterable[ModuleType]) -> int:
    """Replace each sealed function where a module has bound it (its own name in the module's namespace, so a lazy
    module is not made to import anything). Returns how many were replaced."""
    n = 0
    for module in modules:
        names = vars(module)
        for name, replacement in SEALED.items():
            if name in names and names[name] is not replacement:
                setattr(module, name, replacement)
                n += 1
    return n


def seal_transformers() -> int:
    """Import transformers' Auto* modules and seal them and every transformers module loaded so far; a module that
    imports one of these functions later gets it from dynamic_module_utils, sealed first. Returns how many
    functions were replaced."""
    import importlib

    n = seal([importlib.import_module(AUTO_MODULES[0])])  # transformers without it has no remote code to seal
    for name in AUTO_MODULES[1:]:
        try:
            n += seal([importlib.import_module(name)])
        except ImportError:  # an Auto* module this transformers lacks (or cannot import) loads nothing either
            continue
    loaded = [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "transformers" and m is not None]
    return n + seal(loaded)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m llmpi_prepare.sealed CONVERTER [ARGS...]", file=sys.stderr)
        return 2
    converter = Path(argv[0]).resolve()
    seal_transformers()
    sys.argv = [str(converter), *argv[1:]]
    sys.path.insert(0, str(converter.parent))  # as `python3 CONVERTER` has it: its `conversion` package beside it
    try:
        runpy.run_path(str(converter), run_name="__main__")
    except RemoteCodeRefused as e:
        print(f"{REFUSED} {e}", file=sys.stderr, flush=True)
        return REFUSED_EXIT
    except OSError as e:
        if e.errno != errno.ENOSPC and "requested and" not in str(e):
            raise
        # the disk is full: one line, which still fits where the traceback (longer through this module) may not
        # (the converter's log is on the same disk), and which llmpi_prepare.convert reads as "the disk is full"
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
