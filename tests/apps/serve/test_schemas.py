"""vlkit.apps.serve.schemas: the request models on their own (the HTTP answers to bad bodies are tested in
test_bad_input.py and test_schema_fuzz.py)."""
import pytest
from pydantic import ValidationError

from vlkit.apps.serve.schemas import ChatCompletionRequest, ImageGenerationRequest, ImagePart, TextPart
from vlkit.config import SEED_RANGE

USER = {"role": "user", "content": "hi"}


def _errors(model, body) -> list[tuple]:
    """(location, error type) of each error; a value checked against a union gets one per member."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return [(err["loc"], err["type"]) for err in info.value.errors()]


def _error(model, body) -> tuple:
    (err,) = _errors(model, body)
    return err


def test_null_means_the_default_and_unknown_fields_are_ignored():
    req = ChatCompletionRequest.model_validate({"messages": [USER], "temperature": None, "top_p": None, "n": None,
                                                "stream": None, "logprobs": True, "user": "u1"})
    assert (req.temperature, req.top_p, req.n, req.stream) == (1.0, 1.0, 1, False)
    assert not hasattr(req, "logprobs") and req.messages[0].content == "hi"


def test_content_parts_are_told_apart_by_their_type():
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": "data:,x"}}]}]})
    text, image = req.messages[0].content
    assert isinstance(text, TextPart) and isinstance(image, ImagePart) and image.image_url.url == "data:,x"
    errors = _errors(ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "audio"}]}]})
    assert any(loc[:3] == ("messages", 0, "content") and loc[3].startswith("list[tagged-union[TextPart,ImagePart")
               and loc[4] == 0 and kind == "union_tag_invalid" for loc, kind in errors)


@pytest.mark.parametrize("field,value,loc,kind", [
    ("max_tokens", True, ("max_tokens",), "int_type"),                # strict: a boolean is no integer
    ("stream", "yes", ("stream",), "bool_type"),
    ("max_tokens", 0, ("max_tokens",), "greater_than_equal"),
    ("temperature", 2.5, ("temperature",), "less_than_equal"),
    ("top_p", 0.0, ("top_p",), "greater_than"),
    ("seed", SEED_RANGE[1] + 1, ("seed",), "less_than_equal"),
    ("messages", [], ("messages",), "too_short"),
    ("messages", [{"role": "robot", "content": "x"}], ("messages", 0, "role"), "literal_error"),
])
def test_bad_chat_values_are_named(field, value, loc, kind):
    assert _error(ChatCompletionRequest, {"messages": [USER], field: value}) == (loc, kind)


def test_a_lone_surrogate_is_refused():
    errors = _errors(ChatCompletionRequest, {"messages": [{"role": "user", "content": "a\ud800b"}]})
    assert (("messages", 0, "content", "constrained-str"), "string_unicode") in errors
    assert ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "a\U0001F600b"}]})


def test_image_request_bounds():
    req = ImageGenerationRequest.model_validate({"prompt": "a red circle", "seed": SEED_RANGE[1] - 3})
    assert (req.n, req.response_format, req.guidance_scale) == (1, "b64_json", None)
    assert _error(ImageGenerationRequest, {"prompt": "x", "seed": SEED_RANGE[1] - 2}) == (("seed",), "less_than_equal")
    assert _error(ImageGenerationRequest, {"prompt": "x", "n": 5}) == (("n",), "less_than_equal")
    assert _error(ImageGenerationRequest, {"prompt": ""}) == (("prompt",), "string_too_short")
    assert _error(ImageGenerationRequest, {"prompt": "x", "response_format": "url"}) == \
        (("response_format",), "literal_error")
