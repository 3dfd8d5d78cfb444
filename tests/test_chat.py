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

