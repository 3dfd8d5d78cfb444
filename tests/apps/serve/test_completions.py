"""Chat completions: the checks pydantic cannot express, the answer's token budget, whole answers and SSE chunks."""
import asyncio
import json
from types import SimpleNamespace

import pytest

from vlkit.apps.serve.completions import (DEFAULT_MAX_NEW_TOKENS, ChatCompletions, chat_options, engine_messages,
                                          sse_chunks, whole_answer)
from vlkit.apps.serve.errors import APIError
from vlkit.apps.serve.schemas import ChatCompletionRequest

MESSAGES = [{"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def _req(**fields):
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **fields})


def _error(call):
    with pytest.raises(APIError) as exc:
        call()
    return exc.value


def test_options_and_which_field_set_the_answer_length():
    assert chat_options(_req(stop="END", max_tokens=9)) == (["END"], 9, "max_tokens")
    assert chat_options(_req(max_tokens=9, max_completion_tokens=7)) == ([], 7, "max_completion_tokens")
    assert chat_options(_req()) == ([], None, "max_tokens")
    assert _error(lambda: chat_options(_req(n=2))).param == "n"
    assert _error(lambda: chat_options(_req(stop=["a"] * 5))).param == "stop"
    assert _error(lambda: chat_options(_req(stop=["a", ""]))).param == "stop"
    assert _error(lambda: chat_options(_req(stream_options={"include_usage": True}))).param == "stream_options"


def test_engine_messages_map_developer_to_system():
    assert engine_messages(_req().messages) == [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_the_answer_budget_is_what_the_context_leaves():
    cfg = SimpleNamespace(text=SimpleNamespace(max_position_embeddings=300), max_images=1)
    chat = ChatCompletions(engine=None, media=None, cfg=cfg, model="m")
    assert chat.answer_room(10, None) == DEFAULT_MAX_NEW_TOKENS == 256
    assert chat.answer_room(290, None) == 10
    assert chat.answer_room(10, 500) == 500  # an explicit budget is the engine's to check against the context
    e = _error(lambda: chat.answer_room(300, None))
    assert (e.param, e.code) == ("messages", "context_length_exceeded")


class FakeStream:
    def __init__(self, events):
        self.events, self.cancelled = events, False

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for ev in self.events:
            yield ev

    def cancel(self):
        self.cancelled = True


def _ev(text, finish=None, error=None):
    return SimpleNamespace(text=text, finish_reason=finish, error=error, prompt_tokens=5, completion_tokens=2)


ANSWER = ["<ref>box</ref>", "<box>(1,2),(3,4)</box>"]


def test_whole_answer_with_boxes_and_usage():
    stream = FakeStream([_ev(ANSWER[0]), _ev(ANSWER[1], "stop")])
    out = asyncio.run(whole_answer(stream, "id1", 7, "m"))
    assert stream.cancelled and out["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    message = out["choices"][0]["message"]
    assert message["content"] == "".join(ANSWER) and message["boxes"] == [{"phrase": "box", "box": [1, 2, 3, 4]}]
    assert _error(lambda: asyncio.run(whole_answer(FakeStream([_ev("", "error", "boom")]), "id", 7, "m"))).status == 500


async def _collect(stream, include_usage):
    return [chunk async for chunk in sse_chunks(stream, "id1", 7, "m", include_usage)]


def test_sse_chunks_role_content_finish_usage_done():
    chunks = asyncio.run(_collect(FakeStream([_ev(ANSWER[0]), _ev(ANSWER[1], "stop")]), include_usage=True))
    assert chunks[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(c[len("data: "):]) for c in chunks[:-1]]
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [b["choices"][0]["delta"].get("content") for b in bodies[1:3]] == ANSWER
    assert bodies[3]["choices"][0]["finish_reason"] == "stop"
    assert bodies[3]["choices"][0]["delta"]["boxes"] == [{"phrase": "box", "box": [1, 2, 3, 4]}]
    assert bodies[4]["choices"] == [] and bodies[4]["usage"]["total_tokens"] == 7
    failed = asyncio.run(_collect(FakeStream([_ev("", "error", "boom")]), include_usage=False))
    assert "generation failed: boom" in failed[1] and failed[-1] == "data: [DONE]\n\n"
