"""Text tokenizer over Hugging Face `tokenizers`: train a byte-level BPE or load a `tokenizer.json`.

User text is text: `encode` splits special tokens (`<|im_start|>`, `<|image_pad|>` ...) into plain characters,
so text from users, data samples and eval prompts can never open a turn or claim an image slot; only the chat
template (vlkit/chat.py) puts control tokens into a sequence, by id. The grounding tags (`<ref>`, `<box>` ...) are
words of the grounding text format that prompts and answers write, so they are added tokens but not special: they
stay single ids in text. Digits are split one per token so that box coordinates and numbers are spelled digit
by digit (a tiny model learns them far more easily than merged number pieces).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from vlkit.errors import CheckpointError

PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
REF_START, REF_END, BOX_START, BOX_END = "<ref>", "</ref>", "<box>", "</box>"
GEN_START = "<|gen_start|>"
IMAGE_PLACEHOLDER = "<image>"  # in sample text only; the processor expands it (never a token)
VIDEO_PLACEHOLDER = "<video>"  # likewise for a video clip

SPECIAL_TOKENS = [PAD, IM_START, IM_END, VISION_START, IMAGE_PAD, VISION_END, REF_START, REF_END, BOX_START,
                  BOX_END, GEN_START]  # trained into every tokenizer before the BPE vocabulary, in id order
GROUNDING_TOKENS = [REF_START, REF_END, BOX_START, BOX_END]  # text-level: single ids, also in user text
CONTROL_TOKENS = [t for t in SPECIAL_TOKENS if t not in GROUNDING_TOKENS]  # only the template inserts these
# Control tokens added after the BPE is trained: their ids follow the trained vocabulary, so adding them changed no
# earlier id and no merge. `<|video_pad|>` is the slot of a video clip's tokens (vlkit/chat.py). A tokenizer file
# written before it lacks it and is loaded as it is (same ids, `video_pad_id` None): such a checkpoint's model
# fills clips into image pads, frame by frame, as before. As text they are characters like every control token.
VIDEO_PAD = "<|video_pad|>"
RESERVED_TOKENS = [VIDEO_PAD]


class Tokenizer:
    """A thin wrapper giving vlkit's special-token ids by name."""

    bos_token: Optional[str] = None  # vlkit's prompts have no BOS
    video_pad_id: Optional[int] = None  # RESERVED_TOKENS: None when the tokenizer file lacks <|video_pad|>

    def __init__(self, hf_tokenizer, chat_template: Optional[str] = None):
        self.chat_template = chat_template  # a Jinja template for HF models; None: vlkit's ChatML
        missing = [t for t in SPECIAL_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:  # HF tokenizers of real LMs lack some of ours; add them (they get new ids at the end)
            hf_tokenizer.add_special_tokens(missing)
        self.hf = not_special(hf_tokenizer, GROUNDING_TOKENS)
        self.text_hf = text_encoder(self.hf)
        self.pad_id = self.token_id(PAD)
        self.im_start_id = self.token_id(IM_START)
        self.im_end_id = self.token_id(IM_END)
        self.vision_start_id = self.token_id(VISION_START)
        self.image_pad_id = self.token_id(IMAGE_PAD)
        self.vision_end_id = self.token_id(VISION_END)
        self.gen_start_id = self.token_id(GEN_START)
        self.video_pad_id = self.hf.token_to_id(VIDEO_PAD)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.text_hf.encode_special_tokens = True  # not part of a tokenizer's pickle (DataLoader workers)

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
        tok.add_special_tokens(RESERVED_TOKENS)  # after training: the vocabulary and merges are the same as without
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> "Tokenizer":
        """A tokenizer.json, or a folder holding one (a Hugging Face tokenizer folder); vlkit's special tokens
        that it lacks are added."""
        path = Path(path)
        if path.is_dir():
            if not (path / "tokenizer.json").is_file():
                raise CheckpointError(f"tokenizer folder {path} has no tokenizer.json (vlkit reads fast tokenizers; "
                                      "write one with transformers: AutoTokenizer.from_pretrained(DIR)"
                                      ".save_pretrained(DIR))")
            path = path / "tokenizer.json"
        return cls(read_tokenizer_json(path))

    def save(self, path: str | Path) -> None:
        self.hf.save(str(path))

    def save_pretrained(self, directory: str | Path) -> None:
        """The tokenizer's files in a checkpoint directory."""
        self.save(Path(directory) / "tokenizer.json")

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer."""
        return [self.im_end_id]

    # -- use -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return i

    def encode(self, text: str) -> list[int]:
        """Text -> ids, special tokens in the text split as plain characters (see the module docstring)."""
        return self.text_hf.encode(text, add_special_tokens=False).ids

    def special_ids(self) -> set[int]:
        """Ids of the special tokens: no `encode` result contains one."""
        return {i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        # skip_special keeps <ref>/<box> text (not special): grounding answers are read from it
        return self.hf.decode([i for i in ids if i < len(self)], skip_special_tokens=skip_special)


def text_encoder(hf_tokenizer):
    """A copy of `hf_tokenizer` that encodes special tokens written in text as plain characters (`tokenizers`'
    `encode_special_tokens`, the setting behind transformers' `split_special_tokens`)."""
    from tokenizers import Tokenizer as HFTokenizer

    copy = HFTokenizer.from_str(hf_tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy


def not_special(hf_tokenizer, tokens: list[str]):
    """`hf_tokenizer` with the added `tokens` marked non-special (same ids), so that text keeps them as single
    ids; tokenizer.json files written before this rule had them special."""
    from tokenizers import Tokenizer as HFTokenizer

    data = json.loads(hf_tokenizer.to_str())
    flagged = [t for t in data["added_tokens"] if t["content"] in tokens and t["special"]]
    if not flagged:
        return hf_tokenizer
    for t in flagged:
        t["special"] = False
    return HFTokenizer.from_str(json.dumps(data))


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
