"""Video parts ({"type": "video_url"}, as vLLM) in chat requests: data: URLs and allowed local files, frames within
the model's image budget, every bad video a 400 naming its part."""
import base64
import io

import pytest
from fastapi.testclient import TestClient

from tests.clips import write_clip
from vlkit.apps.serve.app import create_app

P = "messages[0].content[0].video_url.url"


def _video_messages(url: str, text: str = "What moves?") -> list:
    return [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def _data_url(data: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "c.mp4", n=12, fps=6).read_bytes()


@pytest.fixture
def client(random_pipe, tmp_path):
    (tmp_path / "media").mkdir()
    with TestClient(create_app(random_pipe, allowed_local_media_path=tmp_path / "media")) as c:
        yield c


def _post(client, messages, **kw):
    return client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "temperature": 0, **kw})


def test_a_data_url_video_is_answered_and_costs_its_frames_tokens(client, random_pipe, clip_bytes):
    r = _post(client, _video_messages(_data_url(clip_bytes)))
    assert r.status_code == 200, r.text
    cfg = random_pipe.model.cfg
    per_frame = random_pipe.model.tokens_per_image(cfg.vision.image_size, cfg.vision.image_size)
    text_only = _post(client, [{"role": "user", "content": "What moves?"}]).json()["usage"]["prompt_tokens"]
    # max_images = 2: the clip is thinned to 2 frames, in one vision block (+2 tokens, "<video>\n" is no text)
    newline = len(random_pipe.tokenizer.encode("\n"))
    assert r.json()["usage"]["prompt_tokens"] == text_only + 2 * per_frame + 2 + newline


def test_video_prompt_fills_one_vision_block_with_its_frames(client, random_pipe, clip_bytes):
    """Every frame is an image input; the clip is one block of exactly their tokens."""
    from vlkit.apps.serve.completions import video_prompt
    from vlkit.video import load_video

    frames = load_video(clip_bytes)[:2]
    ids, pixels = video_prompt(random_pipe, _video_messages("x"), [], [frames])
    assert len(pixels) == 2
    assert ids.count(random_pipe.tokenizer.vision_start_id) == 1
    assert ids.count(random_pipe.model.cfg.image_token_id) == sum(
        random_pipe.model.tokens_per_image(p.shape[1], p.shape[2]) for p in pixels)


