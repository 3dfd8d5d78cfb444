"""Feeds: where a training stage takes each global batch from, with a position that makes resume exact.

`ListFeed` walks a list of encoded examples in epochs of a seeded permutation. `StreamFeed` reads an endless,
deterministic stream (the synthetic world): global sample `g` is a pure function of (source seed, g), so a batch
needs no stored data, every rank encodes only its own share (disjoint across ranks), and the position is one
counter. Both give each rank its strided share of the same global batch.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from vlkit.data.collate import EncodeStats, Example


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The global sample order of an epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def shard(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of one global batch (strided, so every sample goes to exactly one rank)."""
    return list(batch[rank::world])


class ListFeed:
    """Encoded examples in memory, in epochs of a seeded permutation."""

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("a ListFeed needs at least one example")
        self.examples, self.seed = examples, seed
        self.epoch, self.pos = 0, 0
        self.order = epoch_order(len(examples), 0, seed)

    def __len__(self) -> int:
        return len(self.examples)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = epoch_order(len(self.examples), self.epoch, self.seed)

    def next_batch(self, batch_size: int, rank: int, world: int) -> list[Example]:
        idx: list[int] = []
        while len(idx) < batch_size:
            if self.pos >= len(self.order):
                self.epoch, self.pos = self.epoch + 1, 0
                self.order = epoch_order(len(self.examples), self.epoch, self.seed)
            take = min(batch_size - len(idx), len(self.order) - self.pos)
            idx += self.order[self.pos:self.pos + take]
            self.pos += take
        return [self.examples[i] for i in shard(idx, rank, world)]


class StreamFeed:
    """An endless stream: `sample(g)` makes global sample g (a dict), `encode` turns a list of them into
    examples (skipping, and counting, what fails). The position is the number of global samples consumed."""

    def __init__(self, sample: Callable[[int], dict], encode: Callable[[list[dict], EncodeStats], list[Example]]):
        self.sample, self.encode = sample, encode
        self.pos = 0
        self.stats = EncodeStats()

    def __len__(self) -> int:
        raise TypeError("a stream has no length: give the stage `steps`, not `epochs`")

    def state(self) -> dict:
        return {"epoch": 0, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.pos = state["pos"]

    def next_batch(self, batch_size: int, rank: int, world: int) -> list[Example]:
        mine = shard(range(self.pos, self.pos + batch_size), rank, world)
        self.pos += batch_size
        return self.encode([self.sample(g) for g in mine], self.stats)


def as_feed(examples, seed: int) -> "ListFeed | StreamFeed":
    """A feed as it is, or a list of examples wrapped in a ListFeed."""
    return examples if isinstance(examples, (ListFeed, StreamFeed)) else ListFeed(list(examples), seed)


def mixture(sources: Sequence[Callable[[int], dict]], weights: Sequence[float], seed: int
            ) -> Callable[[int], dict]:
    """One stream from several: global sample g comes from a source drawn by weight with a generator seeded by
    (seed, g), and is that source's sample g. Deterministic per g, so no state beyond the position."""
    if len(sources) == 1:
        return sources[0]
    total = float(sum(weights))
    cum = torch.tensor(list(weights), dtype=torch.float64).cumsum(0) / total

    def sample(g: int) -> dict:
        u = torch.rand(1, generator=torch.Generator().manual_seed(seed * 1_000_003 + g), dtype=torch.float64)
        return sources[min(int(torch.searchsorted(cum, u).item()), len(sources) - 1)](g)

    return sample




