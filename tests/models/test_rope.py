"""Rotary embeddings against transformers' Qwen2-VL: the vision 2D table, M-RoPE's tables and its position ids."""
from types import SimpleNamespace

import pytest
import torch

from vlkit.errors import ImageTokenError
from vlkit.models.rope import RotaryEmbedding, VisionRotaryEmbedding, apply_rope, mrope_positions

qwen2_vl = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")


def test_vision_rope_equals_qwen2_vl_layout():
    from transformers import Qwen2VLConfig

    head_dim, gh, gw = 16, 3, 5
    vcfg = Qwen2VLConfig().vision_config
    vcfg.embed_dim, vcfg.num_heads = head_dim * 2, 2
    hf = qwen2_vl.Qwen2VLVisionRotaryEmbedding(vcfg)
    # row-major (h, w) positions (merge size 1: transformers' block-major order is then row-major)
    pos = torch.stack([torch.arange(gh).repeat_interleave(gw), torch.arange(gw).repeat(gh)], -1)
    x = torch.zeros(gh * gw, head_dim)
    hf_cos, hf_sin = hf(x, pos)
    cos, sin = VisionRotaryEmbedding(head_dim, vcfg.rope_parameters["rope_theta"])(gh, gw)
    torch.testing.assert_close(hf_cos, torch.cat([cos, cos], -1))
    torch.testing.assert_close(hf_sin, torch.cat([sin, sin], -1))
    q, k = torch.randn(2, gh * gw, 2, head_dim).unbind(0)  # (N, heads, D) as transformers' vision attention
    hq, hk = qwen2_vl.apply_rotary_pos_emb_vision(q, k, hf_cos, hf_sin)
    torch.testing.assert_close(apply_rope(q.transpose(0, 1), cos, sin).transpose(0, 1), hq)
    torch.testing.assert_close(apply_rope(k.transpose(0, 1), cos, sin).transpose(0, 1), hk)
    assert not torch.allclose(hq, q)  # it does rotate


def test_mrope_tables_equal_qwen2_vl():
    from transformers import Qwen2VLConfig

    cfg = Qwen2VLConfig().text_config
    cfg.hidden_size, cfg.num_attention_heads = 64, 4  # head dim 16, 8 frequencies
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    hf = qwen2_vl.Qwen2VLRotaryEmbedding(cfg)
    pos = torch.randint(0, 50, (3, 2, 7))
    hf_cos, hf_sin = hf(torch.zeros(1, dtype=torch.float32), pos)
    cos, sin = RotaryEmbedding(16, 10000.0, mrope_section=[2, 3, 3])(pos, torch.float32)
    torch.testing.assert_close(hf_cos, torch.cat([cos, cos], -1)[:, 0])
    torch.testing.assert_close(hf_sin, torch.cat([sin, sin], -1)[:, 0])
    # text: equal axes are the 1D RoPE
    same = pos[:1].expand(3, -1, -1)
    plain = RotaryEmbedding(16, 10000.0)(pos[0], torch.float32)
    for a, b in zip(RotaryEmbedding(16, 10000.0, mrope_section=[2, 3, 3])(same, torch.float32), plain):
        torch.testing.assert_close(a, b)


def _hf_rope_index(input_ids, types, grid_thw, mask, merge):
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)))
    fake.get_vision_position_ids = lambda *a, **k: qwen2_vl.Qwen2VLModel.get_vision_position_ids(fake, *a, **k)
    return qwen2_vl.Qwen2VLModel.get_rope_index(fake, input_ids, types, grid_thw, None, mask)[0]


def test_mrope_positions_equal_qwen2_vl_get_rope_index():
    pad, merge = 9, 2
    grids = [(2, 3), (3, 1), (2, 2)]  # token grids (rows, cols); transformers takes patch grids (1, 2r, 2c)
    row0 = [1, 2] + [pad] * 6 + [3, 4, 5] + [pad] * 3 + [6, 6, 6]
    row1 = [0, 0, 0, 0, 0, 0, 0, 0, 7] + [pad] * 4 + [8, 8, 8, 8]  # left padded
    ids = torch.tensor([row0, row1])
    mask = torch.tensor([[1] * 17, [0] * 8 + [1] * 9])
    types = (ids == pad).int()
    thw = torch.tensor([[1, r * merge, c * merge] for r, c in grids])
    expected = _hf_rope_index(ids, types, thw, mask, merge)
    base = (mask.cumsum(-1) - 1).clamp(min=0)
    got = mrope_positions(ids, pad, grids, base)
    torch.testing.assert_close(got[:, mask.bool()], expected[:, mask.bool()])
    # 2 text, a 2x3 image at 2 (text resumes at 2 + 3), 3 text, a 3x1 image at 8 (resumes at 11), 3 text
    assert got[:, 0, -1].tolist() == [13] * 3


def test_mrope_positions_restart_with_each_packed_sample_and_check_counts():
    pad = 9
    ids = torch.tensor([[1, pad, pad, 2, 1, pad, pad, 2]])
    base = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])  # two packed samples
    got = mrope_positions(ids, pad, [(1, 2), (1, 2)], base)
    assert got[:, 0, :4].tolist() == got[:, 0, 4:].tolist() == [[0, 1, 1, 3], [0, 1, 1, 3], [0, 1, 2, 3]]
    with pytest.raises(ImageTokenError, match="token grids"):
        mrope_positions(ids, pad, [(1, 2)], base)


def test_mrope_positions_of_videos_equal_qwen2_5_vl_get_rope_index():
    """Clips ((frames, rows, cols) token grids, video pad tokens) with temporal ids frame * time_step, as
    Qwen2.5-VL's get_rope_index with tokens_per_second x second_per_grid_ts; images keep their grids."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as q25

    img, vid, merge, step = 9, 10, 2, 3.0
    grids = [(2, 1, 2), (1, 2), (3, 2, 2)]
    ids = torch.tensor([[1, 2] + [vid] * 4 + [3] + [img] * 2 + [4] + [vid] * 12 + [5, 6]])
    types = (ids == img).int() + 2 * (ids == vid).int()
    fake = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge,
                                                                                tokens_per_second=2)))
    fake.get_vision_position_ids = lambda *a, **k: q25.Qwen2_5_VLModel.get_vision_position_ids(fake, *a, **k)
    want = q25.Qwen2_5_VLModel.get_rope_index(
        fake, ids, types, image_grid_thw=torch.tensor([[1, 2, 4]]), video_grid_thw=torch.tensor([[2, 2, 4], [3, 4, 4]]),
        second_per_grid_ts=torch.tensor([1.5, 1.5]))[0]
    got = mrope_positions(ids, img, grids, torch.arange(ids.shape[1])[None], video_token_id=vid, time_step=step)
    torch.testing.assert_close(got, want)
    assert got[0, 0, 2:6].tolist() == [2, 2, 5, 5]  # two frames of a 1 x 2 token grid, 3 positions apart
