"""Codebook usage, perplexity and PSNR."""
import math

import pytest
import torch

from vlkit.models.vq import codebook_usage, perplexity, psnr


def test_usage_perplexity_psnr():
    codes = torch.tensor([0, 1, 2, 3] * 5)
    assert codebook_usage(codes, 8) == 0.5
    assert perplexity(codes, 8) == pytest.approx(4.0)
    assert perplexity(torch.zeros(10, dtype=torch.long), 8) == pytest.approx(1.0)
    a = torch.zeros(1, 3, 4, 4)
    assert psnr(a, a) == math.inf
    b = a + 0.2  # mse 0.04 on a range of 2 -> 10 log10(4 / 0.04) = 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-4)
