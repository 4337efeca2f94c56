"""From a repo on the (stand-in) hub to a served GGUF, through compose's one-shot `prepare` service, then the
appliance serving the result with one variable (LLMPI_MODEL)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import openai
import pytest
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from llmpi.plan.gguf import read_gguf
from tests import minilm
from tests.browser import shot
from tests.compose_helpers import (
    ARTIFACTS,
    COMPOSE_FILE,
    PIPELINE_OVERRIDE,
    PREPARE_IMAGE,
    ROOT,
    Project,
    say,
    wait_for,
)
from tests.greedy import assert_same_or_near_tie
from tests.hubstub import Hub, Repo, repo_from_dir
from tests.media import data_url, image_message, png

pytestmark = pytest.mark.pipeline
HERE = Path(__file__).resolve().parent
SENTENCES = [
    "A Raspberry Pi can serve a small language model.",
    "The capybara is the largest living rodent.",
    "Quantization shrinks a model so that it fits in memory.",
    "It is raining in Lisbon today.",
    "Docker compose starts the appliance with one command.",
]


def _in_prepare(image: str, args: list[str], mounts: dict[str, str], **kw: object) -> str:
    client = docker.from_env()
    out = client.containers.run(
        image,
        args,
        entrypoint=["python3"],
        user="0",
        remove=True,
        volumes={src: {"bind": dst, "mode": "rw"} for src, dst in mounts.items()},
        **kw,
    )
    return out.decode() if isinstance(out, bytes) else str(out)


@pytest.fixture(scope="module")
def generated(prepare_image: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="llmpi-models-") as d:
        os.chmod(d, 0o755)  # readable by the containers' llmpi user
        _in_prepare(prepare_image, ["/tests/make_models.py", "/out"], {str(HERE): "/tests", d: "/out"})
        yield Path(d)


@pytest.fixture(scope="module")
def hub(generated: Path) -> Iterator[Hub]:
    with Hub() as h:
        h.repos["test/tiny-llama"] = repo_from_dir(generated / "tiny-llama")
        h.repos["test/tiny-llama-draft"] = repo_from_dir(generated / "tiny-llama-draft")
        h.repos["test/tiny-llama-stranger"] = repo_from_dir(generated / "tiny-llama-stranger")
        h.repos["test/unsupported"] = repo_from_dir(generated / "unsupported")
        h.repos["test/tiny-gemma3-vision"] = repo_from_dir(generated / "tiny-gemma3-vision")
        h.repos["test/tiny-qwen2-vl"] = repo_from_dir(generated / "tiny-qwen2-vl")
        h.repos["sentence-transformers/all-MiniLM-L6-v2"] = repo_from_dir(minilm.model_dir())
        yield h


@pytest.fixture(scope="module")
def project(hub: Hub, prepare_image: str) -> Iterator[Project]:
    p = Project(
        f"llmpi-pipeline-{os.getpid()}",
        env={"HF_ENDPOINT": hub.url},
        files=[COMPOSE_FILE, PIPELINE_OVERRIDE],
    )
    yield p
    p.down()


def prepare(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return project.compose(
        "run", "--rm", "--no-deps", "prepare", "run", *args, "--out", "/data/models", check=False, timeout=900
    )


def models_in_volume(project: Project) -> list[str]:
    out = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--user",
            "0",
            "--entrypoint",
            "sh",
            "-v",
            f"{project.name}_llmpi-models:/data/models",
            PREPARE_IMAGE,
            "-c",
            "ls -A /data/models",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(set(out.split()) - {".cache"})  # huggingface_hub's cache (compose's HF_HOME for `prepare`)


def copy_out(project: Project, path: str) -> bytes:
    client = docker.from_env()
    c = client.containers.create(PREPARE_IMAGE, volumes={f"{project.name}_llmpi-models": {"bind": "/data/models"}})
    try:
        stream, _ = c.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            f = tar.extractfile(member)
            assert f is not None
            return f.read()
    finally:
        c.remove()


def serve(project: Project, model: str) -> None:
    project.env["LLMPI_MODEL"] = f"/data/models/{model}"
    project.compose("up", "-d", "--no-build", "--force-recreate", "llmpi")
    project.wait_healthy(240)


def test_unsupported_architecture_is_refused_before_downloading(project: Project, hub: Hub) -> None:
    r = prepare(project, "test/unsupported", "--ram", "8G")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "architecture TotallyNewForCausalLM is not supported by the pinned llama.cpp converter" in r.stderr
    assert models_in_volume(project) == []
    # at most the safetensors header was read (one 100 kB range request), never the weights
    assert hub.stats.body_bytes.get("model.safetensors", 0) <= 100_001


def test_not_enough_ram_is_refused_before_downloading(project: Project, hub: Hub) -> None:
    before = dict(hub.stats.body_bytes)
    r = prepare(project, "test/tiny-llama", "--ram", "64M")
    assert r.returncode == 1
    assert "does not fit in 64 MiB (--ram 64M): no quantization of this model fits" in r.stderr
    assert hub.stats.body_bytes.get("model.safetensors", 0) - before.get("model.safetensors", 0) <= 100_001
    assert models_in_volume(project) == []


def test_tiny_llama_hub_to_served_gguf(project: Project, hub: Hub) -> None:
    r = prepare(project, "test/tiny-llama", "--ram", "8G", "--quant", "Q4_K_M")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "prepare-tiny-llama.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ready: /data/models/tiny-llama.Q4_K_M.gguf" in r.stdout
    # the intermediates (download, f16) are gone; only the model and its manifest are left
    assert models_in_volume(project) == ["tiny-llama.Q4_K_M.gguf", "tiny-llama.Q4_K_M.json"]
    manifest = json.loads(copy_out(project, "/data/models/tiny-llama.Q4_K_M.json"))
    assert manifest["source"] == {"repo": "test/tiny-llama", "revision": hub.repos["test/tiny-llama"].sha}
    assert (manifest["quant"], manifest["kind"], manifest["architecture"]) == ("Q4_K_M", "chat", "LlamaForCausalLM")
    assert manifest["verified"]["generated_tokens"] > 0
    assert manifest["pipeline"]["convert_s"] > 0 and manifest["pipeline"]["peak_disk_bytes"] > manifest["size"]
    gguf = copy_out(project, "/data/models/tiny-llama.Q4_K_M.gguf")
    import hashlib

    assert hashlib.sha256(gguf).hexdigest() == manifest["sha256"]
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(gguf)
        f.flush()
        info = read_gguf(f.name)
    info.check_complete()
    types = {t.ggml_type for t in info.tensors}
    assert 12 in types, f"no Q4_K tensors: the K-quant did not apply ({types})"

    serve(project, "tiny-llama.Q4_K_M.gguf")
    key = project.stored_key()
    client = openai.OpenAI(base_url=f"{project.url}/v1", api_key=key, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny-llama.Q4_K_M"]
    completion = client.chat.completions.create(
        model="gpt-3.5-turbo", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
    )
    assert completion.usage is not None and completion.usage.completion_tokens > 0


DRAFT_PROMPTS = ["hello", "the capybara model", "a small board can serve a chat model on the home network"]


def _greedy_replies(project: Project) -> tuple[list[dict[str, Any]], int]:
    """Each of DRAFT_PROMPTS at temperature 0 (48 tokens, the end of text banned so that every reply is that
    long), with the two best tokens' log-probabilities: the choices and the tokens the server drafted in all."""
    key = project.stored_key()
    choices, drafted = [], 0
    for prompt in DRAFT_PROMPTS:
        r = requests.post(
            f"{project.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 48,
                "temperature": 0,
                "logit_bias": {"2": -100},
                "logprobs": True,
                "top_logprobs": 2,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        choices.append(body["choices"][0])
        drafted += int(body["timings"].get("draft_n", 0))
    return choices, drafted


@pytest.mark.speed
def test_a_draft_model_of_the_same_tokenizer_drafts_and_the_greedy_text_stays_the_same(
    project: Project, hub: Hub
) -> None:
    """A pipeline-made pair sharing tiny-llama's tokenizer: with the draft, llama-server drafts (its timings say
    so) and the greedy replies are those without it; a model of another tokenizer is refused with the reason."""
    for repo, quant in (
        ("test/tiny-llama", "Q4_K_M"),
        ("test/tiny-llama-draft", "Q8_0"),
        ("test/tiny-llama-stranger", "Q8_0"),
    ):
        name = f"{repo.split('/')[1]}.{quant}.gguf"
        if name not in models_in_volume(project):
            r = prepare(project, repo, "--ram", "8G", "--quant", quant)
            assert r.returncode == 0, r.stdout + r.stderr
    try:
        project.env["LLMPI_SPECULATION"] = "off"  # the draft model alone
        project.env["LLMPI_DRAFT_MODEL"] = "off"
        serve(project, "tiny-llama.Q4_K_M.gguf")
        plain, drafted = _greedy_replies(project)
        assert drafted == 0 and all(c["message"]["content"] for c in plain), plain
        project.env["LLMPI_DRAFT_MODEL"] = "/data/models/tiny-llama-draft.Q8_0.gguf"
        serve(project, "tiny-llama.Q4_K_M.gguf")
        # the other models in the volume make this router mode: the draft goes with the default model's section
        with_draft, drafted = _greedy_replies(project)
        # llama-server's own timings say so (its /props reports no speculation even with a draft)
        assert drafted > 0, "the draft model proposed no token"
        for prompt, a, b in zip(DRAFT_PROMPTS, with_draft, plain, strict=True):
            # the same text, or parting only where the plain run's best two were within rounding (tests/greedy.py)
            assert_same_or_near_tie(a["message"]["content"], b["message"]["content"], b["logprobs"]["content"], prompt)

        project.env["LLMPI_DRAFT_MODEL"] = "/data/models/tiny-llama-stranger.Q8_0.gguf"
        project.env["LLMPI_MODEL"] = "/data/models/tiny-llama.Q4_K_M.gguf"
        project.compose("up", "-d", "--no-build", "--force-recreate", "llmpi")
        wait_for(
            lambda: "will not be started again until the problem is fixed" in project.logs(),
            90,
            pause=1,
            what="the refusal",
        )
        logs = project.logs()
        assert "the draft model tiny-llama-stranger.Q8_0.gguf cannot draft for tiny-llama.Q4_K_M.gguf: token" in logs
        assert project.docker_health() != "healthy"
    finally:  # the module's later tests serve other models without these
        project.env.pop("LLMPI_DRAFT_MODEL", None)
        project.env.pop("LLMPI_SPECULATION", None)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


REFERENCE = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
d = sys.argv[1]; sentences = json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(d); model = AutoModel.from_pretrained(d).eval()
with torch.no_grad():
    enc = tok(sentences, padding=True, truncation=True, return_tensors="pt")
    out = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((out * mask).sum(1) / mask.sum(1), dim=1)
print(json.dumps(emb.tolist()))
"""


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
def test_minilm_embeddings_match_the_reference(project: Project, prepare_image: str, quant: str) -> None:
    # sentence-transformers' all-MiniLM-L6-v2 = BERT + mean pooling + L2 normalization, computed here with torch
    ref = json.loads(
        _in_prepare(
            prepare_image,
            ["-c", REFERENCE, "/model", json.dumps(SENTENCES)],
            {str(minilm.model_dir()): "/model"},
        )
        .strip()
        .splitlines()[-1]
    )
    r = prepare(project, "sentence-transformers/all-MiniLM-L6-v2", "--ram", "8G", "--quant", quant)
    assert r.returncode == 0, r.stdout + r.stderr
    serve(project, f"all-MiniLM-L6-v2.{quant}.gguf")
    client = openai.OpenAI(base_url=f"{project.url}/v1", api_key=project.stored_key(), max_retries=0)
    got = client.embeddings.create(model="text-embedding-3-small", input=SENTENCES)
    sims = [_cos(d.embedding, r_) for d, r_ in zip(got.data, ref, strict=True)]
    assert len(got.data[0].embedding) == 384
    assert min(sims) >= 0.99, sims


def test_ready_gguf_fallback_when_the_converter_cannot(project: Project, hub: Hub, tmp_path: Path) -> None:
    # a catalog entry whose architecture the pinned converter does not handle (like LLaVA 1.6): its ready GGUF is
    # used
    gguf = copy_out(project, "/data/models/tiny-llama.Q4_K_M.gguf")
    hub.repos["test/tiny-llama-GGUF"] = Repo({"tiny-llama.Q4_K_M.gguf": gguf, "README.md": b"ready files"})
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        '[models."tiny-ready"]\nkind = "chat"\ngguf_repo = "test/tiny-llama-GGUF"\ngguf_pattern = "*{quant}*.gguf"\n'
        'description = "the tiny test model"\nwhy = "its ready GGUF stands in for LLaVA 1.6\'s"\nboards = "any"\n'
        'repo = "test/tiny-llama"\nrevision = "main"\narchitecture = "LlavaNextForConditionalGeneration"\n'
    )
    os.chmod(tmp_path, 0o755)
    r = project.compose(
        "run",
        "--rm",
        "--no-deps",
        "-v",
        f"{catalog}:/catalog.toml:ro",
        "-e",
        "LLMPI_CATALOG=/catalog.toml",
        "prepare",
        "run",
        "tiny-ready",
        "--ram",
        "8G",
        "--out",
        "/data/models",
        check=False,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "architecture LlavaNextForConditionalGeneration is not supported" in r.stdout
    assert "using the catalog entry's ready GGUF files from test/tiny-llama-GGUF" in r.stdout
    manifest = json.loads(copy_out(project, "/data/models/tiny-ready.Q4_K_M.json"))
    assert manifest["source"]["repo"] == "test/tiny-llama-GGUF"
    assert manifest["source"]["file"] == "tiny-llama.Q4_K_M.gguf"
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(gguf).hexdigest()
    assert "tiny-ready.Q4_K_M.gguf" in models_in_volume(project)


def test_disk_full_during_conversion_leaves_nothing_behind(prepare_image: str, generated: Path) -> None:
    # the f16 GGUF of the tiny model is about 2.7 MB: it cannot fit in a 1 MB tmpfs
    script = "\n".join(
        [
            "import os",
            "from pathlib import Path",
            "from llmpi_prepare import convert, hub",
            "try:",
            "    convert.convert(Path('/models/tiny-llama'), Path('/out/model.f16.gguf'), Path('/opt/llama.cpp'))",
            "except hub.PrepareError as e:",
            "    print('REFUSED:', e)",
            "print('LEFT:', sorted(os.listdir('/out')))",
        ]
    )
    out = (
        docker.from_env()
        .containers.run(
            prepare_image,
            ["-c", script],
            entrypoint=["python3"],
            remove=True,
            tmpfs={"/out": "size=1m,uid=10001"},
            volumes={str(generated): {"bind": "/models", "mode": "ro"}},
        )
        .decode()
    )
    assert "REFUSED: conversion failed: the disk is full" in out, out
    assert "LEFT: ['model.f16.convert.log']" in out, out  # the converter's log, no partial GGUF


def test_bake_stage_ships_the_prepared_model(hub: Hub, prepare_image: str) -> None:
    image = "llmpi:test-baked"
    ca = "/etc/ssl/certs/ca-certificates.crt"
    cmd = [
        "docker",
        "buildx",
        "build",
        "--network",
        "host",
        "--target",
        "baked",
        "--tag",
        image,
        "--load",
        "--build-arg",
        "LLMPI_BAKE_MODEL=test/tiny-llama",
        "--build-arg",
        "LLMPI_BAKE_RAM=8G",
        "--build-arg",
        "LLMPI_BAKE_QUANT=Q4_K_M",
        "--build-arg",
        f"HF_ENDPOINT={hub.url}",
    ]
    if Path(ca).is_file():
        cmd += ["--secret", f"id=cacert,src={ca}"]
    with (ARTIFACTS / "build-baked.log").open("w") as log:
        subprocess.run([*cmd, str(COMPOSE_FILE.parent)], stdout=log, stderr=subprocess.STDOUT, check=True, timeout=900)
    project = Project(f"llmpi-baked-{os.getpid()}", env={"LLMPI_IMAGE": image})
    try:
        project.up()
        project.wait_healthy(180)
        client = openai.OpenAI(base_url=f"{project.url}/v1", api_key=project.stored_key(), max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny-llama.Q4_K_M"]
        completion = client.chat.completions.create(
            model="x", max_tokens=4, messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.usage is not None and completion.usage.completion_tokens > 0
    finally:
        project.down()
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, check=False)


@pytest.mark.contract
@pytest.mark.vision
@pytest.mark.webui
def test_tiny_vision_model_with_projector(project: Project, browser: webdriver.Chrome, tmp_path: Path) -> None:
    r = prepare(project, "test/tiny-gemma3-vision", "--ram", "8G", "--quant", "Q4_K_M")
    (ARTIFACTS / "prepare-tiny-gemma3-vision.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    names = models_in_volume(project)
    assert {
        "tiny-gemma3-vision.Q4_K_M.gguf",
        "tiny-gemma3-vision.Q4_K_M.mmproj.gguf",
        "tiny-gemma3-vision.Q4_K_M.json",
    } <= set(names)
    manifest = json.loads(copy_out(project, "/data/models/tiny-gemma3-vision.Q4_K_M.json"))
    assert manifest["mmproj"]["file"] == "tiny-gemma3-vision.Q4_K_M.mmproj.gguf"
    serve(project, "tiny-gemma3-vision.Q4_K_M.gguf")  # the projector comes from the manifest
    client = openai.OpenAI(base_url=f"{project.url}/v1", api_key=project.stored_key(), max_retries=0, timeout=120)
    text_only = client.chat.completions.create(
        model="gpt-4-vision-preview", max_tokens=2, messages=[{"role": "user", "content": "What is in the image?"}]
    )
    with_image = client.chat.completions.create(
        model="gpt-4-vision-preview",
        max_tokens=2,
        messages=image_message(data_url(png(64, 64)), "What is in the image?"),
    )
    assert text_only.usage is not None and with_image.usage is not None
    # the image became tokens of the prompt (4 image tokens plus the begin/end markers)
    assert with_image.usage.prompt_tokens >= text_only.usage.prompt_tokens + 4
    # a fixed-resolution model: every image is resized to the model's size, so its cost does not depend on the
    # picture, and the token cap (for dynamic-resolution models) changes nothing
    costs = _image_costs(client, "What is in the image?")
    (ARTIFACTS / "image-tokens-gemma3.json").write_text(json.dumps(costs, indent=2))
    assert len({c["image_tokens"] for c in costs.values()}) == 1, costs
    # bytes that are not an image, and a data URL that is not base64: the client's error, and the server lives on
    for url in [
        data_url(b"this is not an image at all"),
        "data:image/png;base64,@@@not-base64@@@",
    ]:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="x",
                max_tokens=2,
                messages=image_message(url),
            )
        assert project.health() == 200
    # the recipe's listing 11.2 as a program (scripts/clients/vision.py): the picture goes in, an answer comes out
    picture = tmp_path / "gradient.png"
    picture.write_bytes(png(300, 200))
    env = {**os.environ, "OPENAI_BASE_URL": f"{project.url}/v1", "OPENAI_API_KEY": project.stored_key()}
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "clients" / "vision.py"), str(picture), "What?", "--max-tokens", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    used = re.search(r"\[(.+): (\d+) prompt tokens with the image\]", r.stderr)
    assert used and int(used.group(2)) >= text_only.usage.prompt_tokens + 4, r.stderr
    # and in the chat page: the header says the model sees images, an attached image gets an answer
    wait = WebDriverWait(browser, 120)
    browser.get(f"{project.url}/")
    wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))
    browser.find_element(By.ID, "key-input").send_keys(project.stored_key())
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "sees images"))
    browser.find_element(By.ID, "attach-input").send_keys(str(picture))
    browser.find_element(By.ID, "prompt").send_keys("What is in the image?")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.user img"), "the attached image is shown in the chat"
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    shot(browser, "vision")


IMAGE_SIDES = (336, 672, 1344, 4000)


def _image_costs(client: openai.OpenAI, question: str) -> dict[int, dict[str, float]]:
    """Image tokens (prompt tokens with the image minus without) and prompt time, per square image side."""

    def ask(content: object) -> tuple[int, float]:
        r = client.chat.completions.create(
            model="x",
            max_tokens=1,
            messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
            extra_body={"cache_prompt": False},
        )
        timings = (r.model_extra or {}).get("timings", {})
        assert r.usage is not None
        return r.usage.prompt_tokens, float(timings.get("prompt_ms", 0.0))

    base, _ = ask(question)
    costs = {}
    for side in IMAGE_SIDES:
        tokens, ms = ask(image_message(data_url(png(side, side)), question)[0]["content"])
        costs[side] = {"image_tokens": tokens - base, "prompt_ms": round(ms, 1)}
    return costs


@pytest.mark.contract
@pytest.mark.vision
def test_image_cap_and_limits_on_a_dynamic_resolution_model(pytestconfig: pytest.Config, project: Project) -> None:
    """Qwen2-VL sizes its image tokens to the picture (one per 28 x 28 px, up to 4096): the appliance's default
    cap (LLMPI_IMAGE_MAX_TOKENS=256) holds a large photo to 256; the byte and pixel limits refuse oversized files
    and a decompression bomb before decoding, and the server stays healthy."""
    r = prepare(project, "test/tiny-qwen2-vl", "--ram", "8G", "--quant", "Q4_K_M")
    (ARTIFACTS / "prepare-tiny-qwen2-vl.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        question = "What is in the image?"
        results = {}
        for label, cap in (("capped (default 256)", None), ("uncapped (model's 4096)", "4096")):
            if cap:
                project.env["LLMPI_IMAGE_MAX_TOKENS"] = cap
            project.env["LLMPI_CTX_SIZE"] = "8192"
            project.env["LLMPI_MEDIA_MAX_BYTES"] = "2M"
            serve(project, "tiny-qwen2-vl.Q4_K_M.gguf")
            client = openai.OpenAI(
                base_url=f"{project.url}/v1", api_key=project.stored_key(), max_retries=0, timeout=300
            )
            results[label] = _image_costs(client, question)
        (ARTIFACTS / "image-tokens.json").write_text(json.dumps(results, indent=2))
        say(pytestconfig, "\nimage tokens / prompt ms by side (tiny Qwen2-VL): " + json.dumps(results))
        capped, uncapped = results["capped (default 256)"], results["uncapped (model's 4096)"]
        # tokens = (side / 28)^2 image embeddings, plus a constant for the vision markers and the message layout
        overhead = capped[336]["image_tokens"] - 12 * 12
        assert 0 <= overhead < 64
        assert uncapped[336]["image_tokens"] == capped[336]["image_tokens"]  # 336 px: under the cap either way
        assert uncapped[672]["image_tokens"] == 24 * 24 + overhead
        assert uncapped[1344]["image_tokens"] == 48 * 48 + overhead
        assert uncapped[4000]["image_tokens"] == 4096 + overhead  # only the model's own limit held it back
        for side in (672, 1344, 4000):
            assert capped[side]["image_tokens"] == 256 + overhead

        # limits, on the uncapped server: a 4.3 MB file (over LLMPI_MEDIA_MAX_BYTES=2M); decompression bombs over
        # LLMPI_IMAGE_MAX_PIXELS=50M: a 0.7 MB PNG that stb_image would decode to 768 MB, and one of 1.2 GB that it
        # gives up on without saying why; refused from their headers, with the reason
        for picture, reason in (
            (png(1200, 1200, fill="noise"), "media file too large"),
            (png(16000, 16000, fill="flat"), "image too large: 16000x16000 = 256000000 pixels"),
            (png(20000, 20000, fill="flat"), "image too large: 20000x20000 = 400000000 pixels"),
        ):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="x", max_tokens=1, messages=image_message(data_url(picture)))
            assert e.value.status_code == 400 and reason in str(e.value), str(e.value)
            assert project.health() == 200
        # an image by URL: the Pi fetches nothing for a key holder (LLMPI_REMOTE_MEDIA=off); the reply says how
        for url in ("http://192.0.2.1/cat.png", "https://example.invalid/cat.jpg", ""):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="x", max_tokens=1, messages=image_message(url))
            assert e.value.status_code == 400 and "data:image/jpeg;base64," in str(e.value), str(e.value)
            assert project.health() == 200
    finally:
        for name in ("LLMPI_IMAGE_MAX_TOKENS", "LLMPI_CTX_SIZE", "LLMPI_MEDIA_MAX_BYTES"):
            project.env.pop(name, None)
