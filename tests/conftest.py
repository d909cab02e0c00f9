"""Shared fixtures. Plots never open windows; tests are deterministic by seed."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


# The suite's models are tiny: one thread avoids oversubscribing CI's 2 cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator for tests that draw many samples."""
    return torch.Generator().manual_seed(1234)
