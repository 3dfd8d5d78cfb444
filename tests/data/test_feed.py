"""The feeds (vlkit.data.feed): deterministic for a seed, disjoint across ranks, exact on resume; the synthetic
stream (tested in tests/data/synth/test_stream.py) and file sources as their sources."""
import pytest

from vlkit.data.collate import Example
from vlkit.data.feed import ListFeed, StreamFeed, mixture
from vlkit.data.sources.base import DataError
from vlkit.data.synth.stream import synth_stream


def _fake_encode(samples, stats):
    return [Example([1, 2], [1, 2], [], s["task"], s["id"]) for s in samples]


def test_stream_feed_ranks_are_disjoint_and_cover_the_global_batch():
    stream = synth_stream({"tasks": ["vqa"]}, 0)
    feeds = [StreamFeed(stream, _fake_encode) for _ in range(3)]
    seen = []
    for _ in range(4):
        shares = [[e.sample_id for e in f.next_batch(6, r, 3)] for r, f in enumerate(feeds)]
        assert all(len(s) == 2 for s in shares)
        seen += [i for s in shares for i in s]
    assert len(seen) == len(set(seen)) == 24
    assert sorted(seen) == sorted(e.sample_id for e in StreamFeed(stream, _fake_encode).next_batch(24, 0, 1))


def test_stream_feed_resumes_exactly():
    stream = synth_stream({"tasks": ["vqa", "caption"]}, 0)
    full = StreamFeed(stream, _fake_encode)
    want = [[e.sample_id for e in full.next_batch(4, 0, 1)] for _ in range(5)]
    part = StreamFeed(stream, _fake_encode)
    got = [[e.sample_id for e in part.next_batch(4, 0, 1)] for _ in range(2)]
    resumed = StreamFeed(stream, _fake_encode)
    resumed.load_state(part.state())
    got += [[e.sample_id for e in resumed.next_batch(4, 0, 1)] for _ in range(3)]
    assert got == want


def _skip_all(samples, stats):
    for s in samples:
        stats.skip("UserError", f"sample {s['id']} has 263 tokens > max_length=200")
    return []


@pytest.mark.parametrize("max_skip", [None, 0.5])
def test_a_batch_whose_every_sample_is_skipped_is_a_clear_error(max_skip):
    """Not a crash in the collator: the error names the reason and a sample (e.g. max_length too short)."""
    feed = StreamFeed(synth_stream({"tasks": ["vqa"]}, 0), _skip_all, max_skip=max_skip)
    with pytest.raises(DataError, match="max_length=200") as err:
        feed.next_batch(4, 0, 1)
    assert "skipped" in str(err.value)


def test_list_feed_resumes_exactly_across_epochs():
    ex = [Example([i], [i], [], "t", str(i)) for i in range(5)]
    full = ListFeed(ex, seed=3)
    want = [[e.sample_id for e in full.next_batch(3, 0, 1)] for _ in range(4)]
    assert sorted(want[0] + want[1][:2]) == [str(i) for i in range(5)]  # one epoch is a permutation
    part = ListFeed(ex, seed=3)
    part.next_batch(3, 0, 1), part.next_batch(3, 0, 1)
    resumed = ListFeed(ex, seed=3)
    resumed.load_state(part.state())
    assert want[2:] == [[e.sample_id for e in resumed.next_batch(3, 0, 1)] for _ in range(2)]


def test_mixture_draws_by_weight_deterministically():
    a = lambda g: {"src": "a", "g": g}  # noqa: E731
    b = lambda g: {"src": "b", "g": g}  # noqa: E731
    mix = mixture([a, b], [3.0, 1.0], seed=0)
    draws = [mix(g)["src"] for g in range(2000)]
    assert draws == [mixture([a, b], [3.0, 1.0], seed=0)(g)["src"] for g in range(2000)]
    assert 0.7 < draws.count("a") / 2000 < 0.8


# -- file sources, streamed: light records, epoch permutations, ranks and DataLoader workers -------------------


def _file_feed(path, encode, seed=0, **src):
    from vlkit.data.records import FileMixture

    mix = FileMixture([{"path": str(path), **src}], strict=False, seed=seed)
    return StreamFeed(mix.__getitem__, encode, length=len(mix), seed=seed)


def _ids(batches):
    return [[e.sample_id for e in b] for b in batches]


