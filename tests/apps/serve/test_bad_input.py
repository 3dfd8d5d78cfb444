"""Bad input to the server, table-driven: every case gets its 4xx in OpenAI's error shape naming the bad part,
fails only itself, and leaves the server as it was: afterwards /health answers, no queue place is held and a
good request gets the same answer as before the suite."""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

import httpx
import pytest

import vlkit.pipeline
from vlkit.apps.serve.app import create_app

from tests.apps.serve import helpers
from tests.apps.serve.helpers import data_url, png_with_size, vision_messages

GOOD = {"messages": vision_messages(data_url(helpers.image_png())), "temperature": 0, "max_tokens": 40}
URL = "messages[0].content[0].image_url.url"
REMOTE_DEADLINE = 1.0  # seconds for a whole remote image download (the server's remote_timeout)
BODY_LIMIT = 2 * 1024 * 1024
MAX_QUEUE = 8  # fewer than the failing cases: a queue place leaked per failure would lock the server out


@dataclass
class Case:
    name: str
    body: Any = None  # a dict (sent as JSON) or raw str/bytes
    status: int = 400
    param: Optional[str] = None
    code: Optional[str] = None  # checked when given
    method: str = "POST"
    path: str = "/v1/chat/completions"
    headers: dict = field(default_factory=lambda: {"Content-Type": "application/json"})
    chunked: bool = False  # send the body without a Content-Length
    raw: Optional[bytes] = None  # a whole HTTP request written to a socket (what httpx refuses to send)


def with_image(url: str) -> dict:
    return {**GOOD, "messages": vision_messages(url)}


def with_text(text: Any) -> dict:
    return {**GOOD, "messages": [{"role": "user", "content": text}]}


class MediaHandler(BaseHTTPRequestHandler):
    """A remote media host on 127.0.0.1: /slow.png sends one byte every 0.2 s for 30 s (each read is quick, the
    whole fetch is not), /page is HTML, anything else 404."""

    def do_GET(self):
        if self.path == "/slow.png":
            self._start("image/png")
            try:
                for _ in range(150):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the server under test hung up (its deadline passed)
                pass
        elif self.path == "/page":
            self._start("text/html")
            self.wfile.write(b"<html></html>")
        else:
            self.send_error(404)

    def _start(self, mime: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", mime)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def media_host():
    server = ThreadingHTTPServer(("127.0.0.1", 0), MediaHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(box_ckpt, media_dir):
    app = create_app(vlkit.pipeline.load(box_ckpt), allowed_local_media_path=media_dir, allow_remote_media=True,
                     remote_timeout=REMOTE_DEADLINE, max_body_bytes=BODY_LIMIT, max_queue=MAX_QUEUE)
    with helpers.ServerThread(app) as srv:
        yield srv


def media_cases(media_dir, outside, media_host: str) -> list[Case]:
    png = helpers.image_png()
    return [
        # images
        Case("corrupt image bytes", with_image(data_url(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))), param=URL,
             code="invalid_image"),
        Case("truncated image", with_image(data_url(png[: len(png) // 2])), param=URL, code="invalid_image"),
        Case("empty image", with_image("data:image/png;base64,"), param=URL),
        Case("invalid base64", with_image("data:image/png;base64,@@not*base64@@"), param=URL),
        Case("unsupported MIME", with_image(data_url(b"<svg/>", "image/svg+xml")), param=URL, code="unsupported_mime"),
        Case("data URL without base64", with_image("data:image/png,abc"), param=URL),
        Case("decompression bomb", with_image(data_url(png_with_size(20000, 20000))), param=URL),
        Case("too many images", {**GOOD, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(png)}} for _ in range(3)]}]}, param="messages",
             code="too_many_images"),
        Case("unsupported URL scheme", with_image("ftp://example.com/x.png"), param=URL, code="unsupported_url_scheme"),
        Case("empty image URL", with_image(""), param=URL),
        Case("<image> typed with no image", with_text("what is <image>?"), param="messages"),
        # file:// inside --allowed-local-media-path
        Case("file outside the allowed folder", with_image("file:///etc/passwd"), 403, URL, "path_not_allowed"),
        Case("dot-dot escape", with_image(f"file://{media_dir}/../{outside.name}/secret.png"), 403, URL),
        Case("symlink escape", with_image(f"file://{media_dir}/link.png"), 403, URL, "path_not_allowed"),
        Case("missing local file", with_image(f"file://{media_dir}/nope.png"), param=URL, code="image_not_found"),
        Case("NUL byte in a file URL", with_image(f"file://{media_dir}/red.png%00.txt"), param=URL,
             code="image_unreadable"),
        Case("symlink loop", with_image(f"file://{media_dir}/loop-a.png"), param=URL, code="image_unreadable"),
        Case("5,000-character file name", with_image(f"file://{media_dir}/{'a' * 5000}.png"), param=URL,
             code="image_unreadable"),
        Case("a directory", with_image(f"file://{media_dir}"), param=URL, code="image_not_found"),
        Case("file URL with a host", with_image("file://example.com/x.png"), param=URL),
        # http(s):// with --allow-remote-media
        Case("remote server sends 1 byte / 0.2 s", with_image(f"{media_host}/slow.png"), param=URL,
             code="image_fetch_timeout"),
        Case("remote 404", with_image(f"{media_host}/missing.png"), param=URL, code="image_fetch_failed"),
        Case("remote HTML page", with_image(f"{media_host}/page"), param=URL, code="unsupported_mime"),
        Case("remote host refuses", with_image("http://127.0.0.1:9/x.png"), param=URL, code="image_fetch_failed"),
    ]


