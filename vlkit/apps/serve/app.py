"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over the continuous-batching engine.

Endpoints: POST /v1/chat/completions (vision messages, streaming), GET /v1/models, GET /v1/models/{id},
GET /health, POST /v1/images/generations (VLUAS models), and the web playground at /. Every client mistake is a
4xx in OpenAI's error shape {"error": {"message", "type", "param", "code"}} with `param` naming the bad part,
and fails only its own request: the server keeps serving the others and afterwards. See docs/serving.md.
Request bodies: schemas.py; errors: errors.py; image URLs: media.py; chat completions: completions.py.
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
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlkit.apps.serve.completions import ChatCompletions
from vlkit.apps.serve.errors import APIError, add_error_handlers, body_too_large, brief, error_body
from vlkit.apps.serve.media import MediaLoader
from vlkit.apps.serve.schemas import ChatCompletionRequest, ImageGenerationRequest
from vlkit.errors import UserError
from vlkit.images import MAX_BYTES
from vlkit.infer.engine import Engine

WEB_DIR = Path(__file__).parent / "web"
MAX_BODY_BYTES = 50 * 1024 * 1024  # a 32 MiB image as base64 is ~43 MiB


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
    media = MediaLoader(engine, local_root, allow_remote_media, remote_timeout, remote_max_bytes,
                        video=pipe.model.cfg.video)  # clips sampled as the model was trained
    chat = ChatCompletions(engine, media, pipe.model.cfg, name)

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
        return await chat(req)

    add_image_generation_route(app, pipe, engine, name, auth)

    @app.get("/", include_in_schema=False)  # the playground
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    return app


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
        return await generate_images(pipe, engine, name, req)


async def generate_images(pipe, engine: Engine, name: str, req: ImageGenerationRequest) -> dict:
    """POST /v1/images/generations: `req.n` PNGs from `pipe.generate_image`, base64 in OpenAI's shape."""
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
