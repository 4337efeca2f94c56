"""Faster answers (issue 15) against the real container: a returning conversation is served from the cache (the
server's own timings say how much), also when there are more conversations than slots, and n-gram speculation
drafts while the greedy text stays the one without it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from benchlib import sse
from tests.compose_helpers import Project
from tests.greedy import assert_same_or_near_tie

pytestmark = pytest.mark.speed
CHECKPOINT_SLACK = 16  # tokens
QUESTIONS = ("Copy the notes above word for word.", "What does the garden need every morning?", "Hello!")
NOTE = (
    "The garden needs water every morning in summer, the tomatoes along the south fence first, then the beans "
    "and the herbs by the kitchen door. The rain barrel holds two hundred litres and is empty by August. "
)


def chat(project: Project, key: str, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    body = {"messages": messages, "max_tokens": 24, "temperature": 0, **extra}
    r = requests.post(
        f"{project.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body, timeout=120
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def converse(project: Project, key: str, users: int, turns: int) -> list[list[dict[str, int]]]:
    """`users` conversations, one request at a time round-robin; each turn's timings (prompt_n, cache_n)."""
    histories = [[{"role": "system", "content": f"You help household member {u + 1}."}] for u in range(users)]
    timings: list[list[dict[str, int]]] = [[] for _ in range(users)]
    for turn in range(turns):
        for u in range(users):
            histories[u].append({"role": "user", "content": f"Turn {turn + 1} of member {u + 1}. " + NOTE * 3})
            body = chat(project, key, histories[u])
            histories[u].append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
            timings[u].append({k: int(body["timings"][k]) for k in ("prompt_n", "cache_n")})
    return timings


def assert_returning_turns_cached(timings: list[list[dict[str, int]]]) -> None:
    for user, turns in enumerate(timings):
        for turn in range(1, len(turns)):
            before = turns[turn - 1]["prompt_n"] + turns[turn - 1]["cache_n"]  # the whole previous prompt
            now = turns[turn]
            # the previous prompt came from the cache, all but its last few tokens at most (for a sliding-window model
            # like Gemma 3, llama.cpp goes back to a checkpoint it took just before the end of the prompt); only
            # those, the reply and the new message were processed
            assert now["cache_n"] >= before - CHECKPOINT_SLACK, (user + 1, turn + 1, turns)


def test_a_returning_conversation_is_served_from_the_cache(appliance: Project, api_key: str) -> None:
    assert_returning_turns_cached(converse(appliance, api_key, users=3, turns=3))


def started(project: Project, **env: str) -> Project:
    """The extra project up with these settings, healthy."""
    project.env.update(env)
    project.up()
    project.wait_healthy(180)
    return project


@pytest.fixture
def two_slots(extra_project: Project) -> Iterator[Project]:
    yield started(extra_project, LLMPI_PARALLEL="2")


def test_more_conversations_than_slots_come_back_from_the_prompt_cache(two_slots: Project) -> None:
    """Four people, two slots: each returning conversation finds its slot taken by another, and llama-server
    restores it from the host-memory prompt cache (--cache-ram) instead of processing it again."""
    assert_returning_turns_cached(converse(two_slots, two_slots.stored_key(), users=4, turns=3))


@pytest.fixture
def ngram(extra_project: Project) -> Iterator[Project]:
    yield started(extra_project, LLMPI_SPECULATION="ngram")


def test_ngram_speculation_drafts_and_keeps_the_greedy_text(appliance: Project, api_key: str, ngram: Project) -> None:
    """Replies that quote the prompt: with LLMPI_SPECULATION=ngram llama-server drafts from the prompt and keeps
    drafts, and its greedy texts are those of the default appliance (speculation off), or part from them only at a
    near-tie of the two best tokens (tests/greedy.py: llama.cpp's rounding, as between two runs without it)."""
    key = ngram.stored_key()
    kept = identical = 0
    for question in QUESTIONS:
        messages = [
            {"role": "system", "content": "Notes:\n" + NOTE},
            {"role": "user", "content": question},
            {"role": "assistant", "content": "The notes, word for word:\n\n"},
        ]
        on = chat(ngram, key, messages, max_tokens=64)
        off = chat(appliance, api_key, messages, max_tokens=64, logprobs=True, top_logprobs=2)
        assert off["timings"].get("draft_n", 0) == 0, off["timings"]
        text_on, text_off = (r["choices"][0]["message"]["content"] for r in (on, off))
        identical += assert_same_or_near_tie(text_on, text_off, off["choices"][0]["logprobs"]["content"], question)
        kept += int(on["timings"].get("draft_n_accepted", 0))
    assert kept > 0, "n-gram speculation never drafted a token that was kept"
    assert identical >= 1, "no reply was identical"


def test_the_chat_page_s_streamed_request_works_with_speculation(ngram: Project) -> None:
    """What the chat page sends (service/web/index.html): streamed, with usage at the end."""
    r = requests.post(
        f"{ngram.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {ngram.stored_key()}"},
        json={
            "messages": [{"role": "system", "content": NOTE}, {"role": "user", "content": "Repeat the note."}],
            "stream": True,
            "max_tokens": 48,
            "stream_options": {"include_usage": True},
        },
        stream=True,
        timeout=120,
    )
    assert r.status_code == 200
    events = list(sse.events(r.iter_content(chunk_size=None)))
    text = sse.content(events)
    assert text.strip() and events[-1]["usage"]["completion_tokens"] > 0, events[-3:]
