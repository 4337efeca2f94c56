"""A pytest plugin for upstream's own server tests (vendor/llama.cpp/tools/server/tests of the pinned sdist), run
inside the image against its llama-server (tests/contract/test_upstream.py): their model presets download from
the Hugging Face hub, which is not reachable here, so `tinyllama2` serves the image's embedded model instead and
nothing is downloaded before the tests."""

import utils  # type: ignore[import-not-found]  # upstream's tests/utils.py, on PYTHONPATH in the container

EMBEDDED = "/opt/llmpi/models/gemma-3-270m-q4_k_m.gguf"


def embedded(preset: object) -> staticmethod:  # type: ignore[type-arg]
    def make() -> object:
        server = preset()  # type: ignore[operator]
        server.model_hf_repo = None
        server.model_hf_file = None
        server.model_file = EMBEDDED
        server.offline = False
        return server

    return staticmethod(make)


utils.ServerPreset.load_all = staticmethod(lambda: None)
utils.ServerPreset.tinyllama2 = embedded(utils.ServerPreset.tinyllama2)
