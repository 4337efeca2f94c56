"""The chat page at /, driven in a real headless Chromium (Debian's chromium + chromedriver, no download).

The appliance's own page in the container (one model; two models behind the router), and the same file served by
a stand-in on loopback for what a test cannot make the container do on cue: the model's download at first start,
and a model the router loads (or fails to load) while the page waits."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser import shot
from tests.compose_helpers import ROOT, Project, wait_for
from tests.media import png

pytestmark = pytest.mark.webui

PAGE = ROOT / "service" / "web" / "index.html"
EMBEDDED = "gemma-3-270m-q4_k_m"  # the image's own tiny base model
EMBEDDED_FILE = f"/opt/llmpi/models/{EMBEDDED}.gguf"


def test_page_is_served_without_the_key(appliance: Project) -> None:
    r = requests.get(f"{appliance.url}/", timeout=10)
    assert r.status_code == 200 and "<title>llmpi</title>" in r.text
    assert len(r.content) < 22_500  # one small file, no framework (22.1 kB with the key dialog's usage of issue 24)


def _open_with_key(browser: webdriver.Chrome, url: str, key: str, model: str | None = None) -> None:
    """The page with the key (and a remembered model) already kept in this browser."""
    browser.get(f"{url}/")
    browser.execute_script("localStorage.clear(); localStorage.setItem('llmpi.apiKey', arguments[0]);", key)
    if model:
        browser.execute_script("localStorage.setItem('llmpi.model', arguments[0]);", model)
    browser.get(f"{url}/")


def _options(browser: webdriver.Chrome) -> list[tuple[str, str, bool]]:
    """The model picker's options: (value, text, choosable)."""
    return [
        (str(o.get_attribute("value")), o.text, o.get_dom_attribute("disabled") is None)
        for o in browser.find_elements(By.CSS_SELECTOR, "#model option")
    ]


def test_chat_in_the_browser(appliance: Project, api_key: str, browser: webdriver.Chrome) -> None:
    wait = WebDriverWait(browser, 120)
    browser.get(f"{appliance.url}/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{appliance.url}/")
    wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))

    # a wrong key is refused, and said so
    browser.find_element(By.ID, "key-input").send_keys("sk-wrong-key-0000")
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "key-error"), "refused (401)"))
    shot(browser, "wrong-key")

    # the right key connects, and the header shows the model
    field = browser.find_element(By.ID, "key-input")
    field.clear()
    field.send_keys(api_key)
    browser.find_element(By.ID, "key-save").click()
    wait.until(ec.invisibility_of_element_located((By.ID, "key-dialog")))
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), EMBEDDED))
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "context"))

    # a message streams back, with the speed of the reply
    browser.find_element(By.ID, "prompt").send_keys("Building a website can be done in 10 simple steps:")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    replies = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    assert replies and replies[-1].text.strip()
    shot(browser, "chat")

    # a model without a projector cannot take an image: the button is off, and says why with the recipe
    assert not browser.find_element(By.ID, "attach-input").is_enabled()
    assert "cannot see images" in str(browser.find_element(By.ID, "attach").get_attribute("title"))
    browser.find_element(By.ID, "attach").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "log"), "started without a vision projector (mmproj)"))
    errors = browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    assert any("Serve a vision model" in e.text for e in errors)
    shot(browser, "no-mmproj")
    # the key survives a reload (kept in this browser)
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), EMBEDDED))


def _usage(url: str, key: str) -> dict[str, Any]:
    """GET /usage with `key`: the key's name, limits, and counts (today, the last 7 days, since the ledger began)."""
    r = requests.get(f"{url}/usage", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    r.raise_for_status()
    return dict(r.json())


def _usage_rows(browser: webdriver.Chrome) -> list[list[str]]:
    """The key dialog's usage table: [label, requests, tokens in, tokens out] a row."""
    rows = browser.find_elements(By.CSS_SELECTOR, "#usage-rows tr")
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in rows]


def _counts_rows(counts: dict[str, Any]) -> list[list[str]]:
    """What the usage table shows for a key's counts from /usage, less the label of the last row (a local date)."""
    rows = [["today", counts["today"]], ["7 days", counts["week"]], ["since", counts["total"]]]
    return [[label, str(c["requests"]), str(c["prompt_tokens"]), str(c["completion_tokens"])] for label, c in rows]


