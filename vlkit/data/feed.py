"""Feeds: where a training stage takes each global batch from, with a position that makes resume exact.

One contract for every kind of data: global sample `g` (the g-th sample the run consumes, counted over all
ranks) is a pure function of (seed, g), so

- a finite collection (the records of a stage's files, vlkit/data/records.py, or encoded examples in memory)
  is walked in epochs: g is record `epoch_order(n, g // n, seed)[g % n]`;
- an endless stream (the synthetic world) is called with g itself;
- step k's global batch is g in [pos, pos + batch_size); each rank takes its strided share (disjoint across
  ranks) and encodes only that; the position saved in a checkpoint is `{"epoch": g // n, "pos": g % n}`
  (`{"epoch": 0, "pos": g}` for a stream), so a resumed run reads exactly what the uninterrupted one reads.

With `num_workers > 0`, `StreamFeed.batches` reads and encodes (decodes images, tokenizes) in
`torch.utils.data.DataLoader` worker processes: worker w of W makes this rank's share of the global batches
w, w + W, w + 2W, ... after the position, and the loader hands them back in batch order. What comes out is
identical for every `num_workers`; prefetched batches that are never taken are simply not counted.
"""
from __future__ import annotations

import multiprocessing
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from vlkit.data.collate import EncodeStats, Example
from vlkit.data.grouping import LengthGrouping
from vlkit.data.sources.base import DataError


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """The global sample order of an epoch: a permutation that depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).numpy()


def shard(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of one global batch (strided, so every sample goes to exactly one rank)."""
    return list(batch[rank::world])


def read_records(sample: Callable[[int], Optional[dict]], indices: Sequence[int], stats: EncodeStats) -> list[dict]:
    """The samples of `indices`; a record the reader skipped (None: it warned, naming file and line) is counted."""
    out = [sample(i) for i in indices]
    for _ in range(out.count(None)):
        stats.skip("unreadable_record", "a record could not be read (see the reader's warning)")
    return [s for s in out if s is not None]


SKIP_CHECK_AFTER = 1000  # samples encoded before a feed's skip share is judged (fewer: at the end of an epoch)


