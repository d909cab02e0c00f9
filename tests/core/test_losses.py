"""Losses against slow obvious computations."""

import math

import pytest
import torch

from modaflow.core.losses import one_hot_cross_entropy, token_cross_entropy, weighted_mse


def test_weighted_mse_matches_loop() -> None:
    pred, target = torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(4, 3, 2, dtype=torch.float64)
    t = torch.rand(4, dtype=torch.float64)
    w = lambda t: 1 + t  # noqa: E731
    ref = sum((1 + t[b]) * ((pred[b] - target[b]) ** 2).mean() for b in range(4)) / 4
    torch.testing.assert_close(weighted_mse(pred, target, t, w), ref)
    assert weighted_mse(pred, target, t, reduce=False).shape == (4,)
    with pytest.raises(ValueError, match="must have one shape"):
        weighted_mse(pred, target[:, :2], t)


def test_cross_entropy_matches_loop() -> None:
    B, L, V = 2, 5, 7
    logits, tokens = torch.randn(B, L, V, dtype=torch.float64), torch.randint(0, V, (B, L))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    nll = [[-(logits[b, i, tokens[b, i]] - torch.logsumexp(logits[b, i], 0)) for i in range(L)] for b in range(B)]
    ref = sum(nll[b][i] for b in range(B) for i in range(L) if mask[b, i]) / mask.sum()
    torch.testing.assert_close(one_hot_cross_entropy(logits, tokens, mask), ref)
    # Uniform logits give log V.
    assert one_hot_cross_entropy(torch.zeros(1, 3, V), torch.zeros(1, 3, dtype=torch.long)).item() == pytest.approx(math.log(V))
    with pytest.raises(ValueError, match=r"must be \(B, L, V\)"):
        one_hot_cross_entropy(logits, tokens[:, :3])
    # Per-sample means, and a non-contiguous (transposed) logits view give the same numbers.
    per = torch.stack([sum(nll[b][i] for i in range(L) if mask[b, i]) / mask[b].sum() for b in range(B)])
    torch.testing.assert_close(one_hot_cross_entropy(logits, tokens, mask, reduce=False), per)
    strided = logits.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    torch.testing.assert_close(one_hot_cross_entropy(strided, tokens, mask), ref)
    torch.testing.assert_close(token_cross_entropy(logits, tokens), torch.stack([torch.stack(row) for row in nll]))
    with pytest.raises(ValueError, match=r"must be \(B, L, V\)"):
        token_cross_entropy(logits, tokens[:, :3])
