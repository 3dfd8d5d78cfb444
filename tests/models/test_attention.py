"""vlkit.models.attention.sdpa: fp32 attention under CPU autocast, the output back in v's dtype."""
import torch
import torch.nn.functional as F

from vlkit.models.attention import sdpa


def test_cpu_autocast_attention_runs_in_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, is_causal=True)
    assert y.dtype == torch.bfloat16
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(torch.bfloat16)
    assert torch.equal(y, want)
    assert torch.equal(sdpa(q.float(), k.float(), v.float()), F.scaled_dot_product_attention(q.float(), k.float(), v.float()))
