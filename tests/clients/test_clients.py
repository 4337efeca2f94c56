"""The appliance as a drop-in for OpenAI apps (issue 6): one base_url serving a chat model (the embedded Gemma 3
270M) and an embedding model (all-MiniLM-L6-v2, made by the pipeline from its PyPI copy) in llama-server's router
mode; the recipe's three client programs run against it and their output is checked; the OpenAI features that
apps rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests import minilm
from tests.appliance.replies import assert_says_something
from tests.compose_helpers import ARTIFACTS, COMPOSE_FILE, PIPELINE_OVERRIDE, ROOT, Project, wait_for
from tests.hubstub import Hub, repo_from_dir
from tests.media import data_url, image_message, png

pytestmark = pytest.mark.clients
CLIENTS = ROOT / "scripts" / "clients"
EMBEDDER = "all-MiniLM-L6-v2.F16"


@pytest.fixture(scope="module")
def two_models(prepare_image: str) -> Iterator[Project]:
    p = Project(f"llmpi-clients-{os.getpid()}", files=[COMPOSE_FILE, PIPELINE_OVERRIDE])
    with Hub() as hub:
        hub.repos["sentence-transformers/all-MiniLM-L6-v2"] = repo_from_dir(minilm.model_dir())
        p.env["HF_ENDPOINT"] = hub.url
        r = p.compose(
            "run", "--rm", "--no-deps", "prepare", "run", "sentence-transformers/all-MiniLM-L6-v2",
            "--quant", "F16", "--ram", "8G", "--out", "/data/models", check=False, timeout=900,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
    p.env["LLMPI_EMBEDDING_MODEL"] = f"/data/models/{EMBEDDER}.gguf"
    p.env["LLMPI_CTX_SIZE"] = "2048"
    p.up()
    try:
        wait_for(lambda: p.exec(["test", "-s", "/data/api_key"])[0] == 0, 120, pause=1, what="the generated key")
        key = p.stored_key()
        wait_for(lambda: not _not_loaded(p, key), 300, pause=1, what="both models loaded")
        yield p
    finally:
        p.down()


def _not_loaded(p: Project, key: str) -> list[str]:
    r = requests.get(f"{p.url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    r.raise_for_status()
    return [m["id"] for m in r.json()["data"] if m.get("status", {}).get("value") != "loaded"]


@pytest.fixture(scope="module")
def key(two_models: Project) -> str:
    return two_models.stored_key()


@pytest.fixture(scope="module")
def client(two_models: Project, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{two_models.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model(client: openai.OpenAI) -> str:
    ids = [m.id for m in client.models.list()]
    chat = [i for i in ids if i != EMBEDDER]
    assert len(chat) == 1 and EMBEDDER in ids, ids
    return chat[0]


def run_client(project: Project, key: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_BASE_URL": f"{project.url}/v1", "OPENAI_API_KEY": key}
    r = subprocess.run(
        [sys.executable, str(CLIENTS / script), *args], env=env, capture_output=True, text=True, timeout=600
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"client-{script}.log").write_text(f"$ {script} {' '.join(args)}\n{r.stdout}\n{r.stderr}")
    return r


# --- one endpoint, two models ----------------------------------------------------------------------------------


@pytest.mark.contract
def test_one_base_url_serves_chat_and_embeddings(two_models: Project, client: openai.OpenAI, chat_model: str) -> None:
    reply = client.chat.completions.create(
        model=chat_model, max_tokens=8, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert reply.choices[0].message.content and reply.model
    vectors = client.embeddings.create(model=EMBEDDER, input=["a raspberry pi", "a small computer"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    # the container's health check knows about both models
    wait_for(lambda: two_models.docker_health() == "healthy", 120, pause=2, what="docker health: healthy")


@pytest.mark.contract
def test_a_model_name_that_is_not_on_the_board_goes_to_the_default_model(
    client: openai.OpenAI, chat_model: str
) -> None:
    """Clients with a fixed model name (OpenAI's) keep working: the router sends it to LLMPI_MODEL's model."""
    reply = client.chat.completions.create(
        model="gpt-4o", max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    )
    assert_says_something(reply, max_tokens=4, model=chat_model)


@pytest.mark.contract
@pytest.mark.parametrize("bad_input", [[], [{"text": "not a string"}], {"text": "not a string"}, None])
def test_bad_embedding_input_is_a_clear_400(two_models: Project, key: str, bad_input: Any) -> None:
    r = requests.post(
        f"{two_models.url}/v1/embeddings",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": EMBEDDER, "input": bad_input},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert two_models.health() == 200


# --- the three programs ----------------------------------------------------------------------------------------


def test_chat_program_streams_an_answer(two_models: Project, key: str, chat_model: str) -> None:
    r = run_client(two_models, key, "chat.py", "Name a fruit.", "--max-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "the answer is printed"
    assert f"[{chat_model}: " in r.stderr and " completion tokens, first token after " in r.stderr


def test_vision_program_explains_a_text_only_model(two_models: Project, key: str, tmp_path: Path) -> None:
    picture = tmp_path / "gradient.png"
    picture.write_bytes(png(64, 64))
    r = run_client(two_models, key, "vision.py", str(picture), "What is this?")
    assert r.returncode == 1
    assert "image input is not supported" in r.stderr and "mmproj" in r.stderr


def test_rag_program_retrieves_the_one_right_note(two_models: Project, key: str) -> None:
    for question, note in [
        ("What is the password of the guest Wi-Fi?", "wifi.md"),
        ("What tyre pressure does the car need at the back?", "car.md"),
        ("When do the backups run every night?", "backups.md"),
    ]:
        r = run_client(two_models, key, "rag.py", "--json", question)
        assert r.returncode == 0, r.stderr
        record = json.loads(r.stdout)
        assert record["retrieved"][0]["source"].startswith(note + "#"), record["retrieved"]
        assert record["answer"].strip()
        # our count with the served model's template and tokenizer is the server's own count
        assert record["prompt_tokens_counted"] == record["prompt_tokens_served"]
        assert record["models"]["embedding"] == EMBEDDER


def test_rag_program_trims_a_long_history_to_the_context(two_models: Project, key: str, tmp_path: Path) -> None:
    turn = "Tell me more about the garden, the greenhouse, the tomatoes and the raspberry canes. " * 4
    history = []
    for i in range(30):  # about 4 x 30 x 100 tokens: far over the 2048-token context
        history += [{"role": "user", "content": f"{i}: {turn}"}, {"role": "assistant", "content": turn}]
    path = tmp_path / "history.json"
    path.write_text(json.dumps(history))
    r = run_client(
        two_models,
        key,
        "rag.py",
        "--json",
        "--history",
        str(path),
        "--max-tokens",
        "32",
        "What is the guest Wi-Fi password?",
    )
    assert r.returncode == 0, r.stderr
    record = json.loads(r.stdout)
    assert record["n_ctx"] == 2048
    assert 0 < record["kept_turns"] < record["history_turns"] == 60
    assert record["prompt_tokens_counted"] <= 2048 - 32
    assert record["prompt_tokens_served"] == record["prompt_tokens_counted"]


# --- OpenAI features apps rely on ------------------------------------------------------------------------------


# llama.cpp's sums differ in the last bits between a prompt computed whole and one partly reused from the prompt
# cache, which can flip a near-tie of a tiny model's greedy choice; for byte-identical repeats, no cache reuse
NO_CACHE = {"cache_prompt": False}


def test_streaming_gives_the_same_text_as_a_plain_reply(client: openai.OpenAI, chat_model: str) -> None:
    messages: Any = [{"role": "user", "content": "Count from one to five."}]
    plain = client.chat.completions.create(
        model=chat_model, max_tokens=24, temperature=0, messages=messages, extra_body=NO_CACHE
    )
    chunks = list(
        client.chat.completions.create(
            model=chat_model, max_tokens=24, temperature=0, messages=messages, stream=True,
            stream_options={"include_usage": True}, extra_body=NO_CACHE,
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1, "more than one content chunk"
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens  # type: ignore[union-attr]


@pytest.mark.contract
def test_max_tokens_and_stop(client: openai.OpenAI, chat_model: str) -> None:
    messages: Any = [{"role": "user", "content": "Write a long story about a capybara."}]
    short = client.chat.completions.create(model=chat_model, max_tokens=5, messages=messages)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 5
    full = client.chat.completions.create(model=chat_model, max_tokens=40, temperature=0, messages=messages)
    words = (full.choices[0].message.content or "").split()
    assert len(words) > 3
    stop_word = words[2]
    stopped = client.chat.completions.create(
        model=chat_model, max_tokens=40, temperature=0, messages=messages, stop=[stop_word]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stop_word not in (stopped.choices[0].message.content or "")


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, chat_model: str) -> None:
    messages: Any = [{"role": "user", "content": "Invent a name for a cat."}]

    def sample(seed: int) -> str:
        r = client.chat.completions.create(
            model=chat_model, max_tokens=24, temperature=1.0, seed=seed, messages=messages, extra_body=NO_CACHE
        )
        return r.choices[0].message.content or ""

    first = sample(42)
    assert sample(42) == first
    assert any(sample(s) != first for s in (1, 2, 3)), "other seeds sample other text"


def test_json_schema_reply_parses_and_validates(client: openai.OpenAI, chat_model: str) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=chat_model,
        max_tokens=128,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    data = json.loads(r.choices[0].message.content or "")
    assert set(data) == {"name", "age", "pets"}
    assert isinstance(data["name"], str) and isinstance(data["age"], int) and 0 <= data["age"] <= 150
    assert isinstance(data["pets"], list) and len(data["pets"]) <= 3 and all(isinstance(p, str) for p in data["pets"])


def test_n_choices(client: openai.OpenAI, chat_model: str) -> None:
    r = client.chat.completions.create(
        model=chat_model, max_tokens=8, n=2, temperature=1.0, messages=[{"role": "user", "content": "Hi!"}]
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        assert (c.message.content or "").strip() and c.finish_reason in ("stop", "length"), c


@pytest.mark.contract
def test_image_to_the_router_is_the_same_clear_400(client: openai.OpenAI, chat_model: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=chat_model, max_tokens=4, messages=image_message(data_url(png(32, 32))))
    assert "image input is not supported" in str(e.value)


@pytest.mark.webui
def test_chat_page_talks_to_the_chat_model(two_models: Project, key: str, chat_model: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import shot

    wait = WebDriverWait(browser, 120)
    browser.get(f"{two_models.url}/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{two_models.url}/")
    wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))
    browser.find_element(By.ID, "key-input").send_keys(key)
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), chat_model))  # not the embedding model
    assert "context 2048" in browser.find_element(By.ID, "info").text
    browser.find_element(By.ID, "prompt").send_keys("Name a fruit.")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    shot(browser, "router-chat")
