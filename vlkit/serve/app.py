"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

Endpoints: POST /v1/chat/completions (vision messages, streaming), GET /v1/models, GET /health,
POST /v1/images/generations (VLUAS models), and the web playground at /. Every client mistake is a 4xx in
OpenAI's error shape {"error": {"message", "type", "param", "code"}} with `param` naming the bad part; the
server keeps serving afterwards. See docs/serving.md.
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
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlkit.chat import ChatFormatError
from vlkit.errors import ImageTokenError, UserError
from vlkit.grounding import parse_boxes
from vlkit.images import ALLOWED_MIME, MAX_BYTES, MAX_PIXELS, ImageError, decode_base64, decode_bytes
from vlkit.infer.engine import (ContextLengthError, Engine, EngineStoppedError, QueueFullError, SamplingParams,
                                TooManyImagesError)
from vlkit.serve.schemas import ChatCompletionRequest, ChatMessage, ImageGenerationRequest, ImagePart, error_body

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

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


# -- request body size limit (pure ASGI, before any parsing) -------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is larger than the limit of {self.max_bytes} bytes",
                             code="request_too_large")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_bytes:
                        return await too_large.response()(scope, receive, send)
                except ValueError:
                    return await APIError(400, "invalid Content-Length header").response()(scope, receive, send)
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await too_large.response()(scope, receive, send)


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
        if "[" in item or item in ("str", "int", "float", "bool", "none", "list", "dict"):
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
    if not errors:
        return APIError(400, "invalid request")
    scored = [(_param_from_loc(tuple(e.get("loc", ()))), e) for e in errors]
    depth = max(p.count(".") + p.count("[") for p, _ in scored)
    param, err = next((p, e) for p, e in scored if p.count(".") + p.count("[") == depth)
    msg = err.get("msg", "invalid value")
    if len({p for p, _ in scored}) == 1 and len(scored) > 1:  # a union: every branch failed at the same place
        msg = "; or ".join(e.get("msg", "") for _, e in scored)
    return APIError(400, f"invalid value for {param}: {msg}", param=param, code="invalid_value")


