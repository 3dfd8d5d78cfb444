"""vlkit.tokenizer: special and grounding tokens, files, round trips."""
import pytest

from vlkit.errors import CheckpointError
from vlkit.tokenizer import CONTROL_TOKENS, GROUNDING_TOKENS, RESERVED_TOKENS, SPECIAL_TOKENS, Tokenizer


def test_control_tokens_in_text_are_plain_characters_and_grounding_tags_single_ids(tokenizer):
    assert len({tokenizer.token_id(t) for t in SPECIAL_TOKENS}) == len(SPECIAL_TOKENS)
    assert tokenizer.special_ids() == {tokenizer.token_id(t) for t in CONTROL_TOKENS + RESERVED_TOKENS}
    for tok in CONTROL_TOKENS + RESERVED_TOKENS:
        ids = tokenizer.encode(tok)
        assert len(ids) > 1 and not set(ids) & tokenizer.special_ids(), tok
        assert tokenizer.decode(ids) == tok
    for tok in GROUNDING_TOKENS:
        assert tokenizer.encode(tok) == [tokenizer.token_id(tok)]
    text = "<ref>the red circle</ref><box>(12,340),(999,0)</box>"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    # decoding with skip_special drops control tokens only: the grounding text stays
    ids = [tokenizer.im_start_id] + tokenizer.encode(text) + [tokenizer.im_end_id]
    assert tokenizer.decode(ids, skip_special=True) == text


def test_a_pickled_tokenizer_still_splits_special_tokens_in_text(tokenizer):
    import pickle

    again = pickle.loads(pickle.dumps(tokenizer))  # how DataLoader workers and process pools receive it
    assert again.encode("<|im_start|>system") == tokenizer.encode("<|im_start|>system")
    assert tokenizer.im_start_id not in again.encode("<|im_start|>")


def test_tokenizer_files_with_special_grounding_tags_load_with_the_same_ids(tokenizer, tmp_path):
    """tokenizer.json files written before grounding tags were text-level have them special: same ids, and
    text keeps them as single ids."""
    import json

    data = json.loads(tokenizer.hf.to_str())
    for t in data["added_tokens"]:
        t["special"] = True
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Tokenizer.from_file(tmp_path / "old.json")
    text = "Where is it? <ref>the blue star</ref><box>(120,45),(300,999)</box> <|im_start|>"
    assert old.encode(text) == tokenizer.encode(text)
    assert [old.token_id(t) for t in SPECIAL_TOKENS] == [tokenizer.token_id(t) for t in SPECIAL_TOKENS]


def test_digits_are_split(tokenizer):
    ids = tokenizer.encode("1000")
    assert len(ids) == 4


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "tokenizer.json")
    again = Tokenizer.from_file(tmp_path / "tokenizer.json")
    assert again.encode("What color is it? 42") == tokenizer.encode("What color is it? 42")
    with pytest.raises(CheckpointError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Tokenizer.from_file(tmp_path / "bad.json")


def test_video_pad_follows_the_trained_vocabulary_and_files_without_it_keep_their_ids(tokenizer, tmp_path):
    """A trained tokenizer gets <|video_pad|> after its BPE (the last id; the BPE vocabulary is the size asked for,
    so no merge was given up for it); a tokenizer file written before it (the same file without the token) loads
    with the same ids for everything else and no video pad; text writing the token stays text."""
    import json

    from vlkit.tokenizer import VIDEO_PAD

    assert tokenizer.video_pad_id == len(tokenizer) - 1 == tokenizer.token_id(VIDEO_PAD)
    assert tokenizer.hf.get_vocab_size(with_added_tokens=False) == 320  # the BPE's own size, as before
    ids = tokenizer.encode("a <|video_pad|> b")
    assert tokenizer.video_pad_id not in ids and tokenizer.decode(ids) == "a <|video_pad|> b"
    data = json.loads(tokenizer.hf.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != VIDEO_PAD]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Tokenizer.from_file(tmp_path / "old.json")
    assert old.video_pad_id is None and old.hf.token_to_id(VIDEO_PAD) is None and len(old) == len(tokenizer) - 1
    assert [old.token_id(t) for t in SPECIAL_TOKENS] == [tokenizer.token_id(t) for t in SPECIAL_TOKENS]
    text = "What color is the circle? <box>(1,2),(3,4)</box> 42"
    assert old.encode(text) == tokenizer.encode(text)
    Tokenizer.from_file(tmp_path / "old.json").save(tmp_path / "again.json")  # saving does not add it either
    assert Tokenizer.from_file(tmp_path / "again.json").video_pad_id is None
