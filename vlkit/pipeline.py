"""Pipeline: a model with its tokenizer and processor; what `vlkit.load` returns.

A checkpoint is a directory: config.json (the full ModelConfig), model.safetensors, tokenizer.json, and
optionally vq/ (the visual tokenizer). Saving is atomic: everything is written to a temporary sibling directory
that then replaces the target in one rename.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from vlkit.chat import ChatProcessor, normalize_messages
from vlkit.errors import CheckpointError
from vlkit.images import ImageLike, ImageProcessor, load_image
from vlkit.io import write_dir_atomically
from vlkit.infer.generate import GenerationConfig, ImageGenerationConfig, TextStreamer, generate, generate_stream
from vlkit.models.vlm import VisionLanguageModel
from vlkit.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
IMAGE_PROMPT = "Draw: {}"  # the user turn of text-to-image samples (the synthetic world's generation task)


class Pipeline:
    def __init__(self, model: VisionLanguageModel, tokenizer: Tokenizer, path: Optional[str | Path] = None,
                 vq: Any = None, processor: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        self.processor = processor or ChatProcessor(tokenizer)  # HF prompt formats bring their own (models.hf)
        self.path = Path(path) if path is not None else None
        self.vq = vq
        self._fingerprint: Optional[str] = None

    @property
    def config(self):
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def can_generate_images(self) -> bool:
        return self.vq is not None and self.config.vision_target == "codes"

    @property
    def can_segment(self) -> bool:
        """Trained with NTP-M dense targets (ModelConfig.dense_prediction)."""
        return bool(self.config.dense_prediction)

    # -- preprocessing ---------------------------------------------------------------------------------
    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor.from_vision(self.config.vision)

    def image_tensor(self, image: ImageLike) -> torch.Tensor:
        return self.image_processor(load_image(image))

    def prompt_ids(self, prompt: str | Sequence[dict], pixels: Sequence[torch.Tensor],
                   system: Optional[str] = None) -> list[int]:
        counts = [self.model.tokens_per_image(p.shape[1], p.shape[2]) for p in pixels]
        if isinstance(prompt, str):
            return self.processor.encode_prompt(prompt, len(pixels), counts, system=system)
        turns, _ = normalize_messages(prompt)
        from vlkit.chat import ensure_placeholders

        return self.processor.encode(ensure_placeholders(turns, len(pixels)), counts,
                                     add_generation_prompt=True).input_ids

    def generation_config(self, **kwargs: Any) -> GenerationConfig:
        gen = GenerationConfig(**kwargs)
        if not gen.stop_token_ids:
            gen.stop_token_ids = tuple(self.tokenizer.stop_ids)
        if self.config.text_vocab_size is not None:
            gen.vocab_limit = self.config.text_vocab_size
        return gen

    # -- chat ------------------------------------------------------------------------------------------
    def chat_batch(self, prompts: Sequence[str | Sequence[dict]], images: Sequence[Sequence[ImageLike]] = (),
                   max_new_tokens: int = 64, temperature: float = 0.0, **kwargs: Any) -> list[str]:
        """Answers for several prompts at once (each prompt: the user text, or a list of chat messages)."""
        images = list(images) or [[] for _ in prompts]
        pixels = [[self.image_tensor(im) for im in row] for row in images]
        ids = [self.prompt_ids(p, px) for p, px in zip(prompts, pixels)]
        gen = self.generation_config(max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
        out = generate(self.model, ids, pixels, gen, self.tokenizer.pad_id)
        return [self.tokenizer.decode(o).strip() for o in out]

    def chat(self, prompt: str | Sequence[dict], images: Sequence[ImageLike] = (), max_new_tokens: int = 64,
             temperature: float = 0.0, **kwargs: Any) -> str:
        return self.chat_batch([prompt], [list(images)], max_new_tokens, temperature, **kwargs)[0]

    def chat_stream(self, prompt: str | Sequence[dict], images: Sequence[ImageLike] = (), max_new_tokens: int = 64,
                    temperature: float = 0.0, **kwargs: Any) -> Iterator[str]:
        """Text pieces as they are generated."""
        pixels = [self.image_tensor(im) for im in images]
        ids = self.prompt_ids(prompt, pixels)
        gen = self.generation_config(max_new_tokens=max_new_tokens, temperature=temperature, **kwargs)
        streamer = TextStreamer(self.tokenizer.decode)
        stops = set(gen.stop_token_ids)
        for _, tok in generate_stream(self.model, [ids], [pixels], gen, self.tokenizer.pad_id):
            if tok in stops:
                break
            piece = streamer.push(tok)
            if piece:
                yield piece
        rest = streamer.flush()
        if rest:
            yield rest

    # -- vision as target ------------------------------------------------------------------------------
    def image_prompt_ids(self, text: str) -> list[int]:
        """A user turn, then the assistant opening an image: `... assistant\n<|gen_start|><|vision_start|>`."""
        t = self.tokenizer
        ids = self.processor.encode([("user", text)], [], add_generation_prompt=True).input_ids
        return ids + [t.gen_start_id, t.vision_start_id]

    def generate_image(self, prompt: str, cfg_scale: float = ImageGenerationConfig.cfg_scale,
                       temperature: float = ImageGenerationConfig.temperature, top_k: int = ImageGenerationConfig.top_k,
                       top_p: float = ImageGenerationConfig.top_p, seed: Optional[int] = None):
        """Text -> PIL image (VLUAS models): visual codes sampled with classifier-free guidance against the blank
        prompt the model saw under prompt dropout, then decoded by the visual tokenizer."""
        from vlkit.errors import UserError
        from vlkit.infer.generate import generate_codes
        from vlkit.models.vq import tensor_to_pil

        if not self.can_generate_images:
            raise UserError("this model cannot generate images: it needs vision_target='codes' and a visual "
                            "tokenizer (vq/ in the checkpoint)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the image prompt must be a non-empty string")
        gen = ImageGenerationConfig(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        cond = self.image_prompt_ids(IMAGE_PROMPT.format(prompt.strip()))
        codes = generate_codes(self.model, cond, self.image_prompt_ids(""), self.vq.num_codes, gen,
                               self.tokenizer.pad_id)
        return tensor_to_pil(self.vq.decode_codes(codes[None]))[0]

    def segment(self, image: ImageLike, classes: Sequence[str], refine: bool = True):
        """-> numpy uint8 mask at the image's size (NTP-M). Values index `classes` if it lists "background",
        else 0 = background and k = classes[k - 1]. `refine`: edge-aware refinement guided by the image
        (vlkit.infer.segment); False gives the plain bilinear upsampling of the per-patch scores."""
        from vlkit.errors import UserError
        from vlkit.infer.segment import segment

        if not self.can_segment:
            raise UserError("this model was not trained for dense prediction (model.dense_prediction is false)")
        return segment(self.model, self.processor, self.tokenizer, image, classes, refine=refine)

    # -- identity and persistence ----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A stable hash of the weights and config (keys evaluation caches)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(repr(self.config).encode())
            for name, t in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def save_pretrained(self, directory: str | Path, extra: Optional[Callable[[Path], None]] = None) -> Path:
        """Write the checkpoint atomically; `extra(tmp_dir)` may add files (the trainer's state) before the rename."""
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.vq is not None:
                self.vq.save_pretrained(tmp / "vq")
            if extra is not None:
                extra(tmp)

        directory = Path(directory)
        write_dir_atomically(directory, write)
        return directory


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: Optional[str | torch.dtype]) -> Optional[torch.dtype]:
    """None / "auto" (the checkpoint's dtype), a torch dtype, or one of DTYPES' names."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        from vlkit.errors import UserError

        raise UserError(f"dtype={dtype!r} is unknown; choose 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load(path: str | Path, device: str | torch.device = "cpu", dtype: Optional[str | torch.dtype] = None) -> Pipeline:
    """Load a vlkit checkpoint directory (or a Hugging Face model directory, detected by its config). The model
    is in `dtype`; None or "auto": the dtype its weights were saved in (a bf16 checkpoint stays bf16)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    from vlkit.models import hf

    dtype = parse_dtype(dtype)
    if hf.detect_format(path) != "vlkit":
        return hf.load_pipeline(path, device=device, dtype=dtype)
    model = VisionLanguageModel.from_pretrained(path, device=device, dtype=dtype)
    processor = None
    if model.cfg.prompt_format is not None:  # fine-tuned from an HF model: its own tokenizer and chat template
        tokenizer, processor = hf.chat_tools(path, {}, model.cfg)
    else:
        tokenizer = Tokenizer.from_file(path / TOKENIZER_FILE)
    if len(tokenizer) > model.cfg.text.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's embedding table "
                              f"has {model.cfg.text.vocab_size} rows")
    vq = None
    if (path / "vq").is_dir():
        from vlkit.models.vq import VisualTokenizer

        vq = VisualTokenizer.from_pretrained(path / "vq").to(device).eval()
    return Pipeline(model, tokenizer, path=path, vq=vq, processor=processor)
