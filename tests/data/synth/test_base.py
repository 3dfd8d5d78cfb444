"""vlkit.data.synth.base: the pairs and relation phrasings a split may use, and `pick`."""
import numpy as np

from vlkit.data.synth import RELATION_PHRASES, RELATIONS, SynthConfig
from vlkit.data.synth.base import allowed_pairs, pick, relation_phrases
from vlkit.data.synth.world import ALL_PAIRS


def test_train_split_leaves_out_the_heldout_pairs_and_phrases():
    cfg = SynthConfig(split="train", heldout_pairs=(ALL_PAIRS[0], ALL_PAIRS[3]), heldout_phrases=("over", "left of"))
    assert allowed_pairs(cfg) == [p for i, p in enumerate(ALL_PAIRS) if i not in (0, 3)]
    assert relation_phrases(cfg, "above") == ("above",)
    assert relation_phrases(cfg, "left of") == ("to the left of",)
    assert relation_phrases(cfg, "below") == RELATION_PHRASES["below"]


def test_test_split_allows_every_composition():
    cfg = SynthConfig(split="test", heldout_pairs=(ALL_PAIRS[0],), heldout_phrases=("over",))
    assert allowed_pairs(cfg) == list(ALL_PAIRS)
    assert all(relation_phrases(cfg, r) == RELATION_PHRASES[r] for r in RELATIONS)


def test_pick_draws_every_item_from_the_rng():
    rng = np.random.default_rng(0)
    seen = {pick(rng, "abc") for _ in range(100)}
    assert seen == {"a", "b", "c"}
    assert pick(np.random.default_rng(5), [1, 2, 3]) == pick(np.random.default_rng(5), [1, 2, 3])
