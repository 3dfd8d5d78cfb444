"""Bundle: a model with the parts that make it usable, as a checkpoint directory holds them.

The parts are the VisionLanguageModel, its text tokenizer, its prompt processor (vlkit's ChatProcessor, or the
chat-template processor of a model in a Hugging Face prompt format) and, for VLUAS models, the visual tokenizer.
A Bundle turns images and prompts into model inputs, and is saved and loaded whole; training works on a Bundle.
The user facade with chat and generation, `vlkit.pipeline.Pipeline`, is a Bundle.

A vlkit checkpoint is a directory: config.json (the full ModelConfig), model.safetensors, tokenizer.json, and
optionally vq/ (the visual tokenizer). Saving is atomic: everything is written to a temporary sibling directory
that then replaces the target in one rename.

`load_bundle` reads any directory a registered `CheckpointFormat` claims, chosen by its config.json: "vlkit"
(above) is registered here; `vlkit.hf` registers Hugging Face model directories and vlkit checkpoints that keep
an imported model's own tokenizer and chat template (ModelConfig.prompt_format).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from vlkit.chat import ChatFormatError, ChatProcessor, ensure_placeholders, in_sequence_order, normalize_messages
from vlkit.config import ModelConfig
from vlkit.errors import CheckpointError, UserError
from vlkit.images import ImageLike, ImageProcessor, load_image
from vlkit.io import read_config, write_dir_atomically
from vlkit.models.vlm import VisionLanguageModel
from vlkit.models.vq import VisualTokenizer
from vlkit.tokenizer import Tokenizer
from vlkit.video import stack_frames

TOKENIZER_FILE = "tokenizer.json"
VQ_DIR = "vq"  # the visual tokenizer's folder inside a checkpoint


class Bundle:
    def __init__(self, model: VisionLanguageModel, tokenizer: Tokenizer, path: Optional[str | Path] = None,
                 vq: Any = None, processor: Any = None):
        self.model = model
        self.tokenizer = tokenizer
        # HF prompt formats bring their own (vlkit.hf); vlkit's fills the model's video pads (None: older checkpoints)
        self.processor = processor or ChatProcessor(tokenizer, model.cfg.video_token_id)
        self.path = Path(path) if path is not None else None
        self.vq = vq
        self._fingerprint: Optional[str] = None

    @classmethod
    def of(cls, bundle: "Bundle") -> "Bundle":
        """A `cls` (e.g. a Pipeline) of `bundle`'s parts; the parts are shared, not copied."""
        return cls(bundle.model, bundle.tokenizer, path=bundle.path, vq=bundle.vq, processor=bundle.processor)

    @property
    def config(self) -> ModelConfig:
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

    # -- model inputs ----------------------------------------------------------------------------------
    @property
    def image_processor(self) -> ImageProcessor:
        return ImageProcessor.from_vision(self.config.vision)

    def image_tensor(self, image: ImageLike) -> torch.Tensor:
        return self.image_processor(load_image(image))

    def prompt_ids(self, prompt: str | Sequence[dict], pixels: Sequence[torch.Tensor],
                   system: Optional[str] = None) -> list[int]:
        """The ids of a user prompt (text, or a list of chat messages) with `pixels`' images, ending with the
        assistant's turn opening."""
        counts = [self.model.tokens_per_image(p.shape[1], p.shape[2]) for p in pixels]
        if isinstance(prompt, str):
            return self.processor.encode_prompt(prompt, len(pixels), counts, system=system)
        turns, _ = normalize_messages(prompt)
        return self.processor.encode(ensure_placeholders(turns, len(pixels)), counts,
                                     add_generation_prompt=True).input_ids

    def media_prompt(self, prompt: str | Sequence[dict], pixels: Sequence[torch.Tensor],
                     clips: Sequence[Sequence[torch.Tensor]] = ()) -> tuple[list[int], list[torch.Tensor]]:
        """`prompt_ids` with video clips too (each a list of processed frames; one vision block per `<video>`,
        vlkit/chat.py) -> (ids, the model's inputs in the order it fills their slots: each clip one (T, 3, H, W)
        tensor, or its frames one by one for a processor that fills image pads with them)."""
        if not clips:
            return self.prompt_ids(prompt, pixels), list(pixels)
        if not getattr(self.processor, "takes_videos", False):
            raise ChatFormatError("this model's chat template takes no videos (vlkit's ChatML and Qwen2-VL's do)")
        turns = [("user", prompt)] if isinstance(prompt, str) else normalize_messages(prompt, videos=[])[0]
        turns = ensure_placeholders(turns, len(pixels), len(clips))
        n = lambda p: self.model.tokens_per_image(p.shape[-2], p.shape[-1])  # noqa: E731
        if self.processor.video_clips:
            items = [[stack_frames(clip, f"video {k}")] for k, clip in enumerate(clips)]
            counts = [self.model.tokens_per_clip(c.shape[0], c.shape[-2], c.shape[-1]) for [c] in items]
        else:
            items, counts = [list(clip) for clip in clips], [sum(n(f) for f in clip) for clip in clips]
        enc = self.processor.encode(turns, [n(p) for p in pixels], add_generation_prompt=True,
                                    tokens_per_video=counts)
        return enc.input_ids, in_sequence_order(turns, pixels, items)

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
                self.vq.save_pretrained(tmp / VQ_DIR)
            if extra is not None:
                extra(tmp)

        directory = Path(directory)
        write_dir_atomically(directory, write)
        return directory