def test_a_bad_jsonl_line_is_dropped_at_indexing_and_max_skip_is_judged_there(records_dir, encode, tmp_path):
    import shutil

    from vlkit.data.sources import DataError

    d = tmp_path / "ds"
    shutil.copytree(records_dir, d)
    lines = (d / "data.jsonl").read_text().splitlines()
    (d / "data.jsonl").write_text("\n".join(lines[:10] + ['{"id": "cut", "conv', "", "  "] + lines[10:]) + "\n")
    with pytest.warns(UserWarning, match=r"data.jsonl:11: skipped sample \(malformed_json\)"):
        with pytest.raises(DataError, match=r"1 of 31 samples \(3.2%\) were skipped while reading"):
            _file_feed(d, encode)  # default max_skip 0.01
    with pytest.warns(UserWarning, match=r"data.jsonl:11"):
        feed = _file_feed(d, encode, max_skip=0.05)
    assert len(feed) == 30  # the bad line and the blank lines are no records
    got = feed.next_batch(30, 0, 1)  # one epoch
    assert not feed.stats.skipped and len({e.sample_id for e in got}) == 30


def test_an_image_lost_after_indexing_is_counted_when_its_batch_is_made(records_dir, encode, tmp_path):
    import shutil

    from vlkit.data.sources import DataError

    d = tmp_path / "ds"
    shutil.copytree(records_dir, d)
    feed = _file_feed(d, encode)
    feed.max_skip = 0.01
    first = feed.sample(feed.record(0))
    import os
    os.remove(first["images"][0])
    with pytest.warns(UserWarning, match=r"skipped sample \(missing_image\)"):
        with pytest.raises(DataError, match=r"1 of 30 samples .* while encoding"):
            feed.next_batch(30, 0, 1)  # one epoch: the share is judged


def test_file_feed_walks_epochs_deterministically_and_ranks_are_disjoint(records_dir, encode):
    one = _file_feed(records_dir, encode)
    epoch = [i for b in _ids(one.next_batch(10, 0, 1) for _ in range(3)) for i in b]
    assert sorted(epoch) == sorted(s["id"] for s in map(one.sample, range(30)))  # an epoch is a permutation
    assert one.state() == {"epoch": 1, "pos": 0}
    assert _ids(_file_feed(records_dir, encode).next_batch(10, 0, 1) for _ in range(3)) == \
        _ids(_file_feed(records_dir, encode).next_batch(10, 0, 1) for _ in range(3))  # same seed, same order
    other = [e.sample_id for e in _file_feed(records_dir, encode, seed=1).next_batch(30, 0, 1)]
    assert other != epoch and sorted(other) == sorted(epoch)  # another seed: another order of the same records
    ranks = [_file_feed(records_dir, encode) for _ in range(3)]
    for step in range(3):
        shares = [[e.sample_id for e in f.next_batch(9, r, 3)] for r, f in enumerate(ranks)]
        assert not set(shares[0]) & set(shares[1]) and not set(shares[1]) & set(shares[2])
        assert all(len(s) == 3 for s in shares)


def test_workers_give_the_same_batches_and_resume_exactly(records_dir, encode):
    import itertools
    import torch

    def take(feed, n, workers, rank=0, world=2):
        it = feed.batches(8, rank, world, workers)
        out = list(itertools.islice(it, n))
        it.close()
        return out

    want = take(_file_feed(records_dir, encode), 6, 0)  # 48 global samples: crosses an epoch boundary
    got = take(_file_feed(records_dir, encode), 6, 2)
    assert _ids(got) == _ids(want)  # workers split the batches, disjoint and complete, in order
    assert all(torch.equal(a.images[0], b.images[0]) for x, y in zip(got, want) for a, b in zip(x, y))
    other_rank = take(_file_feed(records_dir, encode), 6, 2, rank=1)
    assert all(not set(a) & set(b) for a, b in zip(_ids(got), _ids(other_rank)))
    part = _file_feed(records_dir, encode)
    take(part, 2, 2)  # workers prefetch more, but only what was taken counts
    assert part.state() == {"epoch": 0, "pos": 16}
    resumed = _file_feed(records_dir, encode)
    resumed.load_state(part.state())
    assert _ids(take(resumed, 4, 2)) == _ids(want[2:])


def test_a_corrupt_image_is_skipped_when_its_batch_is_encoded(records_dir, encode, tmp_path):
    import shutil

    d = tmp_path / "ds"
    shutil.copytree(records_dir, d)
    (d / "images").joinpath(sorted(p.name for p in (d / "images").iterdir())[0]).write_bytes(b"\x89PNG broken")
    feed = _file_feed(d, encode)
    with pytest.warns(UserWarning, match="skipped"):
        got = [e for _ in range(3) for e in feed.next_batch(10, 0, 1)]
    assert len(got) == 29 and sum(feed.stats.skipped.values()) == 1
