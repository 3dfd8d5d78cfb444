"""POST /v1/chat/completions: OpenAI chat requests (vision messages) -> the engine -> a whole answer or an SSE
stream of chunks. Every answer carries the grounding boxes parsed from its text."""
from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Optional

from fastapi.responses import StreamingResponse

from vlkit.apps.serve.errors import APIError, error_body
from vlkit.apps.serve.media import MediaLoader
from vlkit.apps.serve.schemas import ChatCompletionRequest, ChatMessage
from vlkit.chat import ChatFormatError
from vlkit.errors import ImageTokenError
from vlkit.grounding import parse_boxes
from vlkit.infer.engine import (ContextLengthError, Engine, EngineStoppedError, EventStream, QueueFullError, QueueSlot,
                                SamplingParams, TooManyImagesError)

DEFAULT_MAX_NEW_TOKENS = 256  # an answer's budget when the request sets neither max_tokens nor max_completion_tokens
MAX_STOP_STRINGS = 4


def chat_options(req: ChatCompletionRequest) -> tuple[list[str], Optional[int], str]:
    """Checks of the fields that pydantic cannot express -> (stop strings, max new tokens or None, the param that
    set it: OpenAI's `max_completion_tokens` or its older `max_tokens`)."""
    if req.n != 1:
        raise APIError(400, f"n={req.n} is not supported; only n=1", "n", code="unsupported_value")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise APIError(400, f"stop must be at most {MAX_STOP_STRINGS} non-empty strings", "stop")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    if req.max_completion_tokens is not None:
        return stops, req.max_completion_tokens, "max_completion_tokens"
    return stops, req.max_tokens, "max_tokens"


def engine_messages(messages: list[ChatMessage]) -> list[dict]:
    return [{"role": "system" if m.role == "developer" else m.role,
             "content": m.content if not isinstance(m.content, list) else [p.model_dump() for p in m.content]}
            for m in messages]


def video_prompt(pipe, messages: list[dict], images: list, clips: list) -> tuple[list[int], list]:
    """`Engine.prepare` for a request with videos (Bundle.media_prompt): each clip fills one vision block, whole
    ((T, 3, H, W), video pads) or frame by frame (image pads, older checkpoints); pixels follow the sequence."""
    return pipe.media_prompt(messages, [pipe.image_tensor(im) for im in images],
                             [[pipe.image_tensor(f) for f in clip] for clip in clips])


def open_chat_stream(engine: Engine, ids: list[int], pixels: list, params: SamplingParams, slot: QueueSlot,
                     stream: bool, max_param: str) -> EventStream:
    """Queue a checked request in the place `slot` holds; engine errors -> API errors."""
    try:
        return engine.open_stream(ids, pixels, params, slot=slot, stream=stream)
    except ContextLengthError as exc:
        raise APIError(400, str(exc), max_param, code="context_length_exceeded") from None
    except (ImageTokenError, TooManyImagesError) as exc:
        raise APIError(400, str(exc), "messages") from None
    except QueueFullError as exc:
        raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full") from None
    except EngineStoppedError as exc:
        raise APIError(503, str(exc), type_="server_error") from None


async def whole_answer(stream: EventStream, rid: str, created: int, model: str) -> dict:
    pieces, final = [], None
    try:
        async for ev in stream:
            pieces.append(ev.text)
            if ev.finish_reason is not None:
                final = ev
    finally:
        stream.cancel()
    if final is None or final.finish_reason in ("error", "cancelled"):
        raise APIError(500, f"generation failed: {final.error if final else 'no result'}", type_="server_error")
    text = "".join(pieces)
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": final.finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": text, "boxes": boxes_of(text)}}],
            "usage": usage(final)}


class ChatCompletions:
    """POST /v1/chat/completions: a checked request -> a queued generation -> a whole answer or an SSE stream."""

    def __init__(self, engine: Engine, media: MediaLoader, cfg, model: str):
        self.engine, self.media, self.cfg, self.model = engine, media, cfg, model

    async def __call__(self, req: ChatCompletionRequest):
        stops, max_new_tokens, max_param = chat_options(req)
        try:
            slot = self.engine.reserve()
        except QueueFullError as exc:
            raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full") from None
        with slot:  # the queue place is given back on every way out until the engine takes the request
            ids, pixels = await self.prompt(req)
            max_new_tokens = self.answer_room(len(ids), max_new_tokens)
            params = SamplingParams(max_new_tokens=max_new_tokens, temperature=req.temperature, top_p=req.top_p,
                                    stop=tuple(stops), seed=req.seed)
            stream = open_chat_stream(self.engine, ids, pixels, params, slot, req.stream, max_param)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(sse_chunks(stream, rid, now, self.model, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole_answer(stream, rid, now, self.model)

    async def prompt(self, req: ChatCompletionRequest) -> tuple[list[int], list]:
        """The request's messages, images and videos -> (prompt token ids, pixel tensors)."""
        videos = await self.media.resolve_videos(req.messages, self.cfg.max_images)
        images = await self.media.resolve(req.messages, self.cfg.max_images)
        try:
            if videos:
                return await self.engine.run_in_pool(video_prompt, self.engine.pipe, engine_messages(req.messages),
                                                     images, videos)
            return await self.engine.run_in_pool(self.engine.prepare, engine_messages(req.messages), images)
        except (ChatFormatError, ImageTokenError, TooManyImagesError) as exc:
            raise APIError(400, str(exc), "messages") from None

    def answer_room(self, prompt_len: int, max_new_tokens: Optional[int]) -> int:
        """The answer's token budget: the asked one, else DEFAULT_MAX_NEW_TOKENS or what the context leaves."""
        context = self.cfg.text.max_position_embeddings
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, context - prompt_len)
        if prompt_len >= context or max_new_tokens < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens (images included); the context is {context} "
                                "tokens, so no room is left for an answer", "messages",
                           code="context_length_exceeded")
        return max_new_tokens


def boxes_of(text: str) -> list[dict]:
    """Grounding boxes in an answer: [{"phrase", "box": [x1, y1, x2, y2] in [0, 1000)}]."""
    return [{"phrase": g.phrase, "box": list(g.box)} for g in parse_boxes(text)]


def usage(ev) -> dict:
    return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
            "total_tokens": ev.prompt_tokens + ev.completion_tokens}


async def sse_chunks(stream, rid: str, created: int, model: str, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI chunk stream: a role chunk, content chunks, one chunk with finish_reason (and the parsed boxes),
    an optional usage chunk, then [DONE]. An engine error becomes an SSE error event before [DONE]."""

    def chunk(delta: dict, finish_reason: Optional[str] = None, **extra) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}
        if include_usage:
            body["usage"] = None
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n"

    pieces: list[str] = []
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for ev in stream:
            if ev.text:
                pieces.append(ev.text)
                yield chunk({"content": ev.text})
            if ev.finish_reason is None:
                continue
            if ev.finish_reason in ("error", "cancelled"):
                err = error_body(f"generation failed: {ev.error or ev.finish_reason}", "server_error")
                yield f"data: {json.dumps(err)}\n\n"
                break
            yield chunk({"boxes": boxes_of("".join(pieces))}, ev.finish_reason)
            if include_usage:
                body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage(ev)}
                yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()  # the client went away: free the batch row
