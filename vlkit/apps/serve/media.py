"""Image URLs of a chat request -> PIL images: data: URLs always, file:// inside one folder, http(s):// when
allowed. Every way a URL can fail is an APIError naming its `param`."""
from __future__ import annotations

import asyncio
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from vlkit.apps.serve.errors import APIError, brief
from vlkit.apps.serve.schemas import ChatMessage, ImagePart
from vlkit.images import ALLOWED_MIME, MAX_BYTES, MAX_PIXELS, ImageError, decode_base64, decode_bytes
from vlkit.infer.engine import Engine


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