def test_local_video_files_follow_the_media_rules(client, clip_bytes, tmp_path):
    (tmp_path / "media" / "c.mp4").write_bytes(clip_bytes)
    (tmp_path / "secret.mp4").write_bytes(clip_bytes)
    assert _post(client, _video_messages(f"file://{tmp_path}/media/c.mp4")).status_code == 200
    r = _post(client, _video_messages(f"file://{tmp_path}/secret.mp4"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed"
    r = _post(client, _video_messages(f"file://{tmp_path}/media/none.mp4"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "video_not_found"


@pytest.mark.parametrize("url, code, words", [
    (_data_url(b"\x00not a video" * 40), "invalid_video", "cannot be decoded"),
    (_data_url(b""), "invalid_video", "empty"),
    ("data:video/mp4;base64,@@@", "invalid_video", "base64"),
    (_data_url(b"abc", "image/png"), "unsupported_mime", "video MIME"),
    ("https://example.com/v.mp4", "unsupported_url_scheme", "video URL scheme"),
])
def test_bad_videos_are_400s_naming_the_part(client, url, code, words):
    r = _post(client, _video_messages(url))
    err = r.json()["error"]
    assert r.status_code == 400 and (err["param"], err["code"]) == (P, code) and words in err["message"], err


def test_too_many_media_and_misplaced_videos(client, clip_bytes):
    url = _data_url(clip_bytes)
    img = {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}
    msgs = [{"role": "user", "content": [img, img, {"type": "video_url", "video_url": {"url": url}}]}]
    r = _post(client, msgs)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
    r = _post(client, [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": [{"type": "video_url", "video_url": {"url": url}}]}])
    assert r.status_code == 400 and "assistant turn" in r.json()["error"]["message"]


def test_openai_client_sends_video_parts(random_pipe, clip_bytes):
    openai = pytest.importorskip("openai")
    from tests.apps.serve import helpers

    with helpers.ServerThread(create_app(random_pipe)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.chat.completions.create(model="vlkit", messages=_video_messages(_data_url(clip_bytes)),
                                             temperature=0, max_tokens=3)
        assert out.choices[0].finish_reason in ("stop", "length") and out.usage.prompt_tokens > 10
        with pytest.raises(openai.BadRequestError, match="the video cannot be decoded") as exc:
            client.chat.completions.create(model="vlkit", messages=_video_messages(_data_url(b"\x00" * 99)),
                                           max_tokens=3)
        assert (exc.value.code, exc.value.param) == ("invalid_video", P)


def test_openai_client_several_images_and_a_video_with_an_image_answer_as_the_pipeline(clip_bytes):
    """Through the real openai client, on a model that takes clips whole (<|video_pad|>): one message with three
    images, and one with a video and an image. Each answer is the pipeline's own greedy answer to the same media,
    and usage counts exactly the prompt's tokens (every image's and the clip's pads) and the answer's."""
    openai = pytest.importorskip("openai")
    from PIL import Image

    from tests.apps.serve import helpers
    from vlkit.infer.generate import generate
    from vlkit.video import load_video, thin

    pipe = helpers.random_pipeline(seed=2, video=True)
    pngs = [helpers.image_png(c, size=(40 + 8 * k, 48), seed=k)
            for k, c in enumerate([(200, 30, 30), (20, 180, 40), (30, 40, 220)])]
    images = [{"type": "image_url", "image_url": {"url": helpers.data_url(b)}} for b in pngs]
    video = {"type": "video_url", "video_url": {"url": _data_url(clip_bytes)}}
    pil = [Image.open(io.BytesIO(b)) for b in pngs]
    frames = thin(load_video(clip_bytes, pipe.config.video), pipe.config.max_images - 1)  # the server's frame share
    cases = [(images + [{"type": "text", "text": "Which is red?"}], pil, []),
             ([video, images[1], {"type": "text", "text": "What moves?"}], pil[1:2], [frames])]
    with helpers.ServerThread(create_app(pipe)) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for content, imgs, clips in cases:
            messages = [{"role": "user", "content": content}]
            out = client.chat.completions.create(model="vlkit", messages=messages, temperature=0, max_tokens=8)
            ids, pixels = pipe.media_prompt(messages, [pipe.image_tensor(im) for im in imgs],
                                            [[pipe.image_tensor(f) for f in clip] for clip in clips])
            pads = ids.count(pipe.tokenizer.image_pad_id), ids.count(pipe.tokenizer.video_pad_id)
            per_image = [pipe.model.tokens_per_image(*p.shape[-2:]) for p in pixels if p.dim() == 3]
            assert pads == (sum(per_image), sum(pipe.model.tokens_per_clip(p.shape[0], *p.shape[-2:])
                                                 for p in pixels if p.dim() == 4))
            assert len(per_image) == len(imgs) and (pads[1] > 0) == bool(clips)
            assert out.usage.prompt_tokens == len(ids)
            answer = generate(pipe.model, [ids], [pixels], pipe.generation_config(max_new_tokens=8),
                              pipe.tokenizer.pad_id)[0]  # stop token excluded
            assert out.choices[0].message.content == pipe.chat(messages, images=imgs, videos=clips, max_new_tokens=8)
            assert out.choices[0].message.content == pipe.tokenizer.decode(answer).strip()
            stopped = out.choices[0].finish_reason == "stop"
            assert stopped == (len(answer) < 8) and out.usage.completion_tokens == len(answer) + stopped
