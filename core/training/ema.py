"""Exponential moving average of a model's parameters, kept as plain tensors.

``theta_ema <- d * theta_ema + (1 - d) * theta`` after every optimiser step (Polyak &
Juditsky 1992; as used for diffusion models by Ho et al. 2020, arXiv 2006.11239, app. B).
With ``warmup=True`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
the average does not remember the random initialisation for long in short runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .sharding import is_dtensor, shard_like

__all__ = ["EMA"]


class EMA:
    """EMA of the floating-point parameters of ``model``.

    The state is a dict ``name -> tensor`` (parameter names of ``model``) plus the update
    count; :meth:`state_dict` returns tensors only, for safetensors checkpoints.

    Args:
        model: the trained module.
        decay: ``d`` in [0, 1); 0 makes the average equal to the current weights.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must lie in [0, 1); got {decay}")
        self.decay, self.warmup = float(decay), warmup
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.is_floating_point()
        }

    def current_decay(self) -> float:
        """The decay used by the next :meth:`update`."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def _pairs(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        params = dict(model.named_parameters())
        missing = sorted(set(self.shadow) - set(params))
        if missing:
            raise KeyError(f"EMA: the model lacks parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")
        for name, s in self.shadow.items():  # follow the model across devices and dtypes (Lightning moves it)
            p = params[name]
            if is_dtensor(p) and not is_dtensor(s):  # FSDP sharded the model: keep this rank's shard of the average
                self.shadow[name] = s = shard_like(s, p)
            if s.device != p.device or s.dtype != p.dtype:
                self.shadow[name] = s.to(device=p.device, dtype=p.dtype)
        return [(self.shadow[name], params[name]) for name in self.shadow]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards the current parameters of ``model``."""
        d = self.current_decay()
        pairs = self._pairs(model)
        if pairs:
            torch._foreach_lerp_([s for s, _ in pairs], [p.detach() for _, p in pairs], 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the parameters of ``model`` with the averages."""
        for shadow, p in self._pairs(model):
            p.copy_(shadow)

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with ema.swapped(model):`` evaluates ``model`` with the averaged weights and
        restores the trained weights on exit (also on error)."""
        backup = {name: p.detach().clone() for name, p in model.named_parameters() if name in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in backup:
                        p.copy_(backup[name])

    def to(self, device: torch.device | str) -> "EMA":
        """Move the averages to ``device`` (in place); returns ``self``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """``{"num_updates": 0-d int64, "shadow.<param name>": tensor, ...}`` (shards as
        ``DTensor`` s under FSDP: :func:`~modaflow.core.training.sharding.gather` makes them whole)."""
        state = {"num_updates": torch.tensor(self.num_updates, dtype=torch.int64)}
        state.update({f"shadow.{k}": v for k, v in self.shadow.items()})
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a :meth:`state_dict`; names and shapes must match this EMA's."""
        shadow = {k[len("shadow."):]: v for k, v in state.items() if k.startswith("shadow.")}
        if "num_updates" not in state or set(shadow) != set(self.shadow):
            missing, unexpected = sorted(set(self.shadow) - set(shadow)), sorted(set(shadow) - set(self.shadow))
            raise KeyError(f"EMA state does not match: missing {missing}, unexpected {unexpected}")
        for k, v in shadow.items():
            if v.shape != self.shadow[k].shape:
                raise ValueError(f"EMA state {k!r}: shape {tuple(v.shape)}, expected {tuple(self.shadow[k].shape)}")
            self.shadow[k] = v.to(device=self.shadow[k].device, dtype=self.shadow[k].dtype).clone()
        self.num_updates = int(state["num_updates"])
