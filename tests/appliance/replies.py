"""What a chat reply must say, for the tests that only need "it answered": text from the assistant, a reason to
stop, the model that answered, and token counts that add up."""

from __future__ import annotations

from openai.types.chat import ChatCompletion


def assert_says_something(reply: ChatCompletion, max_tokens: int, model: str | None = None) -> str:
    """The first choice is the assistant's non-blank text, ended by "stop" or by the `max_tokens` limit ("length",
    after exactly that many tokens); usage counts a prompt and at most `max_tokens` generated tokens, and its total
    adds up; with `model`, the reply names that model. Returns the text."""
    choice = reply.choices[0]
    text = choice.message.content or ""
    assert choice.message.role == "assistant", reply
    assert text.strip(), f"a blank reply: {reply}"
    assert choice.finish_reason in ("stop", "length"), reply
    usage = reply.usage
    assert usage is not None, reply
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= max_tokens, usage
    if choice.finish_reason == "length":
        assert usage.completion_tokens == max_tokens, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
    if model is not None:
        assert reply.model == model, reply.model
    return text
