"""Visual tokenizer for "vision as target" (VILA-U, Youtu-VL VLUAS): image -> discrete codes -> image.

tokenizer.py: VisualTokenizer (encoder, quantizer, decoder; persistence) and tensor_to_pil; quantizer.py: the
residual EMA quantizer; autoencoder.py: the conv encoder/decoder; grid.py: the code grid against the LM's
image-token grid; losses.py, metrics.py: training losses and reconstruction/codebook metrics.
"""
from vlkit.models.vq.grid import check_code_grid, check_vq_config, code_grid_size, lm_grid_downsample
from vlkit.models.vq.losses import gradient_loss
from vlkit.models.vq.metrics import code_histogram, codebook_usage, perplexity, psnr
from vlkit.models.vq.quantizer import QuantizerOutput, ResidualVectorQuantizer
from vlkit.models.vq.tokenizer import TokenizerInputError, VisualTokenizer, tensor_to_pil

__all__ = ["QuantizerOutput", "ResidualVectorQuantizer", "TokenizerInputError", "VisualTokenizer", "check_code_grid",
           "check_vq_config", "code_grid_size", "code_histogram", "codebook_usage", "gradient_loss",
           "lm_grid_downsample", "perplexity", "psnr", "tensor_to_pil"]
