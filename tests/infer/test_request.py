"""vlkit.infer.request: how a request's tokens become the text it emits (stop strings, held-back text)."""
import pytest

from vlkit.infer.generate import GenerationConfig
from vlkit.infer.request import Answer, EngineEvent, RequestState, SamplingParams


def _state(stop=(), stream=True):
    return RequestState([1], [], SamplingParams(max_new_tokens=8, stop=stop), GenerationConfig(), print, stream)


def decode(ids):
    return "".join(chr(i) for i in ids)


def test_a_stop_string_cuts_the_answer_and_its_prefix_is_held_back():
    seq = _state(stop=("END",))
    out = []
    for ch in "hi EN":
        seq.tokens.append(ord(ch))
        out.append(seq.take_text(decode, final=False))
    assert "".join(p for p, _ in out) == "hi " and not any(hit for _, hit in out)  # "EN" may grow into "END"
    seq.tokens.append(ord("D"))
    assert seq.take_text(decode, final=False) == ("", True)
    assert seq.take_text(decode, final=True) == ("", True)  # nothing after the stop string is ever sent


def test_held_back_prefix_is_sent_when_it_does_not_become_a_stop():
    seq = _state(stop=("END",))
    seq.tokens += [ord(c) for c in "xEN"]
    assert seq.take_text(decode, final=False) == ("x", False)
    seq.tokens.append(ord("!"))
    assert seq.take_text(decode, final=False) == ("EN!", False)


def test_split_characters_wait_and_non_streaming_requests_get_text_at_the_end():
    seq = _state()
    seq.tokens.append(0xFFFD)  # decode gives the replacement character: a split multi-byte character
    assert seq.take_text(decode, final=False) == ("", False)
    quiet = _state(stream=False)
    quiet.tokens += [ord("o"), ord("k")]
    assert quiet.take_text(decode, final=False) == ("", False)
    assert quiet.take_text(decode, final=True) == ("ok", False)


def test_answer_joins_events_and_raises_on_an_error_event():
    ans = Answer()
    assert ans.add(EngineEvent(text="a")) is None
    done = ans.add(EngineEvent(text="b", token_ids=[1, 2], finish_reason="length", prompt_tokens=3,
                               completion_tokens=2))
    assert (done.text, done.token_ids, done.finish_reason) == ("ab", [1, 2], "length")
    with pytest.raises(RuntimeError, match="boom"):
        Answer().add(EngineEvent(finish_reason="error", error="boom"))
