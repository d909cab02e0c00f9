"""Sample metrics of token blocks ``(B, L)`` int64 (REFERENCE §3):

* :func:`first_eos_mask`: 1 up to and including the first ``<eos>``, 0 after it;
* :func:`gen_ppl`: generative perplexity, ``exp`` of the token-weighted mean NLL under an
  evaluator, tokens after the first ``<eos>`` masked;
* :func:`sample_entropy`: per-sample unigram entropy of the token ids (nats), averaged;
* :func:`ngram_js`: Jensen-Shannon divergence (nats, in [0, ln 2]) between the n-gram
  frequency distributions of two sets of blocks (a distributional score; 0 = same n-grams);
* :func:`self_bleu`: mean BLEU-4 of each sample against all the others as references
  (Zhu et al. 2018, "Texygen", arXiv 1802.01886; BLEU: Papineni et al. 2002, eq. 1-2, with
  a floor of 0.1 matches for zero counts) - high means the samples repeat each other.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import Tensor

__all__ = ["first_eos_mask", "gen_ppl", "sample_entropy", "ngram_counts", "ngram_js", "self_bleu"]


def first_eos_mask(tokens: Tensor, eos_id: int | None) -> Tensor:
    """``(B, L)`` float: 1 at positions up to and including the first ``eos_id`` (all 1 when
    ``eos_id`` is None or absent)."""
    if eos_id is None:
        return torch.ones(tokens.shape, dtype=torch.float32)
    is_eos = (tokens == eos_id).long()
    before = is_eos.cumsum(1) - is_eos  # EOS seen strictly before each position
    return (before == 0).float()


def gen_ppl(nll: Tensor, mask: Tensor) -> float:
    """``exp(sum(nll * mask) / sum(mask))``: token-weighted perplexity; ``nll, mask`` ``(B, L)``."""
    return math.exp(float((nll * mask).sum() / mask.sum().clamp_min(1)))


def sample_entropy(tokens: Tensor, mask: Tensor | None = None) -> float:
    """Mean over samples of the entropy (nats) of each sample's unigram token distribution
    (counting masked-in tokens only)."""
    mask = torch.ones(tokens.shape) if mask is None else mask
    V = int(tokens.max()) + 1
    counts = torch.zeros(tokens.shape[0], V).scatter_add_(1, tokens.cpu(), mask.float().cpu())
    p = counts / counts.sum(1, keepdim=True).clamp_min(1)
    return float(-(torch.xlogy(p, p)).sum(1).mean())


def ngram_counts(tokens: Tensor, n: int) -> Counter:
    """Counts of the n-grams (tuples) inside each block of ``tokens`` ``(B, L)``."""
    rows = tokens.tolist()
    return Counter(tuple(r[i:i + n]) for r in rows for i in range(len(r) - n + 1))


def ngram_js(a: Tensor, b: Tensor, n: int) -> float:
    """Jensen-Shannon divergence (nats) between the n-gram frequency distributions of the
    blocks ``a`` and ``b``: ``JS = H(M) - (H(P) + H(Q)) / 2``, ``M = (P + Q) / 2``."""
    ca, cb = ngram_counts(a, n), ngram_counts(b, n)
    keys = list(ca.keys() | cb.keys())
    p = torch.tensor([ca[k] for k in keys], dtype=torch.float64)
    q = torch.tensor([cb[k] for k in keys], dtype=torch.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def h(x: Tensor) -> Tensor:
        return -torch.xlogy(x, x).sum()

    return float(h(m) - (h(p) + h(q)) / 2)


def _bleu(cand: list[int], ref_max: list[Counter], cand_counts: list[Counter], max_n: int) -> float:
    log_p = 0.0
    for k in range(max_n):
        total = max(len(cand) - k, 0)
        if total == 0:
            return 0.0
        clipped = sum(min(c, ref_max[k].get(g, 0)) for g, c in cand_counts[k].items())
        log_p += math.log(max(clipped, 0.1) / total) / max_n  # floor 0.1 for zero matches
    return math.exp(log_p)  # brevity penalty 1: references are as long as the candidate


def self_bleu(tokens: Tensor, max_n: int = 4, mask: Tensor | None = None) -> float:
    """Mean BLEU-``max_n`` of each sample against the other samples (clipped counts: each
    n-gram counts at most as often as in the reference that has it most often). Samples are
    cut at the mask (first ``<eos>``)."""
    rows = tokens.tolist()
    if mask is not None:
        lens = mask.sum(1).long().tolist()
        rows = [r[:n] for r, n in zip(rows, lens)]
    if len(rows) < 2:
        raise ValueError("self_bleu needs at least 2 samples")
    counts = [[Counter(tuple(r[i:i + k + 1]) for i in range(len(r) - k)) for k in range(max_n)] for r in rows]
    # the largest and second-largest count of every n-gram over samples, and who holds the largest
    best: list[dict] = [dict() for _ in range(max_n)]
    for j, cj in enumerate(counts):
        for k in range(max_n):
            for g, c in cj[k].items():
                top, holder, second = best[k].get(g, (0, -1, 0))
                if c > top:
                    best[k][g] = (c, j, top)
                elif c > second:
                    best[k][g] = (top, holder, c)
    scores = []
    for i, r in enumerate(rows):
        ref_max = [{g: (top if holder != i else second) for g, (top, holder, second) in best[k].items()}
                   for k in range(max_n)]
        scores.append(_bleu(r, ref_max, counts[i], max_n))
    return sum(scores) / len(scores)