def _shown_rows(browser: webdriver.Chrome) -> list[list[str]]:
    """The usage table, its last row's label ("since <date>") cut to "since"."""
    return [["since" if row[0].startswith("since ") else row[0], *row[1:]] for row in _usage_rows(browser)]


@pytest.mark.contract
def test_usage_in_the_key_dialog(appliance: Project, api_key: str, browser: webdriver.Chrome) -> None:
    """One chat through the page, then the key dialog: "Your usage" shows the key's name and the same counts as
    GET /usage gives that key (today, the last 7 days, since the ledger began), with tokens in and out above 0."""
    wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,))
    _open_with_key(browser, appliance.url, api_key)
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "context"))
    first = _usage(appliance.url, api_key)
    name = first["key"]
    before = first["keys"].get(name, {}).get("total", {}).get("requests", 0)  # an admin key's: listed once it is used

    browser.find_element(By.ID, "prompt").send_keys("Building a website can be done in 10 simple steps:")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    # the ledger counts a streamed request once the server has written its last chunk
    wait_for(lambda: _usage(appliance.url, api_key)["keys"][name]["total"]["requests"] > before, 30,
             what="the chat counted in /usage")  # fmt: skip
    usage = _usage(appliance.url, api_key)
    counts = usage["keys"][name]
    assert usage["key"] == name and counts["today"]["prompt_tokens"] > 0 and counts["today"]["completion_tokens"] > 0

    browser.find_element(By.ID, "change-key").click()
    wait.until(ec.visibility_of_element_located((By.ID, "usage")))
    wait.until(lambda b: _shown_rows(b) == _counts_rows(counts))
    assert browser.find_element(By.ID, "usage-key").text == name
    assert _usage_rows(browser)[2][0].startswith("since ")
    assert _usage(appliance.url, api_key)["keys"][name] == counts  # nothing else was counted meanwhile
    shot(browser, "usage")
    browser.find_element(By.ID, "key-save").click()  # connects again, and closes the dialog
    wait.until(ec.invisibility_of_element_located((By.ID, "key-dialog")))


def test_embedded_model_notice_and_picker(appliance: Project, api_key: str, browser: webdriver.Chrome) -> None:
    """The default image serves the tiny offline base model: one option, and the notice saying how to get a useful
    assistant."""
    wait = WebDriverWait(browser, 60)
    _open_with_key(browser, appliance.url, api_key)
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), EMBEDDED))
    note = wait.until(ec.visibility_of_element_located((By.ID, "embedded-note")))
    assert "Gemma 3 270M" in note.text and "LLMPI_MODEL=qwen3-4b-instruct" in note.text
    assert "docker compose up -d" in note.text
    options = _options(browser)
    assert len(options) == 1, options
    value, text, enabled = options[0]
    assert value == EMBEDDED and EMBEDDED in text and "loaded" in text and enabled
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == EMBEDDED
    assert not browser.find_element(By.ID, "pull").is_displayed()
    assert browser.find_element(By.ID, "send").is_enabled()
    shot(browser, "embedded-note")


def test_router_picker_lists_both_models(extra_project: Project, browser: webdriver.Chrome) -> None:
    """Two models behind llama-server's router: the chat model (chosen, and chatted with) and the embedding model
    (listed, not choosable)."""
    extra_project.env.update(LLMPI_EMBEDDING_MODEL=EMBEDDED_FILE, LLMPI_EMBEDDING_ALIAS="gemma-embed")
    extra_project.up()
    extra_project.wait_healthy()
    key = extra_project.stored_key()
    wait_for(lambda: extra_project.docker_health() == "healthy", 180, pause=1, what="both models loaded")

    # the picker's options are rebuilt when the model list is refreshed: an option read mid-rebuild is stale
    wait = WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,))
    _open_with_key(browser, extra_project.url, key)
    wait.until(lambda b: len(_options(b)) == 2)
    options = {value: (text, enabled) for value, text, enabled in _options(browser)}
    assert set(options) == {EMBEDDED, "gemma-embed"}, options
    text, enabled = options["gemma-embed"]
    assert "embeddings only" in text and not enabled
    text, enabled = options[EMBEDDED]
    assert "embeddings only" not in text and "loaded" in text and enabled
    assert Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == EMBEDDED
    wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "context"))
    assert browser.find_element(By.ID, "embedded-note").is_displayed()

    browser.find_element(By.ID, "prompt").send_keys("Building a website can be done in 10 simple steps:")
    browser.find_element(By.ID, "send").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
    replies = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")
    assert replies and replies[-1].text.strip()
    assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
    assert browser.find_element(By.ID, "model-status").text == ""
    shot(browser, "router")


