"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

Endpoints: POST /v1/chat/completions (vision messages, streaming), GET /v1/models, GET /v1/models/{id},
GET /health, POST /v1/images/generations (VLUAS models), and the web playground at /. Every client mistake is a
4xx in OpenAI's error shape {"error": {"message", "type", "param", "code"}} with `param` naming the bad part,
and fails only its own request: the server keeps serving the others and afterwards. See docs/serving.md.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import inspect
import io
import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlkit.chat import ChatFormatError
from vlkit.errors import ImageTokenError, UserError
from vlkit.grounding import parse_boxes
from vlkit.images import ALLOWED_MIME, MAX_BYTES, MAX_PIXELS, ImageError, decode_base64, decode_bytes
from vlkit.infer.engine import (ContextLengthError, Engine, EngineStoppedError, EventStream, QueueFullError, QueueSlot,
                                SamplingParams, TooManyImagesError)
from vlkit.apps.serve.schemas import ChatCompletionRequest, ChatMessage, ImageGenerationRequest, ImagePart, error_body

WEB_DIR = Path(__file__).parent / "web"
DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 50 * 1024 * 1024  # a 32 MiB image as base64 is ~43 MiB
MAX_STOP_STRINGS = 4


class APIError(Exception):
    """An error answered in OpenAI's shape with its HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 type_: str = "invalid_request_error", code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def response(self) -> Response:
        # json.dumps escapes non-ASCII: no text in a message (not even a lone surrogate) can break the error itself
        body = json.dumps(error_body(self.message, self.type, self.param, self.code))
        return Response(body, status_code=self.status, media_type="application/json")


def brief(text: str, limit: int = 100) -> str:
    """A user-supplied value, quoted and cut short for an error message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def body_too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is larger than the limit of {max_bytes} bytes", code="request_too_large")


class BodyLimitMiddleware:
    """A request body over `max_bytes` gets a 413 in OpenAI's shape: at once when its Content-Length says so, else
    (a chunked body) when the app reads past the limit: the HTTPException passes FastAPI's body reading to the
    app's 413 handler. (FastAPI's own `max_body_size` answers a declared Content-Length in plain text.)"""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            error = APIError(400, "invalid Content-Length header", code="invalid_http_request")
            return await error.response()(scope, receive, send)
        if declared is not None and int(declared) > self.max_bytes:
            return await body_too_large(self.max_bytes).response()(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited_receive, send)


# -- validation errors -> OpenAI shape -------------------------------------------------------------------------
def _param_from_loc(loc: tuple) -> str:
    """('body', 'messages', 0, 'content', 'list[tagged-union[..]]', 1, 'image_url', 'image_url', 'url')
    -> 'messages[0].content[1].image_url.url' (union branch labels and discriminator tags dropped)."""
    parts: list[str] = []
    skip_tag = False
    for i, item in enumerate(loc):
        if i == 0 and item in ("body", "query", "path", "header"):
            continue
        if isinstance(item, int):
            parts.append(f"[{item}]")
            continue
        if "[" in item or "-" in item or item in ("str", "int", "float", "bool", "none", "list", "dict"):
            skip_tag = "tagged-union" in item
            continue
        if skip_tag and parts and parts[-1].startswith("["):
            skip_tag = False
            continue  # the discriminator value that pydantic puts in the location
        parts.append(("." if parts else "") + item)
    return "".join(parts) or "body"


def validation_error(errors: list[dict]) -> APIError:
    for e in errors:
        if e.get("type") == "json_invalid":
            return APIError(400, f"the request body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}",
                            param="body", code="invalid_json")
        if e.get("type") == "string_unicode":
            param = _param_from_loc(tuple(e.get("loc", ())))
            return APIError(400, f"invalid value for {param}: the text is not valid Unicode (a lone UTF-16 surrogate "
                                 "such as \\ud800?)", param=param, code="invalid_value")
    if not errors:
        return APIError(400, "invalid request")
    scored = [(_param_from_loc(tuple(e.get("loc", ()))), e) for e in errors]
    depth = max(p.count(".") + p.count("[") for p, _ in scored)
    param, err = next((p, e) for p, e in scored if p.count(".") + p.count("[") == depth)
    msg = err.get("msg", "invalid value")
    if len({p for p, _ in scored}) == 1 and len(scored) > 1:  # a union: every branch failed at the same place
        msg = "; or ".join(e.get("msg", "") for _, e in scored)
    return APIError(400, f"invalid value for {param}: {msg}", param=param, code="invalid_value")


