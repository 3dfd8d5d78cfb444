"""Length grouping (vlkit.data.grouping) in a feed: deterministic for a seed, every sample taken once, disjoint
across ranks, exact on resume (and with DataLoader workers), and less padding than ungrouped batches."""
import pytest

from vlkit.data.collate import Example
from vlkit.data.feed import StreamFeed
from vlkit.data.grouping import LengthGrouping, padding_share


def _stream(g: int) -> dict:
    """Sample g of a stream whose lengths are mixed (a hash of g) as mixed image sizes make them."""
    return {"id": str(g), "n": 10 + (g * 7919) % 97}


def _encode(samples, stats):
    return [Example([0] * s["n"], [0] * s["n"], [], "t", s["id"]) for s in samples]


def _feed(seed=0, window=4, group=True):
    grouping = LengthGrouping(lambda s: s["n"], window, seed) if group else None
    return StreamFeed(_stream, _encode, group=grouping)


def _ids(examples):
    return [int(e.sample_id) for e in examples]


def test_a_window_is_taken_whole_sorted_by_length_in_a_seeded_order():
    feed = _feed(seed=1, window=4)
    batches = [_ids(feed.next_batch(8, 0, 1)) for _ in range(8)]  # two windows of 4 x 8
    for w in range(2):
        taken = [g for b in batches[4 * w:4 * w + 4] for g in b]
        assert sorted(taken) == list(range(32 * w, 32 * w + 32))  # each sample of the window exactly once
        lengths = sorted(_stream(g)["n"] for g in taken)
        # the window's batches are consecutive slices of its samples sorted by length
        assert sorted(sorted(_stream(g)["n"] for g in b) for b in batches[4 * w:4 * w + 4]) == \
            [lengths[k:k + 8] for k in range(0, 32, 8)]
    again = _feed(seed=1, window=4)
    assert [_ids(again.next_batch(8, 0, 1)) for _ in range(8)] == batches
    other = _feed(seed=2, window=4)
    assert [_ids(other.next_batch(8, 0, 1)) for _ in range(8)] != batches  # the batch order follows the seed


def test_grouping_pads_less_than_the_stream_order():
    def lengths(feed):
        return [[e.__len__() for e in feed.next_batch(8, 0, 1)] for _ in range(16)]

    grouped, plain = padding_share(lengths(_feed(window=8))), padding_share(lengths(_feed(group=False)))
    assert grouped < plain / 3, (grouped, plain)


def test_ranks_take_disjoint_shares_of_the_same_grouped_batch():
    single = _feed()
    ranks = [_feed() for _ in range(3)]
    for _ in range(6):
        whole = _ids(single.next_batch(6, 0, 1))
        shares = [_ids(f.next_batch(6, r, 3)) for r, f in enumerate(ranks)]
        assert sorted(g for s in shares for g in s) == sorted(whole)
        assert all(len(s) == 2 for s in shares)


def test_a_resumed_grouped_feed_reads_what_the_uninterrupted_one_reads():
    full = _feed(window=3)
    want = [_ids(full.next_batch(4, 0, 1)) for _ in range(7)]
    part = _feed(window=3)
    got = [_ids(part.next_batch(4, 0, 1)) for _ in range(4)]  # stopped in the middle of the second window
    resumed = _feed(window=3)
    resumed.load_state(part.state())
    got += [_ids(resumed.next_batch(4, 0, 1)) for _ in range(3)]
    assert got == want


def test_workers_give_the_grouped_batches_of_one_process():
    want = [_ids(b) for b, _ in zip(_feed(window=3).batches(4, 1, 2), range(7))]
    feed = _feed(window=3)
    it = feed.batches(4, 1, 2, num_workers=2)
    got = [_ids(next(it)) for _ in range(7)]
    it.close()
    assert got == want and feed.pos == 28


def test_a_collection_is_grouped_over_its_epoch_order():
    records = [_stream(g) for g in range(10)]
    feed = StreamFeed(records.__getitem__, _encode, length=10, seed=4,
                      group=LengthGrouping(lambda s: s["n"], 5, 0))
    taken = [g for _ in range(5) for g in _ids(feed.next_batch(4, 0, 1))]  # 20 = two epochs of 10
    assert sorted(taken) == sorted(list(range(10)) * 2)


def test_a_position_off_the_batch_grid_is_a_clear_error():
    feed = _feed()
    feed.pos = 3
    with pytest.raises(ValueError, match="position 3 is not a multiple of the batch size 8"):
        feed.next_batch(8, 0, 1)
    with pytest.raises(ValueError, match="at least one batch"):
        LengthGrouping(len, 0, 0)


def test_padding_share():
    assert padding_share([[2, 4], [3, 3]]) == pytest.approx(1 - 12 / 14)
    assert padding_share([]) == 0.0
