"""The tokenizer of an HF model, used as it shipped: stop ids from every place transformers reads them, the pad
token, the chat template; written back as it shipped; a tokenizer folder works wherever vlkit takes a
tokenizer.json."""
from __future__ import annotations

import json

import pytest

from tests.hf.hf_fixtures import LLAVA_TEMPLATE, make_llava, write_tokenizer
from vlkit.errors import CheckpointError
from vlkit.hf.tokenizer import HFTokenizer, chat_tools, load_hf_tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<end>"]


def _folder(tmp_path, **tokenizer_config):
    ids = write_tokenizer(tmp_path, SPECIALS)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": LLAVA_TEMPLATE, **tokenizer_config}))
    return ids


def test_stop_ids_come_from_generation_config_config_and_eos_token(tmp_path):
    ids = _folder(tmp_path, pad_token="<pad>")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [ids["<end>"]]}))
    tok = load_hf_tokenizer(tmp_path, {"text_config": {"eos_token_id": ids["</s>"]}}, ids["<image>"])
    assert isinstance(tok, HFTokenizer)
    assert tok.stop_ids == [ids["<end>"], ids["</s>"]] and tok.im_end_id == ids["<end>"]
    assert tok.pad_id == ids["<pad>"] and tok.image_token == "<image>" and tok.eos_token == "</s>"
    assert tok.im_start_id is None and tok.gen_start_id is None  # no vlkit tokens are added


def test_pad_falls_back_to_the_first_stop_id(tmp_path):
    ids = _folder(tmp_path)
    assert load_hf_tokenizer(tmp_path, {}, ids["<image>"]).pad_id == ids["</s>"]


def test_missing_pieces_are_named(tmp_path):
    ids = _folder(tmp_path)
    with pytest.raises(CheckpointError, match="image token id 999 is not in the tokenizer"):
        load_hf_tokenizer(tmp_path, {}, 999)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAVA_TEMPLATE}))
    with pytest.raises(CheckpointError, match="names no eos token"):
        load_hf_tokenizer(tmp_path, {}, ids["<image>"])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(CheckpointError, match="has no chat template"):
        load_hf_tokenizer(tmp_path, {}, ids["<image>"])
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        load_hf_tokenizer(tmp_path, {}, ids["<image>"])


def test_save_pretrained_writes_it_back_as_it_shipped(tmp_path):
    (tmp_path / "a").mkdir()
    ids = _folder(tmp_path / "a", pad_token="<pad>", model_max_length=77)
    tok = load_hf_tokenizer(tmp_path / "a", {"eos_token_id": ids["</s>"]}, ids["<image>"])
    (tmp_path / "b").mkdir()
    tok.save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["pad_token"] == "<pad>" and config["eos_token"] == "</s>"
    assert (tmp_path / "b" / "chat_template.jinja").read_text() == LLAVA_TEMPLATE
    again = load_hf_tokenizer(tmp_path / "b", {}, ids["<image>"])
    assert again.stop_ids == tok.stop_ids and again.pad_id == tok.pad_id and again.chat_template == tok.chat_template
    assert again.hf.encode("red circle").ids == tok.hf.encode("red circle").ids


def test_chat_tools_pair_the_tokenizer_with_its_prompt_format(tmp_path):
    from vlkit.config import tiny_model_config

    ids = _folder(tmp_path)
    cfg = tiny_model_config()
    cfg.image_token_id, cfg.prompt_format = ids["<image>"], "llava"
    tok, processor = chat_tools(tmp_path, {"eos_token_id": ids["</s>"]}, cfg)
    assert processor.tok is tok and processor.spec.expand(3) == "<image>" * 3


def test_tokenizer_path_may_be_an_hf_tokenizer_folder(tmp_path):
    pytest.importorskip("transformers", reason="the HF fixtures need the dev extra (transformers)")
    from vlkit.tokenizer import IMAGE_PAD, Tokenizer

    _, path = make_llava(tmp_path / "llava")
    tok = Tokenizer.from_file(path)  # the folder, as HF users name tokenizers
    assert tok.hf.token_to_id("circle") is not None and tok.token_id(IMAGE_PAD) >= 97
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        Tokenizer.from_file(tmp_path)
