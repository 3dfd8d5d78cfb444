"""Errors in OpenAI's shape {"error": {"message", "type", "param", "code"}}: APIError carries its HTTP status, and
FastAPI's validation errors become 400s whose `param` names the bad part of the request."""
from __future__ import annotations

import json
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlkit.errors import UserError


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    """OpenAI's nested error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


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


# -- validation errors -> OpenAI shape -------------------------------------------------------------------------
def param_from_loc(loc: tuple) -> str:
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
            param = param_from_loc(tuple(e.get("loc", ())))
            return APIError(400, f"invalid value for {param}: the text is not valid Unicode (a lone UTF-16 surrogate "
                                 "such as \\ud800?)", param=param, code="invalid_value")
    if not errors:
        return APIError(400, "invalid request")
    scored = [(param_from_loc(tuple(e.get("loc", ()))), e) for e in errors]
    depth = max(p.count(".") + p.count("[") for p, _ in scored)
    param, err = next((p, e) for p, e in scored if p.count(".") + p.count("[") == depth)
    msg = err.get("msg", "invalid value")
    if len({p for p, _ in scored}) == 1 and len(scored) > 1:  # a union: every branch failed at the same place
        msg = "; or ".join(e.get("msg", "") for _, e in scored)
    return APIError(400, f"invalid value for {param}: {msg}", param=param, code="invalid_value")


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
