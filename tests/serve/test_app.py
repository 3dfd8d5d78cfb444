"""The OpenAI-compatible server on loopback: the official client, bad input, concurrency, auth, limits."""
import base64
import io
import json
import struct
import threading
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from vlkit.pipeline import Pipeline
from vlkit.serve.app import create_app

from tests.serve import helpers


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def vision_messages(url: str, text: str = helpers.BOX_QUESTION) -> list:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


GOOD = {"messages": vision_messages(data_url(helpers.image_png())), "temperature": 0, "max_tokens": 40}


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims width x height (a decompression bomb's header)."""
    png = bytearray(helpers.image_png())
    ihdr = png[12:29]  # type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    png[12:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(png)


def test_openai_client_stream_equals_non_stream(box_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=box_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == ["box"]
    messages = vision_messages(data_url(helpers.image_png((40, 200, 60), seed=3)))
    full = client.chat.completions.create(model="box", messages=messages, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert text == helpers.BOX_ANSWER
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.model_extra["boxes"] == [{"phrase": "the red circle", "box": [120, 45, 300, 999]}]
    # usage counts the image tokens: more prompt tokens than the text alone has
    assert full.usage.prompt_tokens > 64 + len(helpers.tokenizer().encode(helpers.BOX_QUESTION))
    assert full.usage.completion_tokens == len(helpers.tokenizer().encode(helpers.BOX_ANSWER)) + 1  # + <|im_end|>

    chunks = list(client.chat.completions.create(model="box", messages=messages, temperature=0, max_tokens=40,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed in pieces
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def _bad_cases(media_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.png").write_bytes(helpers.image_png())
    link = media_dir / "link.png"
    if not link.exists():
        link.symlink_to(outside / "secret.png")
    png = helpers.image_png()
    url_param = "messages[0].content[0].image_url.url"

    def img(url):
        return {**GOOD, "messages": vision_messages(url)}

    return [
        # (name, body (dict or raw str/bytes), status, param)
        ("corrupt image bytes", img(data_url(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))), 400, url_param),
        ("truncated image", img(data_url(png[: len(png) // 2])), 400, url_param),
        ("empty image", img("data:image/png;base64,"), 400, url_param),
        ("invalid base64", img("data:image/png;base64,@@not*base64@@"), 400, url_param),
        ("unsupported MIME", img(data_url(b"<svg/>", "image/svg+xml")), 400, url_param),
        ("decompression bomb", img(data_url(png_with_size(20000, 20000))), 400, url_param),
        ("too many images", {**GOOD, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(png)}} for _ in range(3)]}]}, 400, "messages"),
        ("prompt longer than the context", {**GOOD, "messages": [{"role": "user", "content": "red " * 600}]},
         400, "messages"),
        ("max_tokens beyond the context", {**GOOD, "max_tokens": 500}, 400, "max_tokens"),
        ("unsupported URL scheme", img("ftp://example.com/x.png"), 400, url_param),
        ("remote media disabled", img("http://127.0.0.1:9/x.png"), 400, url_param),
        ("file outside the allowed folder", img("file:///etc/passwd"), 403, url_param),
        ("dot-dot escape", img(f"file://{media_dir}/../{outside.name}/secret.png"), 403, url_param),
        ("symlink escape", img(f"file://{link}"), 403, url_param),
        ("missing local file", img(f"file://{media_dir}/nope.png"), 400, url_param),
        ("invalid JSON", '{"messages": [', 400, "body"),
        ("temperature out of range", {**GOOD, "temperature": 5}, 400, "temperature"),
        ("top_p zero", {**GOOD, "top_p": 0}, 400, "top_p"),
        ("n > 1", {**GOOD, "n": 2}, 400, "n"),
        ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ("too many stop strings", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("no messages", {**GOOD, "messages": []}, 400, "messages"),
        ("unknown role", {**GOOD, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
        ("unknown content part", {**GOOD, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
         400, "messages[0].content[0]"),
        ("body too large", {**GOOD, "pad": "x" * (3 * 1024 * 1024)}, 413, None),
    ]


def test_bad_inputs_get_4xx_naming_the_parameter(box_server, media_dir, tmp_path_factory):
    cases = _bad_cases(media_dir, tmp_path_factory)
    assert len(cases) >= 15
    with httpx.Client(base_url=box_server.url, timeout=60) as client:
        for name, body, status, param in cases:
            content = body if isinstance(body, (str, bytes)) else json.dumps(body)
            r = client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}, name
            assert err["message"], name
            assert err["param"] == param, (name, err)
        # the server still answers a good request (and a local file inside the allowed folder works)
        r = client.post("/v1/chat/completions", json=img_request(f"file://{media_dir}/red.png"))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == helpers.BOX_ANSWER
        assert client.get("/health").json()["status"] == "ok"
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def img_request(url):
    return {**GOOD, "messages": vision_messages(url)}


@pytest.fixture(scope="module")
def random_server(random_pipe):
    with helpers.ServerThread(create_app(random_pipe, max_batch_size=16)) as srv:
        yield srv


def _varied_request(k: int) -> dict:
    questions = ["Describe the image.", "What color is the circle?", "How many objects are there?", "What?"]
    content = [{"type": "text", "text": questions[k % 4] + " " * (k % 3)}]
    if k % 4 != 3:
        colors = [(200, 30, 30), (20, 180, 40), (30, 40, 220)]
        content.insert(0, {"type": "image_url", "image_url": {
            "url": data_url(helpers.image_png(colors[k % 3], size=(32 + 4 * k, 40), seed=k))}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 6 + k}


def test_16_concurrent_requests_equal_the_answers_served_alone(random_server):
    engine = random_server.server.config.app.state.engine
    with httpx.Client(base_url=random_server.url, timeout=120) as client:
        alone = [client.post("/v1/chat/completions", json=_varied_request(k)).json() for k in range(16)]
    assert engine.max_rows_seen == 1
    results = [None] * 16

    def run(k):
        with httpx.Client(base_url=random_server.url, timeout=120) as c:
            results[k] = c.post("/v1/chat/completions", json=_varied_request(k))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(r is not None and r.status_code == 200 for r in results)
    got = [r.json()["choices"][0]["message"]["content"] for r in results]
    want = [a["choices"][0]["message"]["content"] for a in alone]
    assert got == want
    assert [r.json()["usage"] for r in results] == [a["usage"] for a in alone]
    assert len(set(want)) > 8  # varied answers: a mix-up between rows would be caught
    assert engine.max_rows_seen > 1  # the concurrent requests shared decode batches


def test_mid_stream_error_is_an_sse_event_then_done(random_pipe):
    app = create_app(random_pipe)
    engine = app.state.engine
    with helpers.ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        original = engine._decode_step
        calls = {"n": 0}

        def failing():
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("simulated device failure")
            original()

        engine._decode_step = failing
        with client.stream("POST", "/v1/chat/completions", json={**_varied_request(0), "stream": True}) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        engine._decode_step = original
        assert events[-1] == "[DONE]"
        payloads = [json.loads(e) for e in events[:-1]]
        assert "simulated device failure" in payloads[-1]["error"]["message"]
        assert not any(p.get("choices") and p["choices"][0]["finish_reason"] for p in payloads)
        # the server keeps serving
        r = client.post("/v1/chat/completions", json=_varied_request(1))
        assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_key_and_loopback_default(random_pipe):
    from fastapi.testclient import TestClient

    with TestClient(create_app(random_pipe, api_key="s3cret")) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = client.post("/v1/chat/completions", json=_varied_request(3), headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/v1/models").status_code == 401
        assert client.get("/health").status_code == 200
        r = client.post("/v1/chat/completions", json=_varied_request(3), headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
    import inspect

    from vlkit.serve.app import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"


class _ImagePipe(Pipeline):
    """A pipeline whose (stub) image generator paints the prompt's length: tests the endpoint's plumbing."""

    @property
    def can_generate_images(self) -> bool:
        return True

    def generate_image(self, prompt: str, seed=None):
        return Image.new("RGB", (16, 16), (len(prompt) % 256, seed or 0, 0))


def test_image_generation_endpoint(random_pipe):
    from fastapi.testclient import TestClient

    with TestClient(create_app(random_pipe)) as client:
        r = client.post("/v1/images/generations", json={"prompt": "a red circle"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    with TestClient(create_app(_ImagePipe(random_pipe.model, random_pipe.tokenizer))) as client:
        assert client.get("/v1/models").json()["data"][0]["capabilities"]["image_generation"] is True
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "seed": 9})
        assert r.status_code == 200, r.text
        img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
        assert img.format == "PNG" and img.getpixel((0, 0)) == (12, 9, 0)
        r = client.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
        r = client.post("/v1/images/generations", json={"prompt": ""})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_image_generation_endpoint_serves_a_real_vluas_model(tokenizer):
    from fastapi.testclient import TestClient

    from tests.models.test_vluas import _pipe

    pipe = _pipe(tokenizer, seed=5)
    with TestClient(create_app(pipe)) as client:
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "seed": 3, "guidance_scale": 2.0,
                                                        "n": 2})
        assert r.status_code == 200, r.text
        images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in r.json()["data"]]
        assert [im.size for im in images] == [(64, 64)] * 2
        # the server's image is the pipeline's image for the same settings (seed + i for the i-th of n)
        for i, im in enumerate(images):
            want = pipe.generate_image("a red circle", cfg_scale=2.0, seed=3 + i)
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(want))
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "size": "512x512"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "size"
        r = client.post("/v1/images/generations", json={"prompt": "a red circle", "guidance_scale": -1})
        assert r.status_code == 400
        assert client.get("/health").status_code == 200