# -- images ----------------------------------------------------------------------------------------------
class MediaLoader:
    """Image URLs of a request -> PIL images: data: URLs always, file:// inside one folder, http(s):// when
    allowed. Every way a URL can fail is an APIError naming its `param`; decoding runs in the engine's pool."""

    def __init__(self, engine: Engine, local_root: Optional[Path], allow_remote: bool, remote_timeout: float,
                 remote_max_bytes: int):
        self.engine, self.local_root, self.allow_remote = engine, local_root, allow_remote
        self.remote_timeout, self.remote_max_bytes = remote_timeout, remote_max_bytes

    async def resolve(self, messages: list[ChatMessage], max_images: int) -> list:
        refs = [(f"messages[{i}].content[{j}].image_url.url", part.image_url.url)
                for i, m in enumerate(messages) if isinstance(m.content, list)
                for j, part in enumerate(m.content) if isinstance(part, ImagePart)]
        if len(refs) > max_images:
            raise APIError(400, f"the request has {len(refs)} images; this model accepts at most {max_images}",
                           "messages", code="too_many_images")
        return list(await asyncio.gather(*(self.load(url, param) for param, url in refs)))

    async def load(self, url: str, param: str):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                return await self.engine.run_in_pool(decode_base64, data_url_payload(url, param), MAX_PIXELS,
                                                     "the image")
            if scheme == "file":
                data = await self.engine.run_in_pool(self.read_local, url, param)
            elif scheme in ("http", "https"):
                data = await self.fetch_remote(url, param)
            else:
                raise APIError(400, f"unsupported image URL scheme {brief(scheme or url, 20)}; allowed: data:, file: "
                                    "(with --allowed-local-media-path), http(s): (with --allow-remote-media)", param,
                               code="unsupported_url_scheme")
            return await self.engine.run_in_pool(decode_bytes, data, MAX_PIXELS, "the image")
        except ImageError as exc:
            raise APIError(400, str(exc), param, code="invalid_image") from None

    def read_local(self, url: str, param: str) -> bytes:
        if self.local_root is None:
            raise APIError(400, "file:// image URLs are disabled; start the server with --allowed-local-media-path DIR",
                           param, code="local_media_disabled")
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, f"file URL host {brief(parsed.netloc)} is not allowed (use file:///path)", param)
        name = urllib.request.url2pathname(urllib.parse.unquote(parsed.path))
        try:
            path = Path(name).resolve()  # symlinks and ..
            if not path.is_relative_to(self.local_root):
                raise APIError(403, f"{brief(str(path))} is outside the allowed media folder {self.local_root}", param,
                               type_="permission_error", code="path_not_allowed")
            if not path.is_file():
                raise APIError(400, f"image file {brief(str(path))} does not exist", param, code="image_not_found")
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, a name too long, ...
            reason = getattr(exc, "strerror", None) or str(exc)
            raise APIError(400, f"image file {brief(name)} cannot be read: {brief(reason, 200)}", param,
                           code="image_unreadable") from None
        if len(data) > MAX_BYTES:
            raise APIError(400, f"image file {brief(str(path))} is larger than {MAX_BYTES} bytes", param,
                           code="image_too_large")
        return data

    async def fetch_remote(self, url: str, param: str) -> bytes:
        """The whole download has one deadline (`remote_timeout`), however slowly the server sends."""
        if not self.allow_remote:
            raise APIError(400, "remote image URLs are disabled; send a data: URL or start the server with "
                                "--allow-remote-media", param, code="remote_media_disabled")
        try:
            async with asyncio.timeout(self.remote_timeout):
                return await self._download(url, param)
        except TimeoutError:
            raise APIError(400, f"fetching {brief(url)} took longer than the {self.remote_timeout} s deadline", param,
                           code="image_fetch_timeout") from None

    async def _download(self, url: str, param: str) -> bytes:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self.remote_timeout, follow_redirects=False) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise APIError(400, f"fetching {brief(url)} gave HTTP {resp.status_code}", param,
                                       code="image_fetch_failed")
                    mime = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if mime and mime not in ALLOWED_MIME:
                        raise APIError(400, f"{brief(url)} has content type {brief(mime)}; allowed: "
                                            f"{sorted(ALLOWED_MIME)}", param, code="unsupported_mime")
                    chunks, size = [], 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > self.remote_max_bytes:
                            raise APIError(400, f"{brief(url)} is larger than {self.remote_max_bytes} bytes", param,
                                           code="image_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise APIError(400, f"could not fetch {brief(url)}: {type(exc).__name__}: {brief(str(exc), 200)}", param,
                           code="image_fetch_failed") from None


