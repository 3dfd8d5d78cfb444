import torch

from vlkit.config import TextConfig
from vlkit.models.language import KVCache, LanguageModel, causal_mask, padding_positions


def _lm(**kw):
    torch.manual_seed(0)
    lm = LanguageModel(TextConfig(vocab_size=100, **kw)).eval()
    for p in lm.parameters():
        torch.nn.init.normal_(p, std=0.1) if p.dim() > 1 else None
    return lm


def test_cached_equals_uncached():
    lm = _lm(attention_bias=True, tie_word_embeddings=False)
    ids = torch.randint(0, 100, (2, 12))
    full = lm(lm.embed_tokens(ids))
    cache = KVCache(lm.cfg.num_layers)
    parts = [lm(lm.embed_tokens(ids[:, :7]), cache=cache)]
    for t in range(7, 12):
        parts.append(lm(lm.embed_tokens(ids[:, t:t + 1]), position_ids=torch.full((2, 1), t), cache=cache))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_gqa_and_tied_embeddings():
    lm = _lm(num_heads=4, num_kv_heads=1)
    assert lm.lm_head.weight is lm.embed_tokens.weight
    assert lm.layers[0].self_attn.k_proj.weight.shape == (16, 64)


def test_left_padding_positions_and_mask():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert padding_positions(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    m = causal_mask(mask.bool(), 4)[:, 0]
    assert m[0, 3].tolist() == [False, False, True, True]
    assert m[1, 1].tolist() == [True, True, False, False]


def test_padded_row_equals_unpadded_row():
    lm = _lm()
    ids = torch.randint(1, 100, (1, 6))
    ref = lm(lm.embed_tokens(ids))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    out = lm(lm.embed_tokens(padded), position_ids=padding_positions(mask), attention_mask=mask)
    torch.testing.assert_close(out[:, 3:], ref, atol=1e-5, rtol=0)


def test_concat_and_trim_caches_keep_rows_apart():
    a, b = KVCache(1), KVCache(1)
    a.keys, a.values, a.mask = [torch.ones(1, 2, 3, 4)], [torch.ones(1, 2, 3, 4)], torch.ones(1, 3, dtype=torch.bool)
    b.keys, b.values, b.mask = [torch.full((2, 2, 5, 4), 2.0)], [torch.full((2, 2, 5, 4), 2.0)], torch.ones(2, 5, dtype=torch.bool)
    m = a.concat(b)
    assert m.keys[0].shape == (3, 2, 5, 4)
    assert m.mask.tolist()[0] == [False, False, True, True, True] and m.mask[1:].all()
    assert (m.keys[0][0, :, :2] == 0).all() and (m.keys[0][0, :, 2:] == 1).all()
    m.select(torch.tensor([0]))
    m.trim()
    assert m.keys[0].shape == (1, 2, 3, 4) and m.mask.all()
