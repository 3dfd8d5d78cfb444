"""vlkit.models.attention: sdpa (fp32 attention under CPU autocast, the output back in v's dtype) and varlen
attention over segments (block attention without a mask)."""
import torch
import torch.nn.functional as F

from vlkit.models.attention import Segments, sdpa


def test_cpu_autocast_attention_runs_in_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(torch.bfloat16)
    assert torch.equal(y, want)
    assert torch.equal(sdpa(q.float(), k.float(), v.float()), F.scaled_dot_product_attention(q.float(), k.float(), v.float()))


def test_segments_equal_masked_attention_for_any_order_and_lengths():
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([2, 0, 0, 5, 2, 5, 0, 2, 7, 5, 5, 0])  # interleaved, lengths 4, 3, 4, 1: two of length 4
    q, k, v = (torch.randn(2, 3, len(ids), 8, generator=g, requires_grad=True) for _ in range(3))
    mask = (ids[:, None] == ids[None])[None, None]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = Segments(ids).attend(q, k, v)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    grads = torch.autograd.grad(got.square().sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad(want.square().sum(), (q, k, v))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_segments_batch_equal_lengths_together():
    s = Segments(torch.tensor([0, 0, 1, 1, 2, 2, 2]))
    assert sorted(tuple(x.shape) for x in s.groups) == [(1, 3), (2, 2)]
    assert torch.equal(torch.sort(torch.cat([x.flatten() for x in s.groups]))[0], torch.arange(7))
