"""vlkit.infer.chat.ChatBundle: chat, chat_batch and chat_stream agree; the generation settings it builds; what
a model that cannot draw or segment says. (Models that learn to answer, draw and segment are tested in
tests/models/test_vlm.py and test_vluas.py.)"""
import pytest
import torch
from PIL import Image

from vlkit.errors import UserError
from vlkit.pipeline import Pipeline

from tests.helpers import perturb, vluas_pipe

RED = Image.new("RGB", (64, 64), (200, 40, 40))


@pytest.fixture
def pipe(make_model, tokenizer):
    return Pipeline(perturb(make_model("mlp"), seed=5), tokenizer)


def test_streamed_text_equals_batch_text(make_model, tokenizer):
    pipe = Pipeline(perturb(make_model("mlp"), seed=5), tokenizer)
    img = Image.new("RGB", (64, 64), (200, 40, 40))
    streamed = "".join(pipe.chat_stream("What color?", images=[img], max_new_tokens=12))
    assert streamed.strip() == pipe.chat("What color?", images=[img], max_new_tokens=12)


def test_chat_batch_answers_each_prompt_as_chat_does(pipe):
    blue = Image.new("RGB", (64, 64), (30, 40, 220))
    prompts = ["What color?", [{"role": "user", "content": "What shape is it?"}]]
    batch = pipe.chat_batch(prompts, [[RED], [blue]], max_new_tokens=10)
    assert batch == [pipe.chat(prompts[0], [RED], max_new_tokens=10), pipe.chat(prompts[1], [blue], max_new_tokens=10)]
    assert pipe.chat_batch(["What color?"], max_new_tokens=4) == [pipe.chat("What color?", max_new_tokens=4)]


def test_a_clip_is_its_frames_in_one_vision_block_and_the_answer_depends_on_their_order(pipe, tokenizer):
    blue = Image.new("RGB", (64, 64), (30, 40, 220))
    clip = [pipe.image_tensor(RED), pipe.image_tensor(blue)]
    ids, pixels = pipe.media_prompt("<video>\nWhere does it move?", [], [clip])
    n = pipe.model.tokens_per_image(64, 64)
    assert ids.count(tokenizer.image_pad_id) == 2 * n and ids.count(tokenizer.vision_start_id) == 1  # one block
    assert len(pixels) == 2 and pixels[0].float().mean() != pixels[1].float().mean()  # frames in clip order
    forward = pipe.chat("<video>\nWhere does it move?", videos=[[RED, blue]], max_new_tokens=8)
    assert forward == pipe.chat_batch(["<video>\nWhere does it move?"], videos=[[[RED, blue]]], max_new_tokens=8)[0]
    logits = [pipe.model(torch.tensor([ids]), px, return_logits=True)["logits"][0, -1]
              for px in (pixels, pixels[::-1])]
    assert not torch.allclose(*logits)  # the model sees the frames, in order


def test_generation_config_stops_at_the_tokenizer_stop_tokens_and_limits_vluas_to_text(pipe, tokenizer):
    gen = pipe.generation_config(max_new_tokens=3)
    assert gen.max_new_tokens == 3 and gen.stop_token_ids == tuple(tokenizer.stop_ids) and gen.vocab_limit is None
    assert pipe.generation_config(stop_token_ids=(7,)).stop_token_ids == (7,)   # given stops are kept
    vluas = vluas_pipe(tokenizer)
    assert vluas.generation_config().vocab_limit == len(tokenizer)             # text ids only, never codes


def test_image_prompt_ids_open_an_image_in_the_assistant_turn(tokenizer):
    vluas = vluas_pipe(tokenizer)
    ids = vluas.image_prompt_ids("Draw: a red circle")
    assert ids[-2:] == [tokenizer.gen_start_id, tokenizer.vision_start_id]
    assert ids[:-2] == vluas.processor.encode([("user", "Draw: a red circle")], [],
                                              add_generation_prompt=True).input_ids


def test_generation_settings_are_validated(tokenizer):
    pipe = vluas_pipe(tokenizer)
    for bad in ({"cfg_scale": -1}, {"temperature": -0.5}, {"top_p": 0.0}, {"top_k": -2}):
        with pytest.raises(UserError):
            pipe.generate_image("a red circle", **bad)
    with pytest.raises(UserError, match="non-empty"):
        pipe.generate_image("  ")


def test_a_model_without_codes_or_dense_head_says_so(pipe):
    with pytest.raises(UserError, match="cannot generate images"):
        pipe.generate_image("a red circle")
    with pytest.raises(UserError, match="dense prediction"):
        pipe.segment(RED, ["circle"])
