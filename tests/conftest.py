"""Shared fixtures. Plots never open windows; tests are deterministic by seed."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator for tests that draw many samples."""
    return torch.Generator().manual_seed(1234)
