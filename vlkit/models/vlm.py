"""VisionLanguageModel: vision encoder -> connector -> decoder LM, merged per the image-token contract.

Each `<|image_pad|>` position of `input_ids` is filled, in order, with one connector output embedding
(`masked_scatter`); the counts must agree exactly, else `ImageTokenError`. Logits are computed only at positions
where a loss is taken (training) or where the caller asks (generation).

Vision as target (`vision_target: codes`, VLUAS): visual codes are vocabulary ids `text_vocab_size + code`. The
data labels image tokens with their codes (and a generated image's tokens are those code ids in the input too),
so one cross-entropy covers both; code tokens are weighted by `vision_loss_weight`. With residual codes (vq.depth
D > 1) a code token's input embedding is the sum of its D code embeddings and the depth transformer predicts codes
1..D-1 from the hidden state that predicts code 0.

Dense prediction (NTP-M, `dense_prediction`): at each image token of a segmentation sample the ordinary LM head
scores the text vocabulary; per-label BCE over the positive class-name tokens and the top-k scoring negatives,
mean per patch. The loss is a per-target sum normalised by `num_tokens` (labels + patches), so micro-batches and
ranks combine exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.chat import IGNORE
from vlkit.config import ConfigError, ModelConfig, model_config_from_dict, to_dict
from vlkit.errors import ImageTokenError
from vlkit.io import WEIGHTS_FILE
from vlkit.models.connectors import build_connector
from vlkit.models.depth import DepthTransformer
from vlkit.models.language import KVCache, LanguageModel, padding_positions
from vlkit.models.rope import mrope_positions
from vlkit.models.vision import VisionEncoder, init_weights
from vlkit.models.weights import check_state, checkpoint_dtype, load_state, read_weights, save_weights

__all__ = ["IGNORE", "VisionLanguageModel", "check_state", "checkpoint_dtype", "load_state", "ntp_m_loss"]


class VisionLanguageModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg.vision)
        self.connector = build_connector(cfg.connector, cfg.vision.hidden_size, cfg.text.hidden_size)
        self.language = LanguageModel(cfg.text)
        self.depth = None
        if cfg.vision_target == "codes" and cfg.vq.depth > 1:
            self.depth = DepthTransformer(cfg.text.hidden_size, cfg.vq.codebook_size, cfg.vq.depth,
                                          num_layers=cfg.depth_layers)
        init_weights(self, cfg.init)

    @property
    def code_offset(self) -> Optional[int]:
        """Vocabulary id of visual code 0 (None unless vision_target is 'codes')."""
        return self.cfg.text_vocab_size if self.cfg.vision_target == "codes" else None

    def input_embeddings(self) -> nn.Embedding:
        """The token embedding table (text tokens, then visual codes for VLUAS models)."""
        return self.language.embed_tokens

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Visual codes (..., D) -> input embeddings (..., hidden): the sum of the D code-token embeddings."""
        return self.language.embed_tokens(codes + self.code_offset).sum(-2)

    # -- geometry --------------------------------------------------------------------------------------
    def tokens_per_image(self, height: int, width: int) -> int:
        return self.connector.num_tokens(*self.vision.grid_size(height, width))

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (rows, cols) grid of the LM tokens of a height x width image (M-RoPE's height/width ids)."""
        return self.connector.token_grid(*self.vision.grid_size(height, width))

    def temporal_patches(self, frames: int) -> int:
        """How many temporal patches a clip of `frames` frames makes: ceil(frames / vision.temporal_patch_size)
        (a tower without temporal patches encodes each frame as an image)."""
        return -(-frames // self.cfg.vision.temporal_patch_size)

    def tokens_per_clip(self, frames: int, height: int, width: int) -> int:
        """LM tokens of a clip of `frames` frames of height x width pixels (temporal patches x tokens per image)."""
        return self.temporal_patches(frames) * self.tokens_per_image(height, width)

    def item_grid(self, item: torch.Tensor) -> tuple:
        """The token grid of an image (3, H, W): (rows, cols); of a clip (T, 3, H, W): (temporal patches, rows, cols)."""
        grid = self.token_grid(int(item.shape[-2]), int(item.shape[-1]))
        return grid if item.dim() == 3 else (self.temporal_patches(int(item.shape[0])), *grid)

    def rope_positions(self, input_ids: torch.Tensor, images: Optional[Sequence[torch.Tensor]],
                       position_ids: Optional[torch.Tensor] = None,
                       attention_mask: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The LM's position ids: `position_ids` (B, T) as given (None: from the padding mask, or 0..T-1); with
        M-RoPE (text.rope: mrope) (3, B, T), image tokens on their token grid (vlkit.models.rope.mrope_positions)."""
        if self.cfg.text.rope != "mrope":
            return position_ids
        if position_ids is None:
            position_ids = (padding_positions(attention_mask) if attention_mask is not None else
                            torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape))
        grids = [self.item_grid(im) for im in images or ()]
        return mrope_positions(input_ids, self.cfg.image_token_id, grids, position_ids, self.cfg.video_token_id,
                               self.cfg.text.mrope_time_step)

    # -- embeddings ------------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Images (3, H, W), any mix of sizes -> one (N_i, D_text) tensor each, in order. With a native encoder
        (vision.position: rope2d) all images run as one packed sequence with per-image attention; otherwise images
        of the same size are encoded together. A clip (T, 3, H, W) gives its temporal patches' tokens one after the
        other (without temporal patches, vision.temporal_patch_size 1: its frames')."""
        if self.cfg.vision.position == "rope2d":
            if not images:
                return []
            feats = self.vision.forward_packed(images)
            out = []
            for f, img in zip(feats, images):
                grid = self.vision.grid_size(*img.shape[-2:])
                out.append(self.connector(f.view(-1, grid[0] * grid[1], f.shape[-1]), grid).flatten(0, 1))
            return out
        frames = [f for img in images for f in (img if img.dim() == 4 else img[None])]  # a clip: frame by frame
        out: list[Optional[torch.Tensor]] = [None] * len(frames)
        groups: dict[tuple, list[int]] = {}
        for i, img in enumerate(frames):
            groups.setdefault(tuple(img.shape), []).append(i)
        for shape, idx in groups.items():
            pixels = torch.stack([frames[i] for i in idx])
            grid = self.vision.grid_size(shape[1], shape[2])
            feats = self.connector(self.vision(pixels), grid)
            for j, i in enumerate(idx):
                out[i] = feats[j]
        counts = [img.shape[0] if img.dim() == 4 else 1 for img in images]
        return [torch.cat(part) for part in _split(out, counts)]  # type: ignore[arg-type]

    def embed(self, input_ids: torch.Tensor, images: Optional[Sequence[torch.Tensor]] = None,
              image_features: Optional[torch.Tensor] = None, depth_codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings with image features scattered into the `<|image_pad|>` positions (and, for residual
        visual-code tokens in the input, their deeper codes added). With a video token (ModelConfig.video_token_id)
        the features of clips (T, 3, H, W) fill its positions, those of images the image pads; without one, all
        fill the image pads in order."""
        pad = input_ids == self.cfg.image_token_id
        video = None if self.cfg.video_token_id is None else input_ids == self.cfg.video_token_id
        embeds = self.language.embed_tokens(input_ids.masked_fill(pad if video is None else pad | video, 0))
        if depth_codes is not None and self.depth is not None:
            deep = (input_ids >= self.code_offset) & (depth_codes[..., 1] >= 0)
            if deep.any():
                extra = self.language.embed_tokens(depth_codes[deep][:, 1:] + self.code_offset).sum(1)
                embeds = embeds.index_put((deep,), extra, accumulate=True)
        clip_features: list[torch.Tensor] = []
        if image_features is None and images:
            feats = self.encode_images(images)
            if video is not None:
                clip_features = [f for f, im in zip(feats, images) if im.dim() == 4]
                feats = [f for f, im in zip(feats, images) if im.dim() == 3]
            image_features = torch.cat(feats, 0) if feats else None
        if video is not None:
            embeds = self._scatter(embeds, video, clip_features, "video")
        return self._scatter(embeds, pad, [] if image_features is None else [image_features], "image")

    @staticmethod
    def _scatter(embeds: torch.Tensor, slots: torch.Tensor, feats: list[torch.Tensor], noun: str) -> torch.Tensor:
        """`feats` (concatenated in order) into the `slots` positions of `embeds`; ImageTokenError unless the
        counts agree."""
        n_slots, n_feats = int(slots.sum()), sum(f.shape[0] for f in feats)
        if n_slots != n_feats:
            pad = "<|image_pad|>" if noun == "image" else "<|video_pad|>"
            raise ImageTokenError(
                f"the prompt has {n_slots} {pad} positions but the {noun}s give {n_feats} embeddings; "
                f"each <{noun}> must expand to exactly the number of tokens it produces "
                f"(see VisionLanguageModel.tokens_per_image / tokens_per_clip)")
        if not n_slots:
            return embeds
        return embeds.masked_scatter(slots.unsqueeze(-1), torch.cat(feats, 0).to(embeds.dtype))

    # -- forward ---------------------------------------------------------------------------------------
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language.lm_head(hidden)

    def forward(self, input_ids: torch.Tensor, images: Optional[Sequence[torch.Tensor]] = None,
                labels: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, attn_mask_4d: Optional[torch.Tensor] = None,
                return_logits: bool = False, depth_codes: Optional[torch.Tensor] = None,
                dense_targets: Optional[torch.Tensor] = None, run_language: bool = True,
                logits_at: Optional[torch.Tensor] = None) -> dict:
        """labels are aligned with input_ids (label[i] is the token at i, IGNORE where no loss); the shift is
        done here. depth_codes (B, T, D): residual codes of visual-code tokens (-1 elsewhere); dense_targets
        (B, T, P): NTP-M positive token ids at image tokens (-1 padded). Returns {"loss", "num_tokens",
        "text_loss", "vision_loss", "dense_loss" (means, where present), "logits" (if asked)}. logits_at (B, T)
        bool: "logits" (M, V) at those positions only, row-major (a grpo stage scores its completion tokens).
        run_language=False (a `vision` stage, dense_from: connector): the loss is the per-patch loss alone and
        the LM is not run."""
        embeds = self.embed(input_ids, images, depth_codes=depth_codes)
        if not run_language:
            if self.cfg.dense_from != "connector" or dense_targets is None:
                raise ValueError("run_language=False needs dense_from: connector and dense_targets")
            loss, n = self.dense_loss(embeds, dense_targets)
            return {"loss": loss / max(n, 1), "num_tokens": n, "dense_loss": loss.detach() / max(n, 1)}
        position_ids = self.rope_positions(input_ids, images, position_ids, attention_mask)
        hidden = self.language(embeds, position_ids=position_ids, attention_mask=attention_mask,
                               attn_mask_4d=attn_mask_4d)
        out: dict = {}
        if labels is not None:
            target = labels[:, 1:]
            keep = target != IGNORE
            h = hidden[:, :-1][keep]  # logits only where a loss is taken
            t = target[keep]
            n = int(keep.sum())
            ce = F.cross_entropy(self.logits(h).float(), t, reduction="none")
            total = ce.sum()
            if self.code_offset is not None:
                is_code = t >= self.code_offset
                n_code = int(is_code.sum())
                vision_sum = ce[is_code].sum()
                total = total + (self.cfg.vision_loss_weight - 1.0) * vision_sum
                # detached tensors, not floats: no extra device sync per step
                out["vision_loss"] = vision_sum.detach() / max(n_code, 1)
                out["text_loss"] = ce[~is_code].detach().sum() / max(n - n_code, 1)
                if self.depth is not None and depth_codes is not None:
                    codes = depth_codes[:, 1:][keep]
                    deep = is_code & (codes[:, 0] >= 0)
                    if deep.any():  # codes 1..D-1 from the hidden state that predicts code 0, summed per token
                        d_loss = self.depth.loss(h[deep], codes[deep], start_depth=1) * int(deep.sum())
                        total = total + self.cfg.vision_loss_weight * d_loss
            if dense_targets is not None and self.cfg.dense_prediction:
                d_sum, n_patches = self.dense_loss(embeds if self.cfg.dense_from == "connector" else hidden,
                                                   dense_targets)
                if n_patches:
                    total = total + self.cfg.dense_loss_weight * d_sum
                    out["dense_loss"] = d_sum.detach() / n_patches
                    n += n_patches
            out["loss"] = total / max(n, 1)
            out["num_tokens"] = n
        if return_logits:
            out["logits"] = self.logits(hidden)
        elif logits_at is not None:
            out["logits"] = self.logits(hidden[logits_at])
        return out

    def dense_loss(self, source: torch.Tensor, dense_targets: torch.Tensor) -> tuple[torch.Tensor, int]:
        """NTP-M summed over the image tokens that have targets: the LM head scores `source` (the LM's output,
        or the connector's) against each patch's words. Returns (sum, number of patches)."""
        at = dense_targets[..., 0] >= 0
        if not at.any():
            return source.sum() * 0.0, 0
        limit = self.cfg.text_vocab_size or self.cfg.text.vocab_size
        dense_logits = self.logits(source[at]).float()[:, :limit]
        return ntp_m_loss(dense_logits, dense_targets[at], self.cfg.dense_negatives), int(at.sum())

    # -- decoding (what vlkit.infer schedules) ---------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache(self.cfg.text.num_layers)

    def step_hidden(self, embeds: torch.Tensor, cache: KVCache, position_ids: torch.Tensor,
                    attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One step over new embeddings (B, T, H) with a KV cache -> hidden state of the last position (B, H)."""
        hidden = self.language(embeds, position_ids=position_ids, attention_mask=attention_mask, cache=cache)
        return hidden[:, -1]

    def forward_step(self, embeds: torch.Tensor, cache: KVCache, position_ids: torch.Tensor,
                     attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One generation step over new embeddings with a KV cache -> logits of the last position (B, V)."""
        return self.logits(self.step_hidden(embeds, cache, position_ids, attention_mask)).float()

    def prefill(self, input_ids: torch.Tensor, cache: KVCache, attention_mask: Optional[torch.Tensor] = None,
                images: Optional[Sequence[torch.Tensor]] = None,
                hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run left-padded prompts (B, T) (mask 0 at padding; positions count from each row's first real token)
        into `cache`. -> (logits (B, V) of the last position, or its hidden state (B, H) when `hidden`;
        the position of each row's next token (B,))."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = self.rope_positions(input_ids, images, padding_positions(attention_mask))
        step = self.step_hidden if hidden else self.forward_step
        out = step(self.embed(input_ids, images), cache, positions, attention_mask=attention_mask)
        # the next token's position: the largest so far + 1 (M-RoPE: text after an image continues from there)
        return out, (positions.amax(0).amax(-1) if positions.dim() == 3 else positions[:, -1]) + 1

    def decode(self, tokens: torch.Tensor, cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) at `positions` (B,) -> logits of the next token (B, V)."""
        return self.forward_step(self.language.embed_tokens(tokens[:, None]), cache, positions[:, None],
                                 attention_mask=torch.ones_like(tokens)[:, None])

    def decode_codes(self, codes: torch.Tensor, cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """Feed one visual-code token at `positions` (B,): codes (1, D), the same in every row of the cache, or
        (B, D), one per row -> the hidden state that predicts the next code (B, H)."""
        emb = self.embed_codes(codes[:, None]).expand(positions.shape[0], 1, -1)
        return self.step_hidden(emb, cache, positions[:, None], attention_mask=torch.ones_like(positions)[:, None])

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, H) -> logits of visual code 0 (B, codebook_size), float."""
        if self.code_offset is None:
            raise ConfigError("this model does not predict visual codes (vision_target is not 'codes')")
        return self.logits(hidden)[:, self.code_offset:self.code_offset + self.cfg.vq.codebook_size].float()

    def sample_codes(self, hidden: torch.Tensor, first: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Complete code 0 `first` (B, 1) of each position to all D residual codes (B, D): the deeper ones are
        sampled by the depth transformer from `hidden` (B, H); with depth 1 this is `first` itself."""
        if self.depth is None:
            return first
        return self.depth.sample(hidden, temperature, top_k, top_p, generator, prefix=first)

    def patch_scores(self, input_ids: torch.Tensor, images: Sequence[torch.Tensor],
                     token_ids: Sequence[int]) -> torch.Tensor:
        """NTP-M dense prediction for one prompt (1, T): the LM head's scores of `token_ids` at each image token
        -> (N, len(token_ids)) float, in image-token order."""
        hidden = self.language(self.embed(input_ids, images), self.rope_positions(input_ids, images))[0]
        at = input_ids[0] == self.cfg.image_token_id
        tokens = torch.as_tensor(list(token_ids), device=input_ids.device)
        return self.logits(hidden[at]).float()[:, tokens]

    # -- growing into VLUAS ----------------------------------------------------------------------------
    def with_visual_codes(self, vq_cfg, vision_loss_weight: float = 1.0, depth_layers: int = 2,
                          seed: int = 0) -> "VisionLanguageModel":
        """A VLUAS copy of this vision-as-input model (e.g. one built from a pretrained LM): the vocabulary grows
        by the codebook, codes following every existing row; each new embedding (and, if untied, head) row is
        the mean of the existing rows plus a little noise, so the text distribution barely moves at step 0.
        Every other weight is kept; a depth transformer (vq.depth > 1) starts fresh."""
        from dataclasses import replace

        from vlkit.models.vq import check_code_grid

        if self.cfg.vision_target == "codes":
            raise ConfigError("the model already predicts visual codes (vision_target is 'codes')")
        rows = self.cfg.text.vocab_size
        cfg = replace(self.cfg, vq=vq_cfg, vision_target="codes", text_vocab_size=rows,
                      vision_loss_weight=vision_loss_weight, depth_layers=depth_layers,
                      text=replace(self.cfg.text, vocab_size=rows + vq_cfg.codebook_size))
        cfg.validate()
        check_code_grid(cfg)
        grown = VisionLanguageModel(cfg).to(next(self.parameters()).device)
        state = dict(self.state_dict())
        if cfg.text.tie_word_embeddings:
            del state["language.lm_head.weight"]  # the embedding matrix itself
        gen = torch.Generator().manual_seed(seed)
        for key in ("language.embed_tokens.weight", "language.lm_head.weight"):
            if key in state:
                old = state[key].float()
                noise = torch.randn(vq_cfg.codebook_size, old.shape[1], generator=gen).to(old.device)
                state[key] = torch.cat([old, old.mean(0) + 0.1 * old.std(0) * noise]).to(state[key].dtype)
        load_state(grown, state, "the model being grown", optional=[k for k in grown.state_dict()
                                                                     if k.startswith("depth.")])
        return grown.train(self.training)

    # -- persistence -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors into an existing directory (callers make the write atomic)."""
        state = dict(self.state_dict())
        if self.cfg.text.tie_word_embeddings:
            state.pop("language.lm_head.weight", None)
        save_weights(directory, to_dict(self.cfg), state, kind="1")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu",
                        dtype: Optional[torch.dtype] = None) -> "VisionLanguageModel":
        """dtype None: the dtype the weights were saved in."""
        cfg, state = read_weights(directory, "checkpoint", model_config_from_dict, device)
        model = cls(cfg).to(device=device, dtype=dtype or checkpoint_dtype(state))
        load_state(model, state, str(Path(directory) / WEIGHTS_FILE))
        return model.eval()


def _split(items: list, counts: Sequence[int]) -> list[list]:
    """`items` cut into consecutive runs of `counts` items."""
    out, at = [], 0
    for n in counts:
        out.append(items[at:at + n])
        at += n
    return out


def ntp_m_loss(logits: torch.Tensor, positives: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """NTP-M (Youtu-VL) summed over patches. logits (M, V) per patch; positives (M, P) token ids, -1 padded.

    Per patch: binary cross-entropy on the positive tokens (target 1) and on the `num_negatives` highest-scoring
    other tokens (target 0), averaged over those labels; every other token gets no loss and no gradient.
    """
    m, v = logits.shape
    spare = positives.masked_fill(positives < 0, v)  # padding goes to a spare column that is dropped
    pos = torch.zeros(m, v + 1, dtype=torch.bool, device=logits.device).scatter_(1, spare, True)[:, :v]
    k = min(num_negatives, logits.shape[1] - 1)
    negatives = logits.detach().masked_fill(pos, float("-inf")).topk(k, dim=1).indices
    chosen = pos.clone().scatter_(1, negatives, True)
    bce = F.binary_cross_entropy_with_logits(logits, pos.to(logits.dtype), reduction="none")
    return ((bce * chosen).sum(1) / chosen.sum(1)).sum()