# ---------------------------------------------------------------------------------------------------------
# loading: a registry of checkpoint formats


@dataclass(frozen=True)
class CheckpointFormat:
    """A kind of model directory that `load_bundle` reads."""

    claims: Callable[[dict], bool]  # the directory's config.json -> whether this format reads it
    load: Callable[[Path, dict, Any, Optional[torch.dtype]], Bundle]  # (path, config, device, dtype) -> Bundle


# format name -> format; the claims of different formats never overlap
CHECKPOINT_FORMATS: dict[str, CheckpointFormat] = {}

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: Optional[str | torch.dtype]) -> Optional[torch.dtype]:
    """None / "auto" (the checkpoint's dtype), a torch dtype, or one of DTYPES' names."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r} is unknown; choose 'auto' or one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_bundle(path: str | Path, device: str | torch.device = "cpu",
                dtype: Optional[str | torch.dtype] = None) -> Bundle:
    """The Bundle of a checkpoint directory, read by the registered format that claims its config.json. The
    model is in `dtype`; None or "auto": the dtype its weights were saved in (a bf16 checkpoint stays bf16)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    dtype = parse_dtype(dtype)
    config = read_config(path)
    for fmt in CHECKPOINT_FORMATS.values():
        if fmt.claims(config):
            return fmt.load(path, config, device, dtype)
    raise CheckpointError(f"{path}: no checkpoint format reads its config.json (formats: "
                          f"{sorted(CHECKPOINT_FORMATS)}; `import vlkit.hf` adds the Hugging Face formats)")


def is_vlkit_config(config: dict) -> bool:
    """A vlkit ModelConfig (an HF config.json names its model_type or architectures)."""
    return ("model_type" not in config and "architectures" not in config
            and {"vision", "text", "connector"} <= set(config))


def load_vlkit_parts(path: Path, device: Any, dtype: Optional[torch.dtype]) -> tuple[VisionLanguageModel, Any]:
    """(model, visual tokenizer or None) of a vlkit checkpoint directory."""
    model = VisionLanguageModel.from_pretrained(path, device=device, dtype=dtype)
    vq = None
    if (path / VQ_DIR).is_dir():
        vq = VisualTokenizer.from_pretrained(path / VQ_DIR).to(device).eval()
    return model, vq


def check_vocab(bundle: Bundle) -> Bundle:
    """A tokenizer with more tokens than the embedding table has rows would index past it."""
    rows = bundle.config.text.vocab_size
    if len(bundle.tokenizer) > rows:
        raise CheckpointError(f"{bundle.path}: the tokenizer has {len(bundle.tokenizer)} tokens but the model's "
                              f"embedding table has {rows} rows")
    return bundle


def load_vlkit(path: Path, config: dict, device: Any, dtype: Optional[torch.dtype]) -> Bundle:
    """A vlkit checkpoint with vlkit's tokenizer and ChatML prompts."""
    model, vq = load_vlkit_parts(path, device, dtype)
    return check_vocab(Bundle(model, Tokenizer.from_file(path / TOKENIZER_FILE), path=path, vq=vq))


CHECKPOINT_FORMATS["vlkit"] = CheckpointFormat(
    claims=lambda config: is_vlkit_config(config) and config.get("prompt_format") is None, load=load_vlkit)
