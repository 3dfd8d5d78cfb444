"""The visual tokenizer's conv encoder and decoder: any downsample factor maps pixels to the code grid and back."""
import pytest
import torch

from vlkit.config import VQConfig
from vlkit.models.vq.autoencoder import Decoder, Encoder


@pytest.mark.parametrize("downsample,size", [(8, 32), (16, 64), (6, 24), (3, 12)])
def test_encoder_reaches_the_code_grid_and_the_decoder_returns(downsample, size):
    cfg = VQConfig(codebook_size=8, code_dim=4, hidden_size=16, num_layers=1, downsample=downsample, image_size=size)
    z = Encoder(cfg)(torch.randn(2, 3, size, size))
    assert z.shape == (2, 4, size // downsample, size // downsample)
    assert Decoder(cfg)(z).shape == (2, 3, size, size)
