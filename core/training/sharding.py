"""Fully sharded data-parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) through
Lightning's ``ModelParallelStrategy``, with whole parameters wherever modaflow needs them.

``TrainerArgs(strategy="fsdp")`` selects it (:func:`fsdp_strategy`: a data-parallel mesh over
every rank, no tensor parallelism). :meth:`FlowMatchingModule.configure_model` then shards the
network with :func:`apply_fsdp`: every child of an ``nn.ModuleList`` is one FSDP unit (a
transformer block, a UNet level or residual block), inner units first, then the network itself
(Zhao et al. 2023, "PyTorch FSDP", arXiv 2304.11277: one all-gather per unit in the forward
and backward, gradients reduce-scattered, each rank keeping ``1 / world`` of the parameters,
gradients and optimiser moments).

After sharding, each parameter is a ``DTensor`` holding this rank's shard. The rest of the
core keeps whole tensors, converted here:

* :func:`shard_like` cuts a whole tensor into this rank's shard of a ``DTensor`` parameter,
  locally (every rank holds the same whole tensor: the EMA's average, a loaded optimiser state).
* :func:`gather` turns every ``DTensor`` of a (nested) state dict into the whole tensor; it is a
  collective, so every rank calls it in the same order. Checkpoints therefore hold whole
  tensors in the single-device layout: a run trained with FSDP resumes on one device and back.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["apply_fsdp", "fsdp_strategy", "gather", "is_dtensor", "is_sharded", "reshard_optimizer_state", "shard_like", "shard_units"]


@functools.cache
def _dtensor_cls() -> type:
    """``torch.distributed.tensor.DTensor`` (imported on first use)."""
    from torch.distributed.tensor import DTensor

    return DTensor


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``DTensor`` (a shard of a parameter, its gradient or moments under FSDP).
    Without a process group there are none, and ``torch.distributed.tensor`` is not imported."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    return isinstance(t, _dtensor_cls())


def fsdp_strategy(world_size: int):  # -> lightning.pytorch.strategies.ModelParallelStrategy
    """Lightning's ``ModelParallelStrategy`` as pure FSDP: ``world_size`` data-parallel ranks,
    tensor-parallel size 1; Lightning's own checkpointing stays off (modaflow writes safetensors)."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return ModelParallelStrategy(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False)


FORWARD_METHODS_ATTR = "fsdp_forward_methods"
"""Class attribute naming the methods besides ``forward`` that training calls on a network (e.g.
MRI's ``DataPredictor.raw``, the language DiT's ``apply_parts``): FSDP gathers a unit's
parameters only around the calls it hooks. A nested module that declares it becomes a unit."""


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP units of ``model`` below the root: every child of an ``nn.ModuleList`` and every
    module that declares :data:`FORWARD_METHODS_ATTR` (a network that training calls directly,
    nested in a wrapper, e.g. FMLM's DiT inside its flow map), if it holds parameters, in
    post-order (a unit's inner units come before it, as ``fully_shard`` requires)."""
    units = []

    def visit(module: nn.Module, in_list: bool) -> None:
        for child in module.children():
            visit(child, isinstance(module, nn.ModuleList))
        if (in_list or hasattr(module, FORWARD_METHODS_ATTR)) and any(True for _ in module.parameters()):
            units.append(module)

    for child in model.children():  # the root is sharded last, by apply_fsdp
        visit(child, isinstance(model, nn.ModuleList))
    return units


def apply_fsdp(model: nn.Module, mesh) -> None:
    """Shard ``model`` in place over the 1-D device mesh ``mesh`` (:func:`shard_units`, then
    the root for the parameters outside every unit); the :data:`FORWARD_METHODS_ATTR` methods
    of each unit and of the root are hooked like ``forward``."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for module in (*units, model):
        for name in getattr(module, FORWARD_METHODS_ATTR, ()):
            register_fsdp_forward_method(module, name)


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a ``DTensor`` (FSDP has sharded it)."""
    return any(is_dtensor(p) for p in model.parameters())


def shard_like(whole: Tensor, like: Tensor) -> Tensor:
    """``whole`` (the full tensor, the same on every rank) as a ``DTensor`` laid out like the
    ``DTensor`` ``like``, cut locally without communication; ``whole`` itself if ``like`` is
    a plain tensor."""
    if not is_dtensor(like) or is_dtensor(whole):
        return whole
    from torch.distributed.tensor import distribute_tensor

    if tuple(whole.shape) != tuple(like.shape):
        raise ValueError(f"shard_like: a whole tensor of shape {tuple(whole.shape)} cannot take the layout of a "
                         f"parameter of shape {tuple(like.shape)}")
    whole = whole.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def gather(obj: Any) -> Any:
    """``obj`` (tensors in nested dicts, lists and tuples) with every ``DTensor`` replaced by
    its whole tensor; a collective when ``obj`` holds ``DTensor`` s, so every rank must call it
    on the same structure."""
    if isinstance(obj, Tensor):
        return obj.full_tensor() if is_dtensor(obj) else obj
    if isinstance(obj, dict):
        return {k: gather(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(gather(v) for v in obj)
    return obj


def reshard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.load_state_dict`` of whole tensors (a checkpoint): cut every state
    tensor shaped like its ``DTensor`` parameter (Adam's moments) into this rank's shard."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            for key, value in state.items():
                if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) == tuple(p.shape):
                    state[key] = shard_like(value, p)
