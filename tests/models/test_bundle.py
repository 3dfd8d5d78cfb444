"""Bundle: a model with its tokenizer, processor and visual tokenizer, saved and loaded whole; load_bundle reads
every directory a registered checkpoint format claims (vlkit here, Hugging Face ones registered by vlkit.hf)."""
import json

import pytest
import torch
from PIL import Image

from vlkit.chat import ChatProcessor
from vlkit.config import VQConfig, tiny_model_config
from vlkit.errors import CheckpointError, UserError
from vlkit.models.bundle import CHECKPOINT_FORMATS, Bundle, load_bundle
from vlkit.models.vlm import VisionLanguageModel
from vlkit.models.vq import VisualTokenizer


def test_save_and_load_round_trip(make_model, tokenizer, tmp_path):
    vq = VisualTokenizer(VQConfig(codebook_size=8, code_dim=4, hidden_size=8, num_layers=0))
    bundle = Bundle(make_model(seed=3), tokenizer, vq=vq)
    assert isinstance(bundle.processor, ChatProcessor) and bundle.path is None
    out = bundle.save_pretrained(tmp_path / "ckpt")
    again = load_bundle(out)
    assert type(again) is Bundle and again.path == out
    assert again.fingerprint() == bundle.fingerprint()
    want = bundle.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in again.model.state_dict().items())
    assert len(again.tokenizer) == len(tokenizer) and again.tokenizer.encode("red circle") == tokenizer.encode("red circle")
    assert again.vq is not None and again.vq.cfg == vq.cfg
    # the model inputs are the same: images and prompts
    pixels = again.image_tensor(Image.new("RGB", (40, 30), (200, 20, 20)))
    assert torch.equal(pixels, bundle.image_tensor(Image.new("RGB", (40, 30), (200, 20, 20))))
    assert again.prompt_ids("what color ?", [pixels]) == bundle.prompt_ids("what color ?", [pixels])


def test_fingerprint_follows_the_weights(make_model, tokenizer):
    a, b = Bundle(make_model(seed=0), tokenizer), Bundle(make_model(seed=1), tokenizer)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == Bundle(make_model(seed=0), tokenizer).fingerprint()


def test_load_keeps_or_casts_the_dtype(make_model, tokenizer, tmp_path):
    out = Bundle(make_model().to(torch.bfloat16), tokenizer).save_pretrained(tmp_path / "c")
    assert next(load_bundle(out).model.parameters()).dtype == torch.bfloat16
    assert next(load_bundle(out, dtype="float32").model.parameters()).dtype == torch.float32
    with pytest.raises(UserError, match="dtype='float8' is unknown"):
        load_bundle(out, dtype="float8")


def test_bad_directories_are_named(tokenizer, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory .* does not exist"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_bundle(tmp_path / "empty")
    # a tokenizer with more tokens than the embedding table has rows would index past it
    torch.manual_seed(0)
    cfg = tiny_model_config("mlp", vocab_size=len(tokenizer) - 1)
    cfg.image_token_id, cfg.pad_token_id = tokenizer.image_pad_id, tokenizer.pad_id
    out = Bundle(VisionLanguageModel(cfg), tokenizer).save_pretrained(tmp_path / "c")
    with pytest.raises(CheckpointError, match=f"the tokenizer has {len(tokenizer)} tokens but the model's embedding "
                                              f"table has {len(tokenizer) - 1} rows"):
        load_bundle(out)


def test_an_hf_directory_needs_a_registered_format(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    monkeypatch.setattr("vlkit.models.bundle.CHECKPOINT_FORMATS", {"vlkit": CHECKPOINT_FORMATS["vlkit"]})
    with pytest.raises(CheckpointError, match=r"no checkpoint format reads its config.json \(formats: \['vlkit'\]"):
        load_bundle(tmp_path)


def test_a_bundle_loads_an_hf_directory_through_the_registry(tmp_path):
    pytest.importorskip("transformers", reason="the HF fixtures need the dev extra (transformers)")
    import vlkit.hf  # noqa: F401  (registers the Hugging Face formats)
    from tests.hf.hf_fixtures import make_llava
    from vlkit.hf.template import HFChatProcessor
    from vlkit.hf.tokenizer import HFTokenizer

    assert {"vlkit", "hf", "vlkit-hf-chat"} <= set(CHECKPOINT_FORMATS)
    _, path = make_llava(tmp_path / "llava")
    bundle = load_bundle(path)
    assert type(bundle) is Bundle and bundle.config.prompt_format == "llava"
    assert isinstance(bundle.tokenizer, HFTokenizer) and isinstance(bundle.processor, HFChatProcessor)
    # saved, it is a vlkit checkpoint that keeps the model's own tokenizer and template ("vlkit-hf-chat")
    again = load_bundle(bundle.save_pretrained(tmp_path / "saved"))
    assert isinstance(again.processor, HFChatProcessor) and again.tokenizer.chat_template == bundle.tokenizer.chat_template
    assert again.fingerprint() == bundle.fingerprint()
    pixels = torch.zeros(3, 32, 32)
    assert again.prompt_ids("what color ?", [pixels]) == bundle.prompt_ids("what color ?", [pixels])
