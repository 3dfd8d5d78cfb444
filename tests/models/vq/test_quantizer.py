"""The residual EMA quantizer: straight-through, commitment, EMA updates, dead-code restarts, residual depth."""
import torch

from vlkit.models.vq import ResidualVectorQuantizer, codebook_usage


def test_straight_through_gradient_is_the_decoder_input_gradient():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(16, 4, depth=2)
    z = torch.randn(10, 4, requires_grad=True)
    out = q(z, update=True)
    g = torch.randn(10, 4)
    (out.quantized * g).sum().backward()
    assert torch.equal(z.grad, g)
    # the forward value is the quantized vector, not z
    assert torch.allclose(out.quantized, q.lookup(out.codes), atol=1e-6)
    # the codebook is a buffer fed by EMA, never by gradient
    assert list(q.parameters()) == []
    assert not q.codebook.requires_grad


def test_commitment_loss_pulls_only_the_encoder():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(8, 3)
    z = torch.randn(6, 3, requires_grad=True)
    out = q(z, update=False)
    out.commit_loss.backward()
    target = q.codebook[out.codes[:, 0]]
    assert torch.allclose(z.grad, 2 * (z - target).detach() / z.numel(), atol=1e-6)


def test_ema_update_matches_hand_computation():
    q = ResidualVectorQuantizer(3, 2, depth=1, ema_decay=0.5, dead_code_threshold=0.0, eps=1e-5)
    codebook = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    q.codebook.copy_(codebook)
    q.cluster_size.copy_(torch.tensor([2.0, 1.0, 1.0]))
    q.embed_sum.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    q.initialized.fill_(True)
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [9.0, 1.0]])  # -> codes 0, 0, 1; code 2 unused

    q(x, update=True)

    # by hand, decay 0.5: N = 0.5 * old + 0.5 * counts, S = 0.5 * old_sum + 0.5 * sum of assigned x
    counts, sums = [2, 1, 0], [[0.0, 2.0], [9.0, 1.0], [0.0, 0.0]]
    old_n, old_s = [2.0, 1.0, 1.0], [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]
    n = [0.5 * old_n[k] + 0.5 * counts[k] for k in range(3)]  # 2.0, 1.0, 0.5
    s = [[0.5 * old_s[k][j] + 0.5 * sums[k][j] for j in range(2)] for k in range(3)]
    total, eps = sum(n), 1e-5
    smoothed = [(n[k] + eps) / (total + 3 * eps) * total for k in range(3)]  # Laplace smoothing
    expected = torch.tensor([[s[k][j] / smoothed[k] for j in range(2)] for k in range(3)])
    assert torch.allclose(q.cluster_size, torch.tensor(n))
    assert torch.allclose(q.embed_sum, torch.tensor(s))
    assert torch.allclose(q.codebook, expected, atol=1e-6)


def test_dead_code_restart_reinitializes_exactly_the_dead_codes():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(6, 3, dead_code_threshold=0.1)
    q.initialized.fill_(True)
    q.cluster_size.copy_(torch.tensor([5.0, 0.01, 4.0, 0.0, 3.0, 6.0]))  # mean 3.0 -> threshold 0.3
    before = q.codebook.clone()
    samples = torch.randn(20, 3) + 100.0  # far from every current code
    assert q.dead_codes().tolist() == [False, True, False, True, False, False]

    n = q.restart_dead_codes(samples)

    assert n == 2
    changed = (q.codebook != before).any(1)
    assert changed.tolist() == [False, True, False, True, False, False]
    for k in (1, 3):  # each restarted code is one of the current samples
        assert (q.codebook[k] == samples).all(1).any()
    assert torch.equal(q.codebook[[0, 2, 4, 5]], before[[0, 2, 4, 5]])


def test_training_keeps_codebook_usage_high_via_restarts():
    torch.manual_seed(0)
    q = ResidualVectorQuantizer(32, 4, ema_decay=0.9, dead_code_threshold=0.05)
    data = torch.randn(2000, 4)
    q.codebook.copy_(torch.randn(32, 4) * 0.01 + 50)  # a bad init: every code far away, one cluster
    q.initialized.fill_(True)
    q.cluster_size.fill_(1.0)
    q.embed_sum.copy_(q.codebook)
    for _ in range(30):
        q(data[torch.randint(0, 2000, (256,))], update=True)
    codes = q(data, update=False).codes
    assert codebook_usage(codes, 32) > 0.9


def _fit(q, z, steps=40):
    for _ in range(steps):
        q(z, update=True)
    return q(z, update=False).residual_error.item()


def test_residual_depth_two_quantizes_better_than_depth_one():
    torch.manual_seed(0)
    z = torch.randn(2000, 8)
    torch.manual_seed(1)
    err1 = _fit(ResidualVectorQuantizer(32, 8, depth=1, ema_decay=0.8, dead_code_threshold=0.05), z)
    torch.manual_seed(1)
    q2 = ResidualVectorQuantizer(32, 8, depth=2, ema_decay=0.8, dead_code_threshold=0.05)
    err2 = _fit(q2, z)
    assert err2 < 0.8 * err1
    # and on one fixed codebook, adding a residual step helps the same features
    q2.eval()
    one_step = (z - q2.codebook[q2.nearest(z)]).pow(2).mean().item()
    assert q2(z, update=False).residual_error.item() < one_step
