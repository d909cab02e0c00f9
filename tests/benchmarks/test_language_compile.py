"""FLM's compiled training loss (``FLMConfig.compile``, the variant that ran 3.14x the dense eager
step on an H100) gives the eager loss and gradients, through ``compute_loss`` as training calls it."""

from __future__ import annotations

import torch

from modaflow.modalities.language.flm import FLMConfig, FLMModule
from modaflow.modalities.language.models import DiT, DiTConfig


def test_compiled_training_loss_matches_eager() -> None:
    cfg = DiTConfig(vocab_size=96, block_len=12, dim=16, depth=1, heads=2)  # K > d: the Cholesky noise factor
    torch.manual_seed(0)
    eager_net = DiT(cfg)
    compiled_net = DiT(cfg)
    compiled_net.load_state_dict(eager_net.state_dict())
    tokens = torch.randint(0, 96, (3, 12), generator=torch.Generator().manual_seed(1))
    losses, grads = [], []
    for net, compile_ in ((eager_net, False), (compiled_net, True)):
        module = FLMModule(net, FLMConfig(seed=0, ce_chunk=0, compile=compile_))
        assert (module.step_loss == module.loss_from_draws) == (not compile_)
        loss = module.compute_loss(tokens, step=5)  # the same step: the same draws
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in net.parameters()])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
