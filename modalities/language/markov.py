"""The exact tier: a known first-order Markov chain over ``V`` tokens as the data source, so
samples are scored by the true chain's NLL instead of a learnt evaluator.

``P`` has rows drawn from a Dirichlet(``concentration``) with a fixed seed (small
concentration: peaked rows, low entropy rate); ``pi`` is the chain's stationary law and
sequences start from it, so every position has law ``pi`` and the true per-token NLL of real
sequences has expectation ``H(pi)/L + (L-1)/L * H_rate`` with the entropy rate
``H_rate = -sum_i pi_i sum_j P_ij log P_ij`` (Cover & Thomas, Elements of Information Theory,
Theorem 4.2.4).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MarkovSource"]


class MarkovSource:
    """A Markov chain on ``V`` tokens (float64 ``P`` ``(V, V)`` and stationary ``pi`` ``(V,)``)."""

    def __init__(self, V: int, concentration: float = 0.1, seed: int = 0) -> None:
        if not 2 <= V <= 4096:
            raise ValueError(f"V must be in [2, 4096]; got {V}")
        if concentration <= 0:
            raise ValueError(f"concentration must be > 0; got {concentration}")
        g = torch.Generator().manual_seed(seed)
        gam = torch._standard_gamma(torch.full((V, V), float(concentration), dtype=torch.float64), generator=g)
        P = gam + 1e-12
        self.V, self.P = V, P / P.sum(1, keepdim=True)
        evals, evecs = torch.linalg.eig(self.P.T)
        pi = evecs[:, evals.real.argmax()].real.abs()
        self.pi = pi / pi.sum()

    def entropy_rate(self) -> float:
        """``H_rate`` in nats per token."""
        return float(-(self.pi * torch.xlogy(self.P, self.P).sum(1)).sum())

    def expected_nll(self, L: int) -> float:
        """Expected true per-token NLL (nats) of a real length-``L`` sequence."""
        h0 = float(-torch.xlogy(self.pi, self.pi).sum())
        return (h0 + (L - 1) * self.entropy_rate()) / L

    def sample(self, n: int, L: int, seed: int) -> Tensor:
        """``n`` sequences ``(n, L)`` int64, first token from ``pi``."""
        g = torch.Generator().manual_seed(seed)
        x = torch.empty(n, L, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.pi, n, replacement=True, generator=g)
        for l in range(1, L):
            x[:, l] = torch.multinomial(self.P[x[:, l - 1]], 1, generator=g)[:, 0]
        return x

    def nll(self, tokens: Tensor) -> Tensor:
        """True per-token NLL ``(B, L)`` (nats): ``-log pi(x_0)``, then ``-log P(x_{l-1}, x_l)``."""
        x = tokens.cpu()
        first = -torch.log(self.pi[x[:, :1]])
        rest = -torch.log(self.P[x[:, :-1], x[:, 1:]])
        return torch.cat([first, rest], 1)