# --- the page's file behind a stand-in server ---------------------------------------------------------------

Answer = Callable[[str, str, dict[str, Any]], tuple[int, Any]]  # (method, path, JSON body) -> (status, body)


@contextmanager
def page_server(answer: Answer) -> Iterator[str]:
    """The real index.html at /, and `answer` for every other request; on loopback, a random port."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
                return
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            status, body = answer(self.command, self.path, request)
            if isinstance(body, bytes):
                self._send(status, body, "text/event-stream")
            else:
                self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8")

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


FILE = "Qwen3-4B-Instruct-2507-Q4_K_M.gguf"
PULLING = {
    "status": "pulling",
    "error": {"code": 503, "message": "downloading the model: 42% ...", "type": "unavailable_error"},
    "pull": {
        "model": "qwen3-4b-instruct",
        "file": FILE,
        "state": "downloading",
        "done_bytes": 123,
        "total_bytes": 456,
        "percent": 42.1,
        "rate_bytes_per_s": 1234567.0,
        "eta_s": 321,
    },
}
LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}


def test_pull_progress_until_healthy(browser: webdriver.Chrome) -> None:
    """At first start the appliance downloads its model (/health 503 with the progress), then loads it (503
    "Loading model"), then serves (200): the page shows each, sending stays off, and then it asks for the key."""
    polls = itertools.count(1)

    def answer(method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/health":
            n = next(polls)
            return (503, PULLING) if n <= 3 else (503, LOADING) if n <= 5 else (200, {"status": "ok"})
        return 503, LOADING

    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    with page_server(answer) as url:
        browser.get(f"{url}/")
        bar = wait.until(ec.visibility_of_element_located((By.ID, "pull-progress")))
        wait.until(ec.text_to_be_present_in_element((By.ID, "pull-text"), f"Downloading {FILE}: 42%"))
        assert browser.find_element(By.ID, "pull-text").text == (
            f"Downloading {FILE}: 42% (1.2 MB/s, about 5 min left)"
        )
        assert float(str(bar.get_attribute("value"))) == pytest.approx(42.1)
        assert not browser.find_element(By.ID, "send").is_enabled()
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()
        shot(browser, "pulling")
        wait.until(ec.text_to_be_present_in_element((By.ID, "pull-text"), "Loading the model\u2026"))
        assert bar.is_displayed() and not browser.find_element(By.ID, "send").is_enabled()
        shot(browser, "loading")
        wait.until(ec.invisibility_of_element_located((By.ID, "pull-progress")))
        assert not browser.find_element(By.ID, "pull").is_displayed()
        wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))  # healthy: now the key
        assert next(polls) >= 7


class Router:
    """A stand-in for llama-server's router: four models, two of them load when asked (one fails). A load lasts until
    the test ends it (`loaded`), once it has seen what the page shows meanwhile."""

    def __init__(self) -> None:
        self.status = {"small-chat": "loaded", "qwen3-vl": "unloaded", "minilm": "loaded", "broken": "unloaded"}
        self.tags = {"small-chat": "chat", "qwen3-vl": "vision", "minilm": "embedding", "broken": "chat"}
        self.chats: list[dict[str, Any]] = []
        self.loads = {name: threading.Event() for name in self.status}

    def loaded(self, name: str) -> None:
        """Ends the load of `name` (the requests waiting for it are answered)."""
        self.loads[name].set()

    def entry(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = {"value": self.status[name], "args": ["llama-server"]}
        if self.status[name] == "failed":
            status.update(value="unloaded", failed=True, exit_code=1)
        modalities = ["text", "image"] if self.tags[name] == "vision" else ["text"]
        return {
            "id": name, "aliases": [], "tags": [self.tags[name]], "object": "model", "status": status,
            "architecture": {"input_modalities": modalities, "output_modalities": ["text"]},
        }  # fmt: skip

    def load(self, name: str) -> bool:
        if self.status[name] != "loaded":
            self.status[name] = "loading"
            self.loads[name].wait(60)  # bounded: a test that failed before ending the load frees its requests
            self.status[name] = "failed" if name == "broken" else "loaded"
        return self.status[name] == "loaded"

    def answer(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        failed = {"error": {"code": 500, "message": "model failed to load", "type": "server_error"}}
        if path == "/health":
            return 200, {"status": "ok"}
        if path == "/v1/models":
            return 200, {"object": "list", "data": [self.entry(n) for n in self.status]}
        if path.startswith("/props?model="):
            name = path.split("=", 1)[1]
            if not self.load(name):
                return 500, failed
            vision = self.tags[name] == "vision"
            return 200, {"model_alias": name, "modalities": {"vision": vision},
                         "default_generation_settings": {"n_ctx": 4096}}  # fmt: skip
        if method == "POST" and path == "/v1/chat/completions":
            self.chats.append(body)
            if not self.load(body["model"]):
                return 500, failed
            chunks = [
                {"choices": [{"index": 0, "delta": {"content": "Hello from " + body["model"]}}]},
                {"choices": [], "usage": {"completion_tokens": 4}, "timings": {"predicted_per_second": 12.5}},
            ]
            return 200, "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
        return 404, {"error": {"code": 404, "message": "not here", "type": "not_found_error"}}


def _ledger(n: int) -> dict[str, Any]:
    """/usage for the key "phone" (a day's limit, high priority, two slots) after `n` requests today, each 100 tokens
    in and 4 out."""

    def counts(requests: int) -> dict[str, Any]:
        return {"requests": requests, "errors": 0, "prompt_tokens": 100 * requests,
                "completion_tokens": 4 * requests, "queue_seconds": 0.5, "slot_seconds": 2.0}  # fmt: skip

    return {
        "key": "phone", "since": 1765000000, "today": "2026-12-07",
        "limits": {"slots": 2, "priority": "high", "tokens_day": 500, "tokens_hour": 0, "tokens_hour_used": 12},
        "keys": {"phone": {"today": counts(n), "week": counts(n + 10), "total": counts(n + 100)}},
    }  # fmt: skip


def test_usage_limits_and_an_older_image(browser: webdriver.Chrome) -> None:
    """The key dialog's usage says the key's limits, is read again when an answer ends while it is open, and is
    hidden where /usage answers 404 (an image without patch 0027), the page working on."""
    router = Router()
    today = {"requests": 3}
    older = threading.Event()  # /usage answers 404 once set
    asked, release = threading.Event(), threading.Event()  # a chat has come; its answer may go

    def ledger() -> dict[str, Any]:
        return _ledger(today["requests"])

    def answer(method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/usage":
            return (404, {"error": {"code": 404, "message": "File Not Found"}}) if older.is_set() else (200, ledger())
        if path == "/v1/chat/completions":
            asked.set()
            release.wait(60)  # bounded: a test that failed before releasing it frees the request
            today["requests"] += 1
        return router.answer(method, path, body)

    wait = WebDriverWait(browser, 30, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    with page_server(answer) as url:
        _open_with_key(browser, url, "sk-llmpi-test", model="small-chat")
        wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "small-chat \u00b7 context 4096"))
        # a chat whose answer waits: the dialog is opened meanwhile
        browser.find_element(By.ID, "prompt").send_keys("Hello")
        browser.find_element(By.ID, "send").click()
        wait_for(asked.is_set, 30, what="the chat request")
        browser.find_element(By.ID, "change-key").click()
        wait.until(ec.visibility_of_element_located((By.ID, "usage")))
        wait.until(lambda b: _usage_rows(b)[:2] == [["today", "3", "300", "12"], ["7 days", "13", "1300", "52"]])
        assert _usage_rows(browser)[2][1:] == ["103", "10300", "412"]
        assert browser.find_element(By.ID, "usage-key").text == "phone"
        limits = browser.find_element(By.ID, "usage-limits").text
        assert limits == "500 tokens a day: 312 used \u00b7 high priority \u00b7 2 slots at most"
        shot(browser, "usage-limits")

        # the answer ends while the dialog is open: the usage is read again
        release.set()
        wait.until(lambda b: _usage_rows(b)[0] == ["today", "4", "400", "16"])
        assert browser.find_element(By.ID, "usage-limits").text.startswith("500 tokens a day: 416 used")
        browser.find_element(By.ID, "key-save").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "key-dialog")))
        assert "Hello from small-chat" in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text

        # an older image (no /usage): the section is hidden, the dialog and the chat work as before
        older.set()
        browser.find_element(By.ID, "change-key").click()
        wait.until(ec.visibility_of_element_located((By.ID, "key-dialog")))
        wait.until(ec.invisibility_of_element_located((By.ID, "usage")))
        browser.find_element(By.ID, "key-save").click()
        wait.until(ec.invisibility_of_element_located((By.ID, "key-dialog")))
        browser.find_element(By.ID, "prompt").send_keys("Hello again")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: "Hello from" in b.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1].text)
        assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")


def test_router_loads_a_model_on_demand(browser: webdriver.Chrome, tmp_path: Path) -> None:
    """A model that is not loaded: a message to it (or picking it) makes the router load it, and the page says so
    while it waits; a model that fails to load says that."""
    router = Router()
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    with page_server(router.answer) as url:
        _open_with_key(browser, url, "sk-llmpi-test", model="qwen3-vl")  # remembered from an earlier visit
        wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "not loaded"))
        options = {value: (text, enabled) for value, text, enabled in _options(browser)}
        assert options == {
            "small-chat": ("small-chat \u2014 chat \u00b7 loaded", True),
            "qwen3-vl": ("qwen3-vl \u2014 sees images \u00b7 not loaded", True),
            "minilm": ("minilm \u2014 embeddings only \u00b7 loaded", False),
            "broken": ("broken \u2014 chat \u00b7 not loaded", True),
        }
        assert not browser.find_element(By.ID, "embedded-note").is_displayed()
        # it sees images: the image button is on
        assert browser.find_element(By.ID, "attach-input").is_enabled()
        picture = tmp_path / "gradient.png"
        picture.write_bytes(png(64, 48))
        browser.find_element(By.ID, "attach-input").send_keys(str(picture))
        wait.until(ec.visibility_of_element_located((By.ID, "preview")))

        # a message to it loads it: the header says so until the reply comes
        browser.find_element(By.ID, "prompt").send_keys("What is this?")
        browser.find_element(By.ID, "send").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "loading qwen3-vl\u2026"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "qwen3-vl \u2014 sees images \u00b7 loading"))
        shot(browser, "router-loading")
        router.loaded("qwen3-vl")
        wait.until(ec.text_to_be_present_in_element((By.ID, "stats"), "tokens/s"))
        wait.until(lambda b: b.find_element(By.ID, "model-status").text == "")
        assert "Hello from qwen3-vl" in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].text
        wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "context 4096"))
        assert router.chats[-1]["model"] == "qwen3-vl"
        assert router.chats[-1]["messages"][0]["content"][1]["type"] == "image_url"

        # picking a model that fails to load: the error is shown
        Select(browser.find_element(By.ID, "model")).select_by_value("broken")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "loading broken\u2026"))
        router.loaded("broken")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-status"), "could not load broken"))
        assert "model failed to load" in browser.find_element(By.ID, "model-status").text
        assert not browser.find_element(By.ID, "attach-input").is_enabled()
        shot(browser, "router-failed")

        # picking a loaded one: no wait, remembered for the next visit
        Select(browser.find_element(By.ID, "model")).select_by_value("small-chat")
        wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "small-chat"))
        assert browser.execute_script("return localStorage.getItem('llmpi.model')") == "small-chat"
        browser.refresh()
        wait.until(ec.text_to_be_present_in_element((By.ID, "info"), "small-chat \u00b7 context 4096"))
        value = Select(browser.find_element(By.ID, "model")).first_selected_option.get_attribute("value")
        assert value == "small-chat"
