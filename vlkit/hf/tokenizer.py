"""The tokenizer of a Hugging Face model, used as it shipped (tokenizer.json, tokenizer_config.json, chat template,
eos ids), and `chat_tools`: the (tokenizer, processor) pair of a model in an HF prompt format."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from vlkit.config import ModelConfig
from vlkit.errors import CheckpointError
from vlkit.hf.template import PROMPT_FORMATS, HFChatProcessor, read_chat_template
from vlkit.io import read_json, write_json
from vlkit.tokenizer import Tokenizer, read_tokenizer_json, text_encoder

GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # kept as the model shipped them


def _token_str(value: Any) -> Optional[str]:
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer(Tokenizer):
    """A real model's tokenizer, used as is: no vlkit special tokens are added (the model's embedding table
    has no rows for them); the image token and the stop tokens are the model's own. `save_pretrained` writes
    it back as the model shipped it (tokenizer.json, tokenizer_config.json, chat template, eos ids)."""

    def __init__(self, hf_tokenizer, chat_template: str, image_token_id: int, bos_token: Optional[str],
                 eos_token: Optional[str], stop_ids: Sequence[int], pad_id: int, files: Optional[dict] = None):
        self.hf = hf_tokenizer  # encodes what the template writes (its special tokens are matched)
        self.text_hf = text_encoder(hf_tokenizer)  # encodes user text (special tokens split)
        self.chat_template = chat_template
        token = hf_tokenizer.id_to_token(image_token_id)
        if token is None:
            raise CheckpointError(f"the config's image token id {image_token_id} is not in the tokenizer "
                                  f"({len(self)} tokens)")
        self.image_token, self.image_pad_id = token, image_token_id
        self.bos_token, self.eos_token = bos_token, eos_token
        self._stop_ids = [int(i) for i in stop_ids]
        if not self._stop_ids:
            raise CheckpointError("the model names no eos token (config.json / generation_config.json / "
                                  "tokenizer_config.json): generation could not stop")
        self.im_end_id = self._stop_ids[0]
        self.pad_id = pad_id
        self.files = dict(files or {})
        self.im_start_id = self.vision_start_id = self.vision_end_id = self.gen_start_id = None

    @property
    def stop_ids(self) -> list[int]:
        return list(self._stop_ids)

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.hf.save(str(directory / "tokenizer.json"))
        config = dict(self.files.get("tokenizer_config.json") or {"tokenizer_class": "PreTrainedTokenizerFast"})
        config.update(chat_template=self.chat_template, bos_token=self.bos_token, eos_token=self.eos_token,
                      pad_token=self.hf.id_to_token(self.pad_id))
        write_json(directory / "tokenizer_config.json", config)
        if "special_tokens_map.json" in self.files:
            write_json(directory / "special_tokens_map.json", self.files["special_tokens_map.json"])
        (directory / "chat_template.jinja").write_text(self.chat_template)
        write_json(directory / GENERATION_CONFIG_FILE, {"eos_token_id": self.stop_ids})


def load_hf_tokenizer(path: Path, c: dict, image_token_id: int):
    """The tokenizer of an HF model directory (or of a vlkit checkpoint that keeps an imported model's own
    tokenizer); `c` is its config.json (eos ids), `image_token_id` the config's image token."""
    tj = path / "tokenizer.json"
    if not tj.is_file():
        raise CheckpointError(f"{path} has no tokenizer.json (vlkit reads fast tokenizers only)")
    raw = read_tokenizer_json(tj)
    files = {name: read_json(path / name) for name in TOKENIZER_FILES if (path / name).is_file()}
    tc = files.get("tokenizer_config.json", {})
    template = read_chat_template(path)
    if template is None:
        raise CheckpointError(f"{path} has no chat template (chat_template.jinja, chat_template.json or "
                              f"tokenizer_config.json `chat_template`)")
    bos, eos = _token_str(tc.get("bos_token")), _token_str(tc.get("eos_token"))
    gen = read_json(path / GENERATION_CONFIG_FILE) if (path / GENERATION_CONFIG_FILE).is_file() else {}
    text = c.get("text_config") or c
    stops: list[int] = []
    for src in (gen.get("eos_token_id"), text.get("eos_token_id"), c.get("eos_token_id")):
        for i in (src if isinstance(src, list) else [src]):
            if i is not None and int(i) not in stops:
                stops.append(int(i))
    if eos and raw.token_to_id(eos) is not None and raw.token_to_id(eos) not in stops:
        stops.append(raw.token_to_id(eos))
    pad = _token_str(tc.get("pad_token"))
    pad_id = raw.token_to_id(pad) if pad and raw.token_to_id(pad) is not None else (stops[0] if stops else 0)
    return HFTokenizer(raw, template, image_token_id, bos, eos, stops, pad_id, files)


def chat_tools(path: Path, c: dict, cfg: ModelConfig):
    """(tokenizer, processor) of a model in an HF prompt format (cfg.prompt_format): the model's own tokenizer
    and chat template; each image token of the template expands per the format."""
    tok = load_hf_tokenizer(path, c, cfg.image_token_id)
    return tok, HFChatProcessor(tok, PROMPT_FORMATS[cfg.prompt_format](tok.image_token, tok.hf))
