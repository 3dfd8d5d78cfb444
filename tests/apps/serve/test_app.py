"""The OpenAI-compatible server on loopback: the official client, concurrency, auth, image generation (bad input:
test_bad_input.py)."""
import base64
import io
import json
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from vlkit.pipeline import Pipeline
from vlkit.apps.serve.app import create_app

from tests.apps.serve import helpers
from tests.apps.serve.helpers import data_url, vision_messages


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

    from vlkit.apps.serve.app import serve

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

    from tests.helpers import vluas_pipe

    pipe = vluas_pipe(tokenizer, seed=5)
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