class StreamFeed:
    """Global batches of `sample(i)`, encoded by `encode(samples, stats) -> examples` (which skips, and counts,
    what fails; `sample(i)` may return None for a record that cannot be read, counted the same way).
    `length=None`: an endless stream, `sample` takes the global index; else a collection of `length` records
    walked in seeded epoch permutations. The position is the number of global samples taken. `max_skip`: a
    DataError once more than that share of this rank's samples failed to encode (corrupt images, samples too
    long, ...), judged after `SKIP_CHECK_AFTER` samples or one epoch, whichever comes first. `group`: global
    batches of samples of similar length (vlkit/data/grouping.py), else each batch is g in [pos, pos + B)."""

    def __init__(self, sample: Callable[[int], dict], encode: Callable[[list, EncodeStats], list[Example]],
                 length: Optional[int] = None, seed: int = 0, stats: Optional[EncodeStats] = None,
                 max_skip: Optional[float] = None, group: Optional[LengthGrouping] = None):
        if length is not None and length < 1:
            raise ValueError("a feed over a collection needs at least one record")
        self.sample, self.encode, self.length, self.seed, self.group = sample, encode, length, seed, group
        self.pos = 0  # global samples taken
        self.stats = stats if stats is not None else EncodeStats()
        self.max_skip = max_skip
        self._order: tuple[int, Optional[np.ndarray]] = (-1, None)  # the permutation of one epoch, cached

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("a stream has no length: give the stage `steps`, not `epochs`")
        return self.length

    @property
    def epoch(self) -> int:
        return self.pos // self.length if self.length else 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos - self.epoch * (self.length or 0)}

    def load_state(self, state: dict) -> None:
        self.pos = state["epoch"] * (self.length or 0) + state["pos"]

    def record(self, g: int) -> int:
        """Which record (or stream index) global sample g is."""
        if self.length is None:
            return g
        epoch = g // self.length
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.length, epoch, self.seed))
        return int(self._order[1][g % self.length])

    def global_batch(self, start: int, batch_size: int) -> list[int]:
        """The global sample indices of the global batch at position `start`: [start, start + batch_size), or,
        grouped by length, a batch of the look-ahead window that holds them."""
        if self.group is None:
            return list(range(start, start + batch_size))
        return self.group.batch(start, batch_size, lambda g: self.sample(self.record(g)))

    def make_batch(self, start: int, batch_size: int, rank: int, world: int, stats: EncodeStats) -> list[Example]:
        """This rank's share of the global batch at position `start`, encoded."""
        mine = shard(self.global_batch(start, batch_size), rank, world)
        return self.encode(read_records(self.sample, [self.record(g) for g in mine], stats), stats)

    def next_batch(self, batch_size: int, rank: int, world: int) -> list[Example]:
        stats = EncodeStats()  # per batch, so that only a batch with a bad sample warns
        out = self.make_batch(self.pos, batch_size, rank, world, stats)
        self.pos += batch_size
        self._took(stats, empty=not out)
        return out

    def batches(self, batch_size: int, rank: int, world: int, num_workers: int = 0) -> Iterator[list[Example]]:
        """This rank's share of each global batch from the position on, endlessly; the position advances as each
        is taken. num_workers > 0: made in DataLoader worker processes (close the iterator to stop them)."""
        if num_workers == 0:
            while True:
                yield self.next_batch(batch_size, rank, world)
        loader = torch.utils.data.DataLoader(
            _WorkerBatches(self, self.pos, batch_size, rank, world), batch_size=None, num_workers=num_workers,
            collate_fn=_as_is, prefetch_factor=2,
            multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        for examples, stats in loader:
            self.pos += batch_size
            self._took(stats, empty=not examples)
            yield examples

    def _took(self, stats: EncodeStats, empty: bool = False) -> None:
        """Count a batch's encoding; enforce `max_skip` once the counts say something, or at once when every
        sample of the batch was skipped (there is nothing to train on)."""
        from vlkit.data.sources import check_skip_share

        _merge(self.stats, stats)
        seen = self.stats.encoded + sum(self.stats.skipped.values())
        epoch_seen = self.length is not None and self.pos >= self.length
        if self.max_skip is not None and (seen >= SKIP_CHECK_AFTER or epoch_seen or empty):
            check_skip_share("the stage's data", self.stats.encoded, self.stats.skipped, self.max_skip,
                             self.stats.examples, "encoding")
        if empty:
            reasons = ", ".join(f"{k}: {v}" for k, v in stats.skipped.items()) or "no samples"
            first = f" First: {stats.examples[0]}." if stats.examples else ""
            raise DataError(f"every sample of a batch was skipped while encoding ({reasons}).{first}")


class _WorkerBatches(torch.utils.data.IterableDataset):
    """In worker w of W: this rank's share of global batches w, w + W, ... counted from `start`."""

    def __init__(self, feed: StreamFeed, start: int, batch_size: int, rank: int, world: int):
        self.feed, self.start, self.batch_size, self.rank, self.world = feed, start, batch_size, rank, world

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        k = w
        while True:
            stats = EncodeStats()
            yield self.feed.make_batch(self.start + k * self.batch_size, self.batch_size, self.rank, self.world,
                                       stats), stats
            k += n


def _as_is(x):
    return x


def _merge(into: EncodeStats, part: EncodeStats) -> None:
    into.encoded += part.encoded
    for reason, n in part.skipped.items():
        into.skipped[reason] = into.skipped.get(reason, 0) + n
    into.examples += part.examples[:max(0, 5 - len(into.examples))]


class ListFeed(StreamFeed):
    """Encoded examples in memory, in epochs of a seeded permutation."""

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("a ListFeed needs at least one example")
        self.examples = examples
        super().__init__(examples.__getitem__, lambda items, stats: list(items), len(examples), seed)

    def batches(self, batch_size: int, rank: int, world: int, num_workers: int = 0) -> Iterator[list[Example]]:
        return super().batches(batch_size, rank, world, 0)  # encoded already: nothing for workers to do


def as_feed(examples, seed: int) -> StreamFeed:
    """A feed as it is, or a list of examples wrapped in a ListFeed."""
    return examples if isinstance(examples, StreamFeed) else ListFeed(list(examples), seed)


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