def request_cases() -> list[Case]:
    return [
        # text and the prompt
        Case("prompt longer than the context", with_text("red " * 600), param="messages",
             code="context_length_exceeded"),
        Case("max_tokens beyond the context", {**GOOD, "max_tokens": 500}, param="max_tokens",
             code="context_length_exceeded"),
        # (raw JSON: a \\ud800 escape json.dumps would not write alone)
        Case("lone surrogate in content", '{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
             param="messages[0].content"),
        Case("lone surrogate in a text part",
             '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff x"}]}]}',
             param="messages[0].content[0].text"),
        Case("lone surrogate in stop", '{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"]}',
             param="stop[0]"),
        # field values and types
        Case("seed 2^64", {**GOOD, "seed": 2 ** 64}, param="seed"),
        Case("seed below -2^63", {**GOOD, "seed": -(2 ** 63) - 1}, param="seed"),
        Case("seed a float", {**GOOD, "seed": 1.5}, param="seed"),
        Case("max_tokens true", {**GOOD, "max_tokens": True}, param="max_tokens"),
        Case("max_tokens a string", {**GOOD, "max_tokens": "40"}, param="max_tokens"),
        Case("stream \"yes\"", {**GOOD, "stream": "yes"}, param="stream"),
        Case("temperature a string", {**GOOD, "temperature": "0"}, param="temperature"),
        Case("temperature out of range", {**GOOD, "temperature": 5}, param="temperature"),
        Case("top_p zero", {**GOOD, "top_p": 0}, param="top_p"),
        Case("n > 1", {**GOOD, "n": 2}, param="n", code="unsupported_value"),
        Case("max_tokens zero", {**GOOD, "max_tokens": 0}, param="max_tokens"),
        Case("too many stop strings", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, param="stop"),
        Case("an empty stop string", {**GOOD, "stop": [""]}, param="stop"),
        Case("stream_options without stream", {**GOOD, "stream_options": {"include_usage": True}},
             param="stream_options"),
        Case("no messages", {**GOOD, "messages": []}, param="messages"),
        Case("messages missing", {"max_tokens": 3}, param="messages"),
        Case("unknown role", {**GOOD, "messages": [{"role": "robot", "content": "hi"}]}, param="messages[0].role"),
        Case("unknown content part", {**GOOD, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
             param="messages[0].content[0]"),
        Case("content a number", with_text(42), param="messages[0].content"),
        # the body and the HTTP layer
        Case("invalid JSON", '{"messages": [', param="body", code="invalid_json"),
        Case("a JSON list", "[1, 2]", param="body"),
        Case("an empty body", b"", param="body"),
        Case("body too large (Content-Length)", {**GOOD, "pad": "x" * (3 * 1024 * 1024)}, 413,
             code="request_too_large"),
        Case("body too large (chunked)", {**GOOD, "pad": "x" * (3 * 1024 * 1024)}, 413, code="request_too_large",
             chunked=True),
        Case("invalid Content-Length", status=400, code="invalid_http_request", raw=(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 12abc\r\n\r\n{}")),
        Case("unknown model id", method="GET", path="/v1/models/gpt-9", status=404, code="model_not_found"),
        Case("unknown route", method="GET", path="/v1/nothing", status=404),
        Case("wrong method", method="GET", path="/v1/chat/completions", status=405),
        Case("image generation on a text model", {"prompt": "a red circle"}, path="/v1/images/generations",
             param="model", code="unsupported_model"),
    ]


def send(client: httpx.Client, url: str, case: Case) -> httpx.Response:
    if case.raw is not None:
        return raw_request(url, case.raw)
    body = case.body
    content = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
    if case.chunked:
        data = content.encode() if isinstance(content, str) else content
        content = (data[i:i + 65536] for i in range(0, len(data), 65536))  # an iterator: no Content-Length
    return client.request(case.method, case.path, content=content, headers=case.headers)


def raw_request(url: str, request: bytes) -> httpx.Response:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


def test_bad_input_suite(server, media_dir, media_host, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(helpers.image_png())
    for name, target in (("link.png", outside / "secret.png"), ("loop-a.png", media_dir / "loop-b.png"),
                         ("loop-b.png", media_dir / "loop-a.png")):
        if not (media_dir / name).is_symlink():
            (media_dir / name).symlink_to(target)
    cases = media_cases(media_dir, outside, media_host) + request_cases()
    engine = server.server.config.app.state.engine
    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.post("/v1/chat/completions", json=GOOD)
        assert before.status_code == 200, before.text
        for case in cases:
            start = time.monotonic()
            r = send(client, server.url, case)
            assert r.status_code == case.status, (case.name, r.status_code, r.text[:300])
            assert r.headers["content-type"] == "application/json", case.name
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], (case.name, err)
            assert err["param"] == case.param, (case.name, err)
            assert case.code is None or err["code"] == case.code, (case.name, err)
            if case.raw is None and not case.chunked and case.status != 413:
                assert r.headers.get("connection") != "close", case.name  # the keep-alive connection survives
            assert time.monotonic() - start < REMOTE_DEADLINE + 5, case.name  # nothing hangs on a slow host
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["waiting"] == 0 and health["running"] == 0
        assert engine._reserved == 0  # every failure gave its queue place back
        after = client.post("/v1/chat/completions", json=GOOD)
        assert after.status_code == 200, after.text
        assert after.json()["choices"] == before.json()["choices"]
        assert after.json()["choices"][0]["message"]["content"] == helpers.BOX_ANSWER
        r = client.post("/v1/chat/completions", json=with_image(f"file://{media_dir}/red.png"))
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == helpers.BOX_ANSWER
    assert len(cases) > 3 * MAX_QUEUE


def test_remote_and_local_media_are_off_by_default(random_pipe):
    from fastapi.testclient import TestClient

    with TestClient(create_app(random_pipe)) as client:
        for url, code in (("http://127.0.0.1:9/x.png", "remote_media_disabled"),
                          ("file:///etc/passwd", "local_media_disabled")):
            r = client.post("/v1/chat/completions", json=with_image(url))
            assert r.status_code == 400 and r.json()["error"]["code"] == code
            assert r.json()["error"]["param"] == URL


def test_null_means_the_default_and_models_have_their_own_route(server):
    seeded = {**GOOD, "seed": 5, "max_tokens": 12}
    seeded.pop("temperature")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        plain = client.post("/v1/chat/completions", json=seeded)
        nulls = client.post("/v1/chat/completions", json={**seeded, "temperature": None, "top_p": None, "n": None,
                                                          "stream": None, "stop": None, "max_completion_tokens": None})
        assert plain.status_code == nulls.status_code == 200, nulls.text
        assert nulls.json()["choices"] == plain.json()["choices"]
        listed = client.get("/v1/models").json()["data"]
        assert client.get("/v1/models/box").json() == listed[0]
