"""vlkit.models.sampling: greedy, temperature, top-k, top-p and the vocabulary limit."""
import torch

from vlkit.models.sampling import filter_logits, sample


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, 0, 0.7, g) for _ in range(200)])
    assert set(draws.unique().tolist()) == {0, 1}  # 0.5 + 0.3 covers 0.7
    draws = torch.stack([sample(logits, 1.0, 0, 1.0, g) for _ in range(400)])
    assert set(draws.unique().tolist()) == {0, 1, 2, 3}


def test_filter_logits_masks_all_but_top_k_and_the_nucleus():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, 0.0, 5.0, -1.0]])
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[False, True, True, False], [True, True, True, False]]  # ties with the k-th stay
    nucleus = filter_logits(logits, top_p=0.5).isfinite()
    assert nucleus.sum(-1).tolist() == [1, 1] and nucleus[0, 1] and nucleus[1, 2]
    assert torch.equal(filter_logits(logits), logits)  # both off: unchanged


def test_greedy_vocab_limit_and_seeded_draws():
    logits = torch.tensor([[0.0, 1.0, 9.0], [3.0, 1.0, 0.0]])
    assert sample(logits, temperature=0).tolist() == [2, 0]
    assert sample(logits, temperature=0, vocab_limit=2).tolist() == [1, 0]  # id 2 is out of reach
    limited = torch.stack([sample(logits, 1.0, vocab_limit=2, generator=torch.Generator().manual_seed(s))
                           for s in range(50)])
    assert limited.max() < 2
    a = [sample(logits, 1.5, generator=torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert a[0] == a[1]
    assert logits[0, 2] == 9.0  # the caller's logits are not modified


def test_tiny_temperature_is_greedy_not_nan():
    logits = torch.tensor([[0.0, 30.0, 29.0]] * 8)
    assert sample(logits, temperature=1e-40, generator=torch.Generator().manual_seed(0)).tolist() == [1] * 8