# -- the app -----------------------------------------------------------------------------------------------
def create_app(pipe, *, api_key: Optional[str] = None, allowed_local_media_path: Optional[str | Path] = None,
               allow_remote_media: bool = False, max_batch_size: int = 16, max_queue: int = 64,
               max_body_bytes: int = MAX_BODY_BYTES, model_name: Optional[str] = None,
               remote_timeout: float = 10.0, remote_max_bytes: int = MAX_BYTES,
               engine: Optional[Engine] = None) -> FastAPI:
    """The ASGI app for a Pipeline. The engine thread starts and stops with the app's lifespan."""
    engine = engine or Engine(pipe, max_batch_size=max_batch_size, max_queue=max_queue)
    name = model_name or (pipe.path.name if getattr(pipe, "path", None) else "vlkit")
    local_root = Path(allowed_local_media_path).resolve() if allowed_local_media_path else None
    if local_root is not None and not local_root.is_dir():
        raise UserError(f"--allowed-local-media-path {allowed_local_media_path} is not a directory")
    cfg = pipe.model.cfg
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="vlkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.pipe = pipe
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type_=kind).response()

    @app.exception_handler(UserError)
    async def _user(request: Request, exc: UserError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return APIError(500, f"internal server error ({type(exc).__name__})", type_="server_error").response()

    def auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           type_="invalid_request_error", code="invalid_api_key")

    # -- images -----------------------------------------------------------------------------------------
    async def fetch_remote(url: str, param: str) -> bytes:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=remote_timeout, follow_redirects=False) as client:
                async with client.stream("GET", url) as resp:
                    if resp.status_code != 200:
                        raise APIError(400, f"fetching {url} gave HTTP {resp.status_code}", param, code="image_fetch_failed")
                    mime = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if mime and mime not in ALLOWED_MIME:
                        raise APIError(400, f"{url} has content type {mime!r}; allowed: {sorted(ALLOWED_MIME)}", param,
                                       code="unsupported_mime")
                    chunks, size = [], 0
                    async for chunk in resp.aiter_bytes():
                        size += len(chunk)
                        if size > remote_max_bytes:
                            raise APIError(400, f"{url} is larger than {remote_max_bytes} bytes", param,
                                           code="image_too_large")
                        chunks.append(chunk)
                    return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise APIError(400, f"could not fetch {url}: {type(exc).__name__}: {exc}", param,
                           code="image_fetch_failed") from None

    def read_local(url: str, param: str) -> bytes:
        if local_root is None:
            raise APIError(400, "file:// image URLs are disabled; start the server with --allowed-local-media-path DIR",
                           param, code="local_media_disabled")
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise APIError(400, f"file URL host {parsed.netloc!r} is not allowed (use file:///path)", param)
        path = Path(urllib.request.url2pathname(urllib.parse.unquote(parsed.path))).resolve()  # symlinks and ..
        if not path.is_relative_to(local_root):
            raise APIError(403, f"{path} is outside the allowed media folder {local_root}", param,
                           type_="permission_error", code="path_not_allowed")
        if not path.is_file():
            raise APIError(400, f"image file {path} does not exist", param, code="image_not_found")
        if path.stat().st_size > MAX_BYTES:
            raise APIError(400, f"image file {path} is larger than {MAX_BYTES} bytes", param, code="image_too_large")
        return path.read_bytes()

    async def load_image_url(url: str, param: str):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                header, sep, payload = url[5:].partition(",")
                if not sep:
                    raise APIError(400, "malformed data URL (expected data:<mime>;base64,<data>)", param)
                fields = [f.strip().lower() for f in header.split(";")]
                mime = fields[0]
                if mime not in ALLOWED_MIME:
                    raise APIError(400, f"unsupported image MIME type {mime!r}; allowed: {sorted(ALLOWED_MIME)}", param,
                                   code="unsupported_mime")
                if "base64" not in fields[1:]:
                    raise APIError(400, "data URLs must be base64-encoded (data:<mime>;base64,...)", param)
                return await engine.run_in_pool(decode_base64, payload, MAX_PIXELS, "the image")
            if scheme == "file":
                data = await engine.run_in_pool(read_local, url, param)
            elif scheme in ("http", "https"):
                if not allow_remote_media:
                    raise APIError(400, "remote image URLs are disabled; send a data: URL or start the server with "
                                        "--allow-remote-media", param, code="remote_media_disabled")
                data = await fetch_remote(url, param)
            else:
                raise APIError(400, f"unsupported image URL scheme {scheme or url[:20]!r}; allowed: data:, file: "
                                    "(with --allowed-local-media-path), http(s): (with --allow-remote-media)", param,
                               code="unsupported_url_scheme")
            return await engine.run_in_pool(decode_bytes, data, MAX_PIXELS, "the image")
        except ImageError as exc:
            raise APIError(400, str(exc), param, code="invalid_image") from None

    async def resolve_images(messages: list[ChatMessage]) -> list:
        refs = [(f"messages[{i}].content[{j}].image_url.url", part.image_url.url)
                for i, m in enumerate(messages) if isinstance(m.content, list)
                for j, part in enumerate(m.content) if isinstance(part, ImagePart)]
        if len(refs) > cfg.max_images:
            raise APIError(400, f"the request has {len(refs)} images; this model accepts at most {cfg.max_images}",
                           "messages", code="too_many_images")
        return list(await asyncio.gather(*(load_image_url(url, param) for param, url in refs)))

    # -- routes -----------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "running": engine.num_running, "waiting": engine.num_waiting}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": created, "owned_by": "vlkit",
            "capabilities": {"vision": True, "image_generation": bool(pipe.can_generate_images),
                             "max_images": cfg.max_images, "context_length": cfg.text.max_position_embeddings}}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat_completions(req: ChatCompletionRequest):
        if req.n != 1:
            raise APIError(400, f"n={req.n} is not supported; only n=1", "n", code="unsupported_value")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
            raise APIError(400, f"stop must be at most {MAX_STOP_STRINGS} non-empty strings", "stop")
        if req.stream_options is not None and not req.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        try:
            engine.reserve()
        except QueueFullError as exc:
            raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full") from None
        reserved = True
        try:
            images = await resolve_images(req.messages)
            messages = [{"role": "system" if m.role == "developer" else m.role,
                         "content": m.content if not isinstance(m.content, list) else [p.model_dump() for p in m.content]}
                        for m in req.messages]
            try:
                ids, pixels = await engine.run_in_pool(engine.prepare, messages, images)
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
            try:
                reserved = False  # submit takes over the reservation, also when it raises
                stream = engine.open_stream(ids, pixels, params, reserved=True, stream=req.stream)
            except ContextLengthError as exc:
                raise APIError(400, str(exc), max_param, code="context_length_exceeded") from None
            except QueueFullError as exc:
                raise APIError(429, str(exc), type_="rate_limit_error", code="queue_full") from None
            except EngineStoppedError as exc:
                raise APIError(503, str(exc), type_="server_error") from None
            except UserError as exc:
                raise APIError(400, str(exc)) from None
        finally:
            if reserved:
                engine.release()
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(sse_chunks(stream, rid, now, name, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
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
        return {"id": rid, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": 0, "finish_reason": final.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": text, "boxes": boxes_of(text)}}],
                "usage": usage(final)}

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
                raise APIError(400, f"size={req.size!r} is not supported; this model generates {side}x{side}", "size")
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

    # -- the playground ---------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


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
    uvicorn.run(app, host=host, port=port, log_level="info")
