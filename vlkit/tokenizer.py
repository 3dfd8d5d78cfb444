"""Text tokenizer over Hugging Face `tokenizers`: train a byte-level BPE or load a `tokenizer.json`.

Special tokens are single ids and never split. Digits are split one per token so that box coordinates and
numbers are spelled digit by digit (a tiny model learns them far more easily than merged number pieces).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from vlkit.errors import CheckpointError

PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
REF_START, REF_END, BOX_START, BOX_END = "<ref>", "</ref>", "<box>", "</box>"
GEN_START = "<|gen_start|>"
IMAGE_PLACEHOLDER = "<image>"  # in sample text only; the processor expands it (never a token)

SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, IMAGE_PAD, VISION_END, REF_START, REF_END, BOX_START,
                  BOX_END, GEN_START]


class Tokenizer:
    """A thin wrapper giving vlkit's special-token ids by name."""

    def __init__(self, hf_tokenizer, chat_template: Optional[str] = None):
        self.hf = hf_tokenizer
        self.chat_template = chat_template  # a Jinja template for HF models; None: vlkit's ChatML
        missing = [t for t in SPECIAL_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:  # HF tokenizers of real LMs lack some of ours; add them (they get new ids at the end)
            hf_tokenizer.add_special_tokens(missing)
        self.pad_id = self.token_id(PAD)
        self.im_start_id = self.token_id(IM_START)
        self.im_end_id = self.token_id(IM_END)
        self.vision_start_id = self.token_id(VISION_START)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        self.vision_end_id = self.token_id(VISION_END)
        self.gen_start_id = self.token_id(GEN_START)

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        return cls(read_tokenizer_json(path))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    # -- use -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        if skip_special:
            drop = {self.pad_id, self.im_start_id, self.im_end_id, self.vision_start_id, self.image_pad_id,
                    self.vision_end_id, self.gen_start_id}
            ids = [i for i in ids if i not in drop]
        # keep <ref>/<box> text: grounding answers are read from it
        return self.hf.decode([i for i in ids if i < len(self)], skip_special_tokens=False)


def read_tokenizer_json(path: str | Path):
    """A `tokenizers.Tokenizer` from a tokenizer.json; CheckpointError if it is missing or unreadable."""
    from tokenizers import Tokenizer as HFTokenizer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"tokenizer file {path} does not exist")
    try:
        return HFTokenizer.from_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"tokenizer file {path} cannot be read: {exc}") from None
