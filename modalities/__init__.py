"""modaflow.modalities: one sub-package per modality, each exposing a ``MODALITY``
(:class:`modaflow.modalities.registry.Modality`) listed in
:data:`modaflow.modalities.registry.MODALITIES`."""

from .registry import DatasetInfo, Modality, get_modality, list_datasets, modality_names

__all__ = ["DatasetInfo", "Modality", "get_modality", "list_datasets", "modality_names"]
