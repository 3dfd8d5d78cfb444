"""Atomic directory writes publish folders and files with the usual modes under the umask (issue 17, item 11)."""
import os
import stat

import pytest

from vlkit.config import VQConfig
from vlkit.io import write_dir_atomically
from vlkit.models.vq import VisualTokenizer
from vlkit.pipeline import Pipeline


def _modes(root):
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *sorted(root.rglob("*"))]}


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_checkpoint_folders_and_weights_follow_the_umask(umask, make_model, tokenizer, tmp_path):
    """A training checkpoint (weights, tokenizer, vq/, trainer_state/) is readable as any new file would be."""
    import torch

    from vlkit.train.checkpoint import save_checkpoint

    vq = VisualTokenizer(VQConfig(codebook_size=8, code_dim=4, hidden_size=8, num_layers=0))
    pipe = Pipeline(make_model(), tokenizer, vq=vq)
    opt = torch.optim.AdamW(pipe.model.parameters())
    ckpt = save_checkpoint(pipe, tmp_path, 3, {"stage": 0, "step": 3}, opt, keep_last=1)
    modes = _modes(ckpt)
    assert {"step-0000003/model.safetensors", "step-0000003/vq/model.safetensors",
            "step-0000003/trainer_state/optimizer.pt"} <= set(modes)
    for name, mode in modes.items():
        want = 0o777 & ~umask if (tmp_path / "checkpoints" / name).is_dir() else 0o666 & ~umask
        assert mode == want, f"{name}: {oct(mode)}, expected {oct(want)} under umask {oct(umask)}"
    # a standalone visual tokenizer (vlkit train recipes/vq.yaml) too, also when it replaces an older one
    for _ in range(2):
        vq.save_pretrained(tmp_path / "vq")
    assert set(_modes(tmp_path / "vq").values()) == {0o777 & ~umask, 0o666 & ~umask}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "vq"]  # no temp or old dir left


def test_a_failed_write_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    write_dir_atomically(tmp_path / "out", lambda d: (d / "a.txt").write_text("old"))

    def fail(d):
        (d / "a.txt").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dir_atomically(tmp_path / "out", fail)
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_records_takes_jsonl_and_json_lists_and_skips_bad_lines(tmp_path):
    from vlkit.io import read_records
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"id": 1}\nnot json\n\n[1, 2]\n{"id": 2}\n', encoding="utf-8")
    with pytest.warns(UserWarning, match=r"a\.jsonl:2: not valid JSON"):
        assert read_records(lines) == [{"id": 1}, {"id": 2}]
    listed = tmp_path / "b.json"
    listed.write_text('[{"id": 3}, 4]', encoding="utf-8")
    assert read_records(listed) == [{"id": 3}]
    broken = tmp_path / "c.json"
    broken.write_text('[{"id": 3}', encoding="utf-8")
    with pytest.raises(ValueError, match="c.json is not valid JSON"):
        read_records(broken)


def test_write_json_replaces_the_file_whole(tmp_path):
    from vlkit.io import write_json
    path = tmp_path / "scores.json"
    write_json(path, {"a": 1})
    write_json(path, {"b": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "b": "é"\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
