"""`vlkit chat`: streaming REPL with /image, /reset, /quit; a bad image path is reported, the chat goes on."""
import io

import pytest
from PIL import Image

from vlkit.apps.repl import repl

from tests.apps.serve import helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(pipe, lines, image=None):
    feed = iter(lines)
    out = io.StringIO()

    def fake_input(prompt):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    repl(pipe, image=image, max_new_tokens=12, input_fn=fake_input, out=out)
    return out.getvalue()


def test_repl_streams_keeps_history_and_survives_bad_images(random_pipe, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(helpers.image_png((30, 40, 220), seed=2))
    img = Image.open(path)
    def stream(prompt, images=()):
        return "".join(random_pipe.chat_stream(prompt, images=images, max_new_tokens=12))

    first = stream("What?", [img])
    history = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                            {"type": "text", "text": "What?"}]},
               {"role": "assistant", "content": first},
               {"role": "user", "content": "Describe the image."}]
    second = stream(history, [img])
    fresh = stream("Describe the image.")
    assert second != fresh  # the history changes the answer, so the checks below see it

    text = _run(random_pipe, ["/image /no/such.png", f"/image {path}", "What?", "Describe the image.", "/reset",
                              "Describe the image.", "/quit", "never read"])
    assert "error: image file /no/such.png does not exist" in text
    pos = 0
    for answer in (first, second, fresh):  # streamed in order: with the image, with the history, after /reset
        pos = text.index("vlkit> " + answer + "\n", pos) + 1
    assert "(conversation cleared)" in text and "never read" not in text


def test_repl_start_image_argument(random_pipe, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    text = _run(random_pipe, ["/bogus", "What?"], image=str(bad))
    assert "error:" in text and "cannot be decoded" in text
    assert "unknown command '/bogus'" in text
    assert text.endswith("vlkit> " + "".join(random_pipe.chat_stream("What?", max_new_tokens=12)) + "\n\n")
