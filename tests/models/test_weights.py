"""vlkit.models.weights: config + safetensors directories, strict loading with named tensors, the stored dtype."""
import json

import pytest
import torch
from torch import nn

from vlkit.config import ConfigError
from vlkit.errors import CheckpointError
from vlkit.models.weights import check_state, checkpoint_dtype, load_state, read_weights, save_weights


def _parse(d):
    if d.get("width", 0) < 1:
        raise ConfigError("width must be >= 1")
    return d


def test_round_trip_and_errors_name_the_problem(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    (tmp_path / "m").mkdir()
    save_weights(tmp_path / "m", {"width": 3}, state, kind="test")
    cfg, loaded = read_weights(tmp_path / "m", "thing", _parse)
    assert cfg == {"width": 3} and loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) and loaded[k].dtype == state[k].dtype for k in state)
    with pytest.raises(CheckpointError, match="thing .* does not exist"):
        read_weights(tmp_path / "none", "thing", _parse)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"width": 0}))
    with pytest.raises(CheckpointError, match="not a valid thing config: width"):
        read_weights(tmp_path / "m", "thing", _parse)
    (tmp_path / "m" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not a valid thing config"):
        read_weights(tmp_path / "m", "thing", _parse)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"width": 3}))
    (tmp_path / "m" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_weights(tmp_path / "m", "thing", _parse)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        read_weights(tmp_path / "m", "thing", _parse)


def test_check_state_names_missing_unexpected_and_misshaped_tensors():
    own = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    check_state(own, {"a": torch.ones(2), "b": torch.ones(3)}, "f", optional=["c"])
    with pytest.raises(CheckpointError) as err:
        check_state(own, {"a": torch.ones(4), "x": torch.ones(1), "c": torch.ones(1)}, "file.safetensors")
    msg = str(err.value)
    assert "file.safetensors" in msg and "missing tensors ['b']" in msg and "unexpected tensors ['x']" in msg
    assert "a: file (4,) vs model (2,)" in msg


def test_load_state_loads_and_checkpoint_dtype_is_the_majority():
    lin = nn.Linear(2, 2)
    state = {"weight": torch.full((2, 2), 3.0), "bias": torch.zeros(2)}
    load_state(lin, state, "s")
    assert torch.equal(lin.weight.detach(), state["weight"])
    with pytest.raises(CheckpointError, match="missing tensors \\['bias'\\]"):
        load_state(lin, {"weight": state["weight"]}, "s")
    mixed = {"big": torch.zeros(10, dtype=torch.bfloat16), "small": torch.zeros(3), "ids": torch.zeros(99, dtype=torch.long)}
    assert checkpoint_dtype(mixed) == torch.bfloat16
    assert checkpoint_dtype({"ids": torch.zeros(2, dtype=torch.long)}) == torch.float32
