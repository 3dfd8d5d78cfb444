"""The visual tokenizer's optional losses: multi-scale image-gradient L1 and the CLIP-style InfoNCE."""
import math

import pytest
import torch
import torch.nn.functional as F

from vlkit.models.vq.losses import gradient_loss, info_nce


def test_gradient_loss_sees_edges_not_flat_offsets():
    a = torch.zeros(1, 3, 16, 16)
    assert gradient_loss(a, a + 0.5).item() == 0.0  # a constant shift has the same image gradients
    edge = a.clone()
    edge[..., :, 8:] = 1.0
    one_scale = gradient_loss(a, edge, scales=1).item()
    assert one_scale == pytest.approx(F.l1_loss(a.diff(dim=-1), edge.diff(dim=-1)).item())
    assert gradient_loss(a, edge, scales=3).item() > one_scale  # coarser scales add their share


def test_info_nce_is_low_for_matched_pairs_and_symmetric():
    torch.manual_seed(0)
    a = torch.randn(6, 8)
    scale = torch.tensor(10.0)
    matched = info_nce(a, a * 3.0, scale)  # the same directions: normalized away
    shuffled = info_nce(a, a.roll(1, 0), scale)
    assert matched < shuffled
    assert torch.allclose(info_nce(a, a.roll(1, 0), scale), info_nce(a.roll(1, 0), a, scale))
    # every pair equally similar: the loss is log(B)
    assert info_nce(torch.ones(4, 2), torch.ones(4, 2), scale).item() == pytest.approx(math.log(4), abs=1e-5)
