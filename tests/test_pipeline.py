"""vlkit.pipeline: `load` gives a Pipeline (whatever wrote the checkpoint) in the dtype asked for, and
`Pipeline.export` writes through vlkit.hf. (Checkpoint round trips: tests/models/test_vlm.py; exports:
tests/hf/test_export.py.)"""
import pytest
import torch

from vlkit.hf import ExportError
from vlkit.infer.chat import ChatBundle
from vlkit.models.bundle import Bundle
from vlkit.pipeline import Pipeline, load


def test_load_gives_a_pipeline_in_the_dtype_asked_for(make_model, tokenizer, tmp_path):
    Bundle(make_model("mlp"), tokenizer).save_pretrained(tmp_path / "ckpt")   # a plain Bundle wrote it
    pipe = load(tmp_path / "ckpt")
    assert type(pipe) is Pipeline and isinstance(pipe, ChatBundle)
    assert {p.dtype for p in pipe.model.parameters()} == {torch.float32}     # "auto": as saved
    assert pipe.fingerprint() == Bundle(make_model("mlp"), tokenizer).fingerprint()
    half = load(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert isinstance(half.chat("What color?", max_new_tokens=2), str)


def test_export_goes_through_vlkit_hf(make_model, tokenizer, tmp_path):
    pipe = Pipeline(make_model("mlp"), tokenizer)
    with pytest.raises(ExportError, match="format 'gguf' is unknown"):
        pipe.export(tmp_path / "x", format="gguf")
    with pytest.raises(ExportError, match="post_layernorm"):   # the default format, llava-hf, checks the model
        pipe.export(tmp_path / "x")
    assert not (tmp_path / "x").exists()
