"""Image URLs of a chat request -> PIL images: data: URLs always, file:// inside one folder, http(s):// when
allowed. Video URLs -> lists of frames (vlkit.video): data: URLs and file:// under the same rules and byte limit.
Every way a URL can fail is an APIError naming its `param`."""
from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from vlkit.apps.serve.errors import APIError, brief
from vlkit.apps.serve.schemas import ChatMessage, ImagePart, VideoPart
from vlkit.config.video import VideoConfig
from vlkit.images import ALLOWED_MIME, MAX_BYTES, MAX_PIXELS, ImageError, decode_base64, decode_bytes
from vlkit.infer.engine import Engine
from vlkit.video import VideoError, load_video

VIDEO_MIME = {"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/mpeg", "video/ogg",
              "video/x-msvideo"}


class MediaLoader:
    """Image URLs of a request -> PIL images: data: URLs always, file:// inside one folder, http(s):// when
    allowed. Every way a URL can fail is an APIError naming its `param`; decoding runs in the engine's pool."""

    def __init__(self, engine: Engine, local_root: Optional[Path], allow_remote: bool, remote_timeout: float,
                 remote_max_bytes: int, video: Optional[VideoConfig] = None):
        self.engine, self.local_root, self.allow_remote = engine, local_root, allow_remote
        self.remote_timeout, self.remote_max_bytes = remote_timeout, remote_max_bytes
        self.video = dataclasses.replace(video or VideoConfig(), max_bytes=MAX_BYTES)  # the images' byte limit

    async def resolve(self, messages: list[ChatMessage], max_images: int) -> list:
        refs = [(f"messages[{i}].content[{j}].image_url.url", part.image_url.url)
                for i, m in enumerate(messages) if isinstance(m.content, list)
                for j, part in enumerate(m.content) if isinstance(part, ImagePart)]
        if len(refs) > max_images:
            raise APIError(400, f"the request has {len(refs)} images; this model accepts at most {max_images}",
                           "messages", code="too_many_images")
        return list(await asyncio.gather(*(self.load(url, param) for param, url in refs)))

    async def resolve_videos(self, messages: list[ChatMessage], max_images: int) -> list:
        """The request's videos as frame lists; each gets an equal share of the model's `max_images` left by the
        images (frames cost what images do), at most `VideoConfig.max_frames`. Checked before anything
        is loaded."""
        parts = [(f"messages[{i}].content[{j}].video_url.url", part) for i, m in enumerate(messages)
                 if isinstance(m.content, list) for j, part in enumerate(m.content)]
        refs = [(param, part.video_url.url) for param, part in parts if isinstance(part, VideoPart)]
        if not refs:
            return []
        n_images = sum(isinstance(part, ImagePart) for _, part in parts)
        share = (max_images - n_images) // len(refs)
        if share < 1:
            raise APIError(400, f"the request has {n_images} images and {len(refs)} videos; this model takes at most "
                                f"{max_images} images and video frames in all", "messages", code="too_many_images")
        cfg = dataclasses.replace(self.video, max_frames=min(self.video.max_frames, share))
        return list(await asyncio.gather(*(self.load_video(url, param, cfg) for param, url in refs)))

    async def load_video(self, url: str, param: str, cfg: VideoConfig) -> list:
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                data = await self.engine.run_in_pool(b64_bytes, data_url_payload(url, param, VIDEO_MIME, "video"))
            elif scheme == "file":
                data = await self.engine.run_in_pool(self.read_local, url, param, "video")
            else:
                raise APIError(400, f"unsupported video URL scheme {brief(scheme or url, 20)}; allowed: data:, file: "
                                    "(with --allowed-local-media-path)", param, code="unsupported_url_scheme")
            return await self.engine.run_in_pool(load_video, data, cfg, "the video")
        except ImageError as exc:  # VideoError included
            raise APIError(400, str(exc), param, code="invalid_video") from None

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

    def read_local(self, url: str, param: str, what: str = "image") -> bytes:
        if self.local_root is None:
            raise APIError(400, f"file:// {what} URLs are disabled; start the server with --allowed-local-media-path DIR",
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
                raise APIError(400, f"{what} file {brief(str(path))} does not exist", param, code=f"{what}_not_found")
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop, a name too long, ...
            reason = getattr(exc, "strerror", None) or str(exc)
            raise APIError(400, f"{what} file {brief(name)} cannot be read: {brief(reason, 200)}", param,
                           code=f"{what}_unreadable") from None
        if len(data) > MAX_BYTES:
            raise APIError(400, f"{what} file {brief(str(path))} is larger than {MAX_BYTES} bytes", param,
                           code=f"{what}_too_large")
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


def data_url_payload(url: str, param: str, allowed: set = ALLOWED_MIME, what: str = "image") -> str:
    """The base64 payload of a `data:<mime>;base64,...` URL whose MIME type is in `allowed`."""
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise APIError(400, "malformed data URL (expected data:<mime>;base64,<data>)", param)
    fields = [f.strip().lower() for f in header.split(";")]
    if fields[0] not in allowed:
        raise APIError(400, f"unsupported {what} MIME type {brief(fields[0])}; allowed: {sorted(allowed)}", param,
                       code="unsupported_mime")
    if "base64" not in fields[1:]:
        raise APIError(400, "data URLs must be base64-encoded (data:<mime>;base64,...)", param)
    return payload


def b64_bytes(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise VideoError("the video is not valid base64") from None
