"""Length grouping (`data.group_by_length: true`): global batches of samples of similar length, so that a batch of
mixed image sizes pads little.

A sample's length is what it costs the model: its token count, text plus N image pads per image (N from the
model's `tokens_per_image` at the size the processor gives it; a video clip: its tokens_per_clip), i.e. the
length of its encoded `input_ids` (vlkit.data.collate.sample_length).

The feeds' contract stays as it is (vlkit/data/feed.py: global sample g is a pure function of (seed, g); the
position is the number of global samples taken). Grouping only permutes g inside a bounded look-ahead window of
`window` global batches: window w holds g in [w * B * window, (w + 1) * B * window) (B = the global batch size);
its samples are measured, sorted by (length, g), cut into `window` batches of B, and those batches are taken in
an order drawn from (seed, w). So

- the step at position p (a multiple of B) takes batch (p // B) % window of window p // (B * window): a pure
  function of (seed, p), the same on every rank, and exact on resume (the saved position is unchanged);
- every g is taken exactly once, and each rank takes its strided share of each batch (disjoint across ranks);
- an endless stream needs no end: the window is the only look-ahead.

The cost: to sort a window, each rank (each DataLoader worker) reads and measures all of its samples, not only
its own share (images are decoded and resized, text is tokenized), and then reads and encodes its own share as
usual. A window is measured once per process and cached.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

SEED_STRIDE = 1_000_003  # as vlkit.data.feed: (seed, window) -> one generator seed


class LengthGrouping:
    """The global sample indices of each global batch, grouped by length within windows of `window` batches.
    `measure(sample)` -> the sample's length (0 for a sample that cannot be read or encoded: it is skipped, and
    counted, when its batch is encoded)."""

    def __init__(self, measure: Callable[[Optional[dict]], int], window: int, seed: int):
        if window < 1:
            raise ValueError(f"a length-grouping window needs at least one batch, got {window}")
        self.measure, self.window, self.seed = measure, window, seed
        self._plan: tuple[Optional[tuple[int, int]], list[list[int]]] = (None, [])  # (window, batch size) -> plan

    def batch(self, start: int, batch_size: int, read: Callable[[int], Optional[dict]]) -> list[int]:
        """The global sample indices of the global batch at position `start`; `read(g)` gives global sample g."""
        if start % batch_size:
            raise ValueError(f"length grouping: position {start} is not a multiple of the batch size {batch_size} "
                             f"(was the run resumed with another batch_size?)")
        span = batch_size * self.window
        w, j = start // span, (start % span) // batch_size
        if self._plan[0] != (w, batch_size):
            self._plan = ((w, batch_size), self.plan(w, batch_size, read))
        return self._plan[1][j]

    def plan(self, w: int, batch_size: int, read: Callable[[int], Optional[dict]]) -> list[list[int]]:
        """Window w's batches in the order they are taken."""
        first = w * batch_size * self.window
        indices = range(first, first + batch_size * self.window)
        lengths = {g: self.measure(read(g)) for g in indices}
        ordered = sorted(indices, key=lambda g: (lengths[g], g))
        batches = [ordered[k:k + batch_size] for k in range(0, len(ordered), batch_size)]
        order = torch.randperm(self.window, generator=torch.Generator().manual_seed(self.seed * SEED_STRIDE + w))
        return [batches[int(k)] for k in order]


def padding_share(lengths: list[list[int]]) -> float:
    """The share of padded positions when each batch (a list of sample lengths) is right-padded to its longest."""
    total = sum(max(b) * len(b) for b in lengths if b)
    return 1.0 - sum(map(sum, lengths)) / total if total else 0.0
