"""OpenAI-shaped errors: pydantic locations -> a `param` path, validation errors -> one 400 naming the field."""
import json

from vlkit.apps.serve.errors import APIError, error_body, param_from_loc, validation_error


def test_param_drops_union_labels_and_discriminator_tags():
    loc = ("body", "messages", 0, "content", "list[tagged-union[TextPart,ImagePart]]", 1, "image_url", "image_url",
           "url")
    assert param_from_loc(loc) == "messages[0].content[1].image_url.url"
    assert param_from_loc(("body", "temperature")) == "temperature"
    assert param_from_loc(("body",)) == "body"


def test_invalid_json_and_bad_unicode_are_named():
    e = validation_error([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error",
                           "ctx": {"error": "Expecting value"}}])
    assert (e.status, e.param, e.code) == (400, "body", "invalid_json") and "Expecting value" in e.message
    e = validation_error([{"type": "string_unicode", "loc": ("body", "messages", 0, "content", "str")}])
    assert e.param == "messages[0].content" and "surrogate" in e.message


def test_the_deepest_location_wins_and_a_failed_union_lists_every_branch():
    e = validation_error([{"type": "missing", "loc": ("body", "messages"), "msg": "Field required"},
                          {"type": "int_type", "loc": ("body", "messages", 0, "n"), "msg": "bad int"}])
    assert e.param == "messages[0].n" and e.message == "invalid value for messages[0].n: bad int"
    e = validation_error([{"loc": ("body", "stop", "str"), "msg": "not a string"},
                          {"loc": ("body", "stop", "list[str]"), "msg": "not a list"}])
    assert e.param == "stop" and e.message == "invalid value for stop: not a string; or not a list"
    assert validation_error([]).message == "invalid request"


def test_an_error_response_is_openai_shaped_whatever_its_text():
    r = APIError(404, "no model \ud800 here", param="model", type_="not_found_error", code="model_not_found").response()
    assert r.status_code == 404 and r.media_type == "application/json"
    assert json.loads(r.body) == error_body("no model \ud800 here", "not_found_error", "model", "model_not_found")