def data_url_payload(url: str, param: str) -> str:
    """The base64 payload of a `data:<image mime>;base64,...` URL."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise APIError(400, "malformed data URL (expected data:<mime>;base64,<data>)", param)
    fields = [f.strip().lower() for f in header.split(";")]
    if fields[0] not in ALLOWED_MIME:
        raise APIError(400, f"unsupported image MIME type {brief(fields[0])}; allowed: {sorted(ALLOWED_MIME)}", param,
                       code="unsupported_mime")
    if "base64" not in fields[1:]:
        raise APIError(400, "data URLs must be base64-encoded (data:<mime>;base64,...)", param)
    return payload


# -- chat completions ------------------------------------------------------------------------------------
def chat_options(req: ChatCompletionRequest) -> tuple[list[str], Optional[int], str]:
    """Checks of the fields that pydantic cannot express -> (stop strings, max tokens or None, its param name)."""
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


# -- the app -----------------------------------------------------------------------------------------------
def create_app(pipe, *, api_key: Optional[str] = None, allowed_local_media_path: Optional[str | Path] = None,
               allow_remote_media: bool = False, max_batch_size: int = 16, max_queue: int = 64,
               max_body_bytes: int = MAX_BODY_BYTES, model_name: Optional[str] = None,
               remote_timeout: float = 10.0, remote_max_bytes: int = MAX_BYTES,
               engine: Optional[Engine] = None) -> FastAPI:
    """The ASGI app for a Pipeline. The engine thread starts and stops with the app's lifespan.
    `remote_timeout` is the deadline of a whole remote image download."""
    engine = engine or Engine(pipe, max_batch_size=max_batch_size, max_queue=max_queue)
    name = model_name or (pipe.path.name if getattr(pipe, "path", None) else "vlkit")
    local_root = Path(allowed_local_media_path).resolve() if allowed_local_media_path else None
    if local_root is not None and not local_root.is_dir():
        raise UserError(f"--allowed-local-media-path {allowed_local_media_path} is not a directory")
    media = MediaLoader(engine, local_root, allow_remote_media, remote_timeout, remote_max_bytes)
    cfg = pipe.model.cfg

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="vlkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.pipe = pipe
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    add_error_handlers(app, max_body_bytes)
    auth = api_key_check(api_key)
    add_model_routes(app, pipe, name, auth)

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest):
        stops, max_tokens, max_param = chat_options(req)
        try:
            slot = engine.reserve()
        except QueueFullError as exc:
            raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full") from None
        with slot:  # the queue place is given back on every way out until the engine takes the request
            images = await media.resolve(req.messages, cfg.max_images)
            try:
                ids, pixels = await engine.run_in_pool(engine.prepare, engine_messages(req.messages), images)
            except (ChatFormatError, ImageTokenError, TooManyImagesError) as exc:
                raise APIError(400, str(exc), "messages") from None
            context = cfg.text.max_position_embeddings
            if max_tokens is None:
                max_tokens = min(DEFAULT_MAX_TOKENS, context - len(ids))
            if len(ids) >= context or max_tokens < 1:
                raise APIError(400, f"the prompt has {len(ids)} tokens (images included); the context is {context} "
                                    "tokens, so no room is left for an answer", "messages",
                               code="context_length_exceeded")
            params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                    stop=tuple(stops), seed=req.seed)
            stream = open_chat_stream(engine, ids, pixels, params, slot, req.stream, max_param)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(sse_chunks(stream, rid, now, name, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole_answer(stream, rid, now, name)

    add_image_generation_route(app, pipe, engine, name, auth)

    @app.get("/", include_in_schema=False)  # the playground
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


def add_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
    """Every error in OpenAI's shape; FastAPI's 422 validation errors become 400s naming the field."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:  # BodyLimitMiddleware, a chunked body
            return body_too_large(max_body_bytes).response()
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type_=kind).response()

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return APIError(500, f"internal server error ({type(exc).__name__})", type_="server_error").response()


