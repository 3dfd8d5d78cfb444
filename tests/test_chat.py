"""vlkit.chat: the ChatML template, labels on assistant turns only, role names and the text-to-image prompt."""
import pytest

from vlkit.chat import (ASSISTANT_ROLES, IGNORE, IMAGE_PROMPT, ROLES, USER_ROLES, ChatFormatError, ChatProcessor,
                        image_prompt_subject, normalize_messages)


def test_labels_cover_assistant_turns_only(tokenizer):
    proc = ChatProcessor(tokenizer)
    sample = {"conversations": [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"},
                                {"from": "human", "value": "Shape?"}, {"from": "gpt", "value": "square"}]}
    enc = proc.encode_sample(sample, [5])
    assert len(enc.input_ids) == len(enc.labels)
    supervised = [t for t in enc.labels if t != IGNORE]
    assert tokenizer.decode(supervised) == "red<|im_end|>square<|im_end|>"
    # the image expands to vision_start + 5 pads + vision_end
    assert enc.input_ids.count(tokenizer.image_pad_id) == 5
    i = enc.input_ids.index(tokenizer.vision_start_id)
    assert enc.input_ids[i + 6] == tokenizer.vision_end_id


def test_placeholder_count_mismatch_is_an_error(tokenizer):
    proc = ChatProcessor(tokenizer)
    sample = {"conversations": [{"from": "human", "value": "<image><image> hi"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(ChatFormatError, match="2 <image> placeholder"):
        proc.encode_sample(sample, [4, 4, 4])
    with pytest.raises(ChatFormatError, match="more <image> placeholders than images"):
        proc.encode_sample(sample, [4])


def test_openai_messages_map_to_the_same_ids(tokenizer):
    proc = ChatProcessor(tokenizer)
    openai = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x"}},
                                           {"type": "text", "text": "What color?"}]}]
    turns, images = normalize_messages(openai)
    assert images == [{"url": "data:x"}]
    a = proc.encode(turns, [3], add_generation_prompt=True).input_ids
    b = proc.encode_prompt("What color?", 1, [3])
    assert a == b
    with pytest.raises(ChatFormatError, match="role"):
        normalize_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(ChatFormatError, match="type"):
        normalize_messages([{"role": "user", "content": [{"type": "audio"}]}])


def test_role_names_map_to_chatml_roles():
    assert USER_ROLES == ("human", "user") and ASSISTANT_ROLES == ("gpt", "assistant")
    turns, _ = normalize_messages([{"from": "human", "value": "a"}, {"role": "assistant", "content": "b"}])
    assert turns == [("user", "a"), ("assistant", "b")]
    with pytest.raises(ChatFormatError, match=r"message 0 has role 'bot'; allowed: " + str(sorted(ROLES)).replace("[", r"\[")):
        normalize_messages([{"role": "bot", "content": "x"}])


def test_the_image_prompt_reads_back():
    text = IMAGE_PROMPT.format("a red circle")
    assert text == "Draw: a red circle" and image_prompt_subject(text) == "a red circle"
    assert image_prompt_subject("What is drawn?") is None



# -- videos ------------------------------------------------------------------------------------------------------
def _conv(user: str, answer: str = "ok") -> dict:
    return {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]}


def test_a_video_is_one_block_of_its_tokens_between_images_in_placeholder_order(tokenizer):
    proc = ChatProcessor(tokenizer)
    enc = proc.encode_sample(_conv("<image> then <video> then <image>"), [2, 3], tokens_per_video=[7])
    t = tokenizer
    starts = [i for i, x in enumerate(enc.input_ids) if x == t.vision_start_id]
    ends = [i for i, x in enumerate(enc.input_ids) if x == t.vision_end_id]
    assert [e - s - 1 for s, e in zip(starts, ends)] == [2, 7, 3]  # one block per placeholder, in text order
    assert all(x == proc.video_slot_id for x in enc.input_ids[starts[1] + 1:ends[1]])
    assert (enc.num_images, enc.num_videos) == (2, 1)
    assert all(enc.labels[i] == IGNORE for i in range(starts[1], ends[1] + 1))  # a video in a user turn: no loss


def test_video_slots_are_the_models_video_pads_or_image_pads_without_one(tokenizer):
    """With the model's video token a clip fills <|video_pad|> slots whole; without one (checkpoints from before
    it) its frames fill image pads, as they did."""
    proc = ChatProcessor(tokenizer, tokenizer.video_pad_id)
    assert proc.video_slot_id == tokenizer.video_pad_id != tokenizer.image_pad_id and proc.video_clips
    enc = proc.encode_sample(_conv("<video> and <image>"), [2], tokens_per_video=[5])
    assert enc.input_ids.count(tokenizer.video_pad_id) == 5 and enc.input_ids.count(tokenizer.image_pad_id) == 2
    old = ChatProcessor(tokenizer)
    assert old.video_slot_id == tokenizer.image_pad_id and not old.video_clips
    assert old.encode_sample(_conv("<video> and <image>"), [2], tokens_per_video=[5]).input_ids.count(
        tokenizer.image_pad_id) == 7


def test_video_counts_must_match(tokenizer):
    proc = ChatProcessor(tokenizer)
    with pytest.raises(ChatFormatError, match="1 <video> placeholder.* but 2 video"):
        proc.encode_sample(_conv("<video> what happens?"), [], tokens_per_video=[4, 4])
    with pytest.raises(ChatFormatError, match="more <video> placeholders than videos"):
        proc.encode_sample(_conv("<video><video>"), [], tokens_per_video=[4])
    with pytest.raises(ChatFormatError, match=r"more <video> placeholders than videos \(0\)"):
        proc.encode_sample(_conv("what is <video>?"), [])  # the placeholder is not text
    with pytest.raises(ChatFormatError, match="assistant turn"):
        proc.encode_sample(_conv("make a clip", "<video>"), [], tokens_per_video=[4])


def test_videos_without_placeholders_go_first_after_images(tokenizer):
    from vlkit.chat import media_order

    proc = ChatProcessor(tokenizer)
    a = proc.encode_sample(_conv("What happens?"), [2], tokens_per_video=[3])
    b = proc.encode_sample(_conv("<image>\n<video>\nWhat happens?"), [2], tokens_per_video=[3])
    assert a.input_ids == b.input_ids
    assert media_order([("user", "x")], 1, 2) == ["image", "video", "video"]
    assert media_order([("user", "<video> a <image> <video>")], 1, 2) == ["video", "image", "video"]


def test_openai_video_parts(tokenizer):
    msgs = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:v"}},
                                         {"type": "text", "text": "What moves?"}]}]
    with pytest.raises(ChatFormatError, match="allowed: text, image_url$"):
        normalize_messages(msgs)  # a caller that cannot take videos
    videos = []
    turns, images = normalize_messages(msgs, videos=videos)
    assert images == [] and videos == [{"url": "data:v"}] and turns == [("user", "<video>\nWhat moves?")]


def test_media_in_sequence_order():
    from vlkit.chat import in_sequence_order

    turns = [("user", "<video> a <image> b <video>")]
    assert in_sequence_order(turns, ["i"], [["a1", "a2"], ["b1"]]) == ["a1", "a2", "i", "b1"]
    assert in_sequence_order([("user", "x")], ["i"], [["a1"]]) == ["i", "a1"]  # no placeholders: images first
