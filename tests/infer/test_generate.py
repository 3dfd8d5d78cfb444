"""vlkit.infer.generate: left padding, settings, stop tokens and rows leaving the batch, seeds, text streaming."""
import pytest
import torch

from vlkit.errors import UserError
from vlkit.infer.generate import (GenerationConfig, ImageGenerationConfig, TextStreamer, generate, generate_codes,
                                  generate_stream, left_pad)


@pytest.fixture
def model(make_model):
    m = make_model("mlp")
    with torch.no_grad():  # random weights a little off their init: answers that differ between prompts
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0},
                                 {"seed": 2 ** 64}])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(UserError, match=next(iter(bad))):
        GenerationConfig(**bad).validate()


def test_a_row_that_stops_leaves_and_the_others_go_on(model, tokenizer):
    prompts = [tokenizer.encode("What color is the circle?"), tokenizer.encode("How many?")]
    free = generate(model, prompts, [[], []], GenerationConfig(max_new_tokens=6), tokenizer.pad_id)
    assert all(len(r) == 6 for r in free)
    stop = free[0][0]  # row 0's first token: it stops at once (the stop token is yielded, then the row leaves)
    gen = GenerationConfig(max_new_tokens=6, stop_token_ids=(stop,))
    events = list(generate_stream(model, prompts, [[], []], gen, tokenizer.pad_id))
    assert [t for r, t in events if r == 0] == [stop]
    row1 = [t for r, t in events if r == 1]
    cut = row1.index(stop) + 1 if stop in row1 else len(row1)
    assert row1 == free[1][:cut]
    assert generate(model, prompts, [[], []], gen, tokenizer.pad_id) == [[], [t for t in row1 if t != stop]]


def test_seeds_and_vocab_limit(model, tokenizer):
    prompt = [tokenizer.encode("Describe the image.")]
    gen = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=11)
    a, b = (generate(model, prompt, [[]], gen, tokenizer.pad_id) for _ in range(2))
    assert a == b
    limited = GenerationConfig(max_new_tokens=8, temperature=1.5, seed=11, vocab_limit=50)
    assert max(generate(model, prompt, [[]], limited, tokenizer.pad_id)[0]) < 50


def test_image_generation_needs_a_code_model(model):
    with pytest.raises(UserError, match="visual codes"):
        generate_codes(model, [1, 2], [1], 4, ImageGenerationConfig(), pad_id=0)
    with pytest.raises(UserError, match="cfg_scale"):
        ImageGenerationConfig(cfg_scale=-1).validate()


def test_text_streamer_holds_back_a_split_character():
    s = TextStreamer(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    e_acute = "é".encode()
    assert s.push(ord("a")) == "a"
    assert s.push(e_acute[0]) == "" and s.push(e_acute[1]) == "é"
    s.push(e_acute[0])
    assert s.flush() == "\ufffd"
