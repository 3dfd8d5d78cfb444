"""Depth transformer: causality over depth, it learns a mapping, sampling options."""
import pytest
import torch

from vlkit.models.depth import DepthInputError, DepthTransformer


def model(depth=4, k=16, hidden=24, **kw):
    torch.manual_seed(0)
    return DepthTransformer(hidden, k, depth, num_layers=2, num_heads=4, dim=32, **kw).eval()


def test_logits_shape():
    m = model()
    h = torch.randn(2, 5, 24)
    codes = torch.randint(0, 16, (2, 5, 4))
    assert m(h, codes).shape == (2, 5, 4, 16)


@pytest.mark.parametrize("d", [0, 1, 2, 3])
def test_teacher_forced_logits_at_depth_d_ignore_codes_from_d_on(d):
    m = model()
    h = torch.randn(3, 6, 24)
    a = torch.randint(0, 16, (3, 6, 4))
    b = a.clone()
    b[..., d:] = torch.randint(0, 16, b[..., d:].shape)
    assert not torch.equal(a, b) or d == 4
    la, lb = m(h, a), m(h, b)
    assert torch.allclose(la[..., : d + 1, :], lb[..., : d + 1, :], atol=1e-6)
    if d < 3:  # later steps do see the changed codes
        assert not torch.allclose(la[..., d + 1:, :], lb[..., d + 1:, :])
    # and every step depends on h
    lh = m(h + 1.0, a)
    assert not torch.allclose(la[..., d, :], lh[..., d, :])


def test_overfits_a_fixed_mapping():
    torch.manual_seed(0)
    m = DepthTransformer(16, 12, 3, num_layers=2, num_heads=2, dim=32)
    h = torch.randn(8, 16)  # 8 "positions", each with its own 3-code target
    target = torch.randint(0, 12, (8, 3))
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(150):
        loss = m.loss(h[None], target[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    assert loss.item() < 0.05
    assert torch.equal(m.sample(h, temperature=0), target)
    assert (m(h[None], target[None]).argmax(-1)[0] == target).all()


def test_sample_shapes_determinism_and_prefix():
    m = model()
    h = torch.randn(2, 5, 24)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1 = m.sample(h, temperature=1.0, top_k=5, generator=g1)
    s2 = m.sample(h, temperature=1.0, top_k=5, generator=g2)
    assert s1.shape == (2, 5, 4) and s1.dtype == torch.long and torch.equal(s1, s2)
    assert s1.min() >= 0 and s1.max() < 16
    greedy = m.sample(h, temperature=0)
    assert torch.equal(m.sample(h, temperature=1.0, top_k=1), greedy)
    # greedy decoding agrees with teacher-forced argmax on its own output
    assert torch.equal(m(h, greedy).argmax(-1), greedy)
    prefix = torch.full((2, 5, 1), 3)
    with_prefix = m.sample(h, temperature=0, prefix=prefix)
    assert (with_prefix[..., 0] == 3).all()
    assert torch.equal(with_prefix, m.sample(h, temperature=0, prefix=with_prefix[..., :2]))
    assert m.sample(h[:, 0], temperature=0).shape == (2, 4)


def test_bad_inputs():
    m = model()
    with pytest.raises(DepthInputError, match="h must be"):
        m(torch.randn(2, 5, 7), torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(DepthInputError, match=r"\[0, 16\)"):
        m(torch.randn(2, 5, 24), torch.full((2, 5, 4), 16))
    with pytest.raises(DepthInputError, match="depth 4"):
        m(torch.randn(2, 5, 24), torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(DepthInputError, match="top_p"):
        m.sample(torch.randn(2, 24), top_p=0.0)
    with pytest.raises(DepthInputError, match="divisible"):
        DepthTransformer(24, 16, 2, num_heads=5, dim=32)