def api_key_check(api_key: Optional[str]):
    """A FastAPI dependency: 401 unless the request carries `Authorization: Bearer <api_key>` (if one is set)."""

    def auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           type_="invalid_request_error", code="invalid_api_key")

    return auth


def add_model_routes(app: FastAPI, pipe, name: str, auth) -> None:
    """GET /health, GET /v1/models, GET /v1/models/{id}."""
    cfg, engine, created = pipe.model.cfg, app.state.engine, int(time.time())
    card = {"id": name, "object": "model", "created": created, "owned_by": "vlkit",
            "capabilities": {"vision": True, "image_generation": bool(pipe.can_generate_images),
                             "max_images": cfg.max_images, "context_length": cfg.text.max_position_embeddings}}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "running": engine.num_running, "waiting": engine.num_waiting}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(auth)])
    async def model(model_id: str):
        if model_id != name:
            raise APIError(404, f"the model {brief(model_id)} does not exist; this server serves {name!r}",
                           code="model_not_found")
        return card


def add_image_generation_route(app: FastAPI, pipe, engine: Engine, name: str, auth) -> None:
    @app.post("/v1/images/generations", dependencies=[Depends(auth)])
    async def images_generations(req: ImageGenerationRequest):
        if not pipe.can_generate_images or not hasattr(pipe, "generate_image"):
            raise APIError(400, f"model {name!r} cannot generate images (it needs a visual tokenizer and "
                                "vision_target='codes', i.e. a VLUAS model)", "model", code="unsupported_model")
        kwargs: dict[str, Any] = {}
        accepted = inspect.signature(pipe.generate_image).parameters
        for key, arg in (("seed", "seed"), ("guidance_scale", "cfg_scale")):  # OpenAI-style name -> vlkit's
            value = getattr(req, key)
            if value is not None:
                if arg not in accepted:
                    raise APIError(400, f"{key} is not supported by this model's image generation", key)
                kwargs[arg] = value
        if req.size is not None:
            side = getattr(getattr(pipe, "vq", None), "cfg", None)
            side = getattr(side, "image_size", None)
            if side is not None and req.size != f"{side}x{side}":
                raise APIError(400, f"size={brief(req.size)} is not supported; this model generates {side}x{side}",
                               "size")
        out = []
        for i in range(req.n):
            each = dict(kwargs, seed=kwargs["seed"] + i) if "seed" in kwargs else kwargs  # n distinct images
            try:
                image = await asyncio.wrap_future(engine.call(lambda: pipe.generate_image(req.prompt, **each)))
            except UserError as exc:
                raise APIError(400, str(exc), "prompt") from None
            buf = io.BytesIO()
            image.save(buf, "PNG")
            out.append({"b64_json": base64.b64encode(buf.getvalue()).decode()})
        return {"created": int(time.time()), "data": out}


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


def serve(ckpt: str, host: str = "127.0.0.1", port: int = 8000, api_key: Optional[str] = None,
          allowed_local_media_path: Optional[str] = None, allow_remote_media: bool = False,
          max_batch_size: int = 16) -> None:
    """`vlkit serve`: load a checkpoint and serve it until interrupted."""
    import uvicorn

    import vlkit

    api_key = api_key or os.environ.get("VLKIT_API_KEY") or None
    pipe = vlkit.load(ckpt)
    app = create_app(pipe, api_key=api_key, allowed_local_media_path=allowed_local_media_path,
                     allow_remote_media=allow_remote_media, max_batch_size=max_batch_size)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without --api-key: anyone who can reach this port can use the model")
    print(f"vlkit: serving {ckpt} at http://{host}:{port}/  (playground at /, API at /v1)")
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="info")).run()


def uvicorn_config(app, **kwargs: Any):
    """uvicorn's settings for the app (`vlkit serve` and the tests): a request that uvicorn's HTTP parser
    refuses (an invalid Content-Length, a malformed request line) gets its 400 in OpenAI's error shape too."""
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools if installed, else h11

    class HTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def send_400_response(self, msg: str) -> None:  # uvicorn's hook for unparsable requests
            body = json.dumps(error_body(f"invalid HTTP request: {msg}", code="invalid_http_request")).encode()
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
            self.transport.close()

    return uvicorn.Config(app, http=HTTPProtocol, **kwargs)
