"""What scripts/fuzz found against the image (issue 23, docs/security.md "Fuzzing"), each as its smallest input: a
request of the wrong shape must be a 4xx that a client does not retry, never a 5xx, a crash or a hang, and
llama-server's pid stays the same.

The 600 s run found no crash and no hang; every finding was a 500 from an exception that says the request is wrong
(nlohmann's type_error, or std::runtime_error around an invalid_argument) reaching the handler's catch-all."""

from __future__ import annotations

import pytest

from tests.compose_helpers import Project
from tests.security.test_server_limits import post, server_pid

pytestmark = pytest.mark.security

HI: list[dict[str, object]] = [{"role": "user", "content": "hi"}]


def called(arguments: str = "{}", **call: object) -> list[dict[str, object]]:
    """An assistant turn that called a tool (`call` replaces the call's fields), then the user again."""
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}} | call
    return [{"role": "assistant", "content": "", "tool_calls": [tool_call]}, *HI]


# (path, body): each answered 500 in the run of 2026-12-07, with its message
FINDINGS: dict[str, tuple[str, object]] = {
    # "Cannot use both json_schema and grammar" (std::runtime_error in the chat parameters' parse)
    "chat with json_schema and grammar": (
        "/v1/chat/completions",
        {"messages": HI, "json_schema": {}, "grammar": "root ::= [a]", "max_tokens": 1},
    ),
    "apply-template with json_schema and grammar": (
        "/apply-template",
        {"messages": HI, "json_schema": {}, "grammar": "root ::= [a]"},
    ),
    # "Failed to parse messages: [json.exception.type_error.302] type must be string, but is ..."
    "a message's tool_call_id an object": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi", "tool_call_id": {}}], "max_tokens": 1},
    ),
    "a message's name a number": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi", "name": 5}], "max_tokens": 1},
    ),
    "a message's role an object": ("/apply-template", {"messages": [{"role": {}, "content": "hi"}]}),
    "a text part's text a number": (
        "/v1/chat/completions/input_tokens",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    ),
    "reasoning_content a list": (
        "/apply-template",
        {"messages": [{"role": "user", "content": "hi", "reasoning_content": [False]}]},
    ),
    # "Failed to parse messages: Missing tool call type: ..." and a tool call's id of the wrong type
    "a tool call without a type": (
        "/v1/chat/completions",
        {
            "messages": [{"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "f"}}]}],
            "max_tokens": 1,
        },
    ),
    "a tool call that is not an object": (
        "/apply-template",
        {"messages": [{"role": "assistant", "content": "", "tool_calls": [None]}]},
    ),
    "a tool call's id a number": ("/apply-template", {"messages": called(id=5)}),
    # "Failed to parse tool call arguments as JSON: ..."
    "a tool call's arguments not JSON": ("/v1/chat/completions", {"messages": called("{"), "max_tokens": 1}),
    # "Failed to parse tools: ..." (Expected 'tools' to be an array / Missing tool type / Unsupported tool type)
    "tools an object": ("/v1/chat/completions", {"messages": HI, "tools": {}, "max_tokens": 1}),
    "a tool without a type": ("/apply-template", {"messages": HI, "tools": [{}]}),
    "a tool that is a number": ("/v1/chat/completions/input_tokens", {"messages": HI, "tools": [5]}),
    "a tool of another type": ("/v1/chat/completions", {"messages": HI, "tools": [{"type": "other"}], "max_tokens": 1}),
    # "Unknown reasoning format: x"
    "an unknown reasoning_format": ("/v1/chat/completions", {"messages": HI, "reasoning_format": "x", "max_tokens": 1}),
    # /tokenize: "[json.exception.type_error.302] type must be string|number, but is ..."
    "tokenize an object": ("/tokenize", {"content": {}}),
    "tokenize a prompt object": ("/tokenize", {"content": {"prompt_string": "hi"}}),
    "tokenize null": ("/tokenize", {"content": None}),
    "tokenize a number": ("/tokenize", {"content": 5}),
    "tokenize a list in the list": ("/tokenize", {"content": [[1]]}),
    "tokenize an object in the list": ("/tokenize", {"content": ["hi", {}]}),
    "tokenize null in the list": ("/tokenize", {"content": [None]}),
}


@pytest.mark.contract
@pytest.mark.parametrize("name", list(FINDINGS))
def test_what_the_fuzzer_found_is_a_4xx_and_the_server_stays(appliance: Project, api_key: str, name: str) -> None:
    path, body = FINDINGS[name]
    pid = server_pid(appliance)
    r = post(appliance, api_key, path, body, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert server_pid(appliance) == pid and appliance.health() == 200
