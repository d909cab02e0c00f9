"""Quiet Lightning: its banners and warnings silenced while library code trains."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

__all__ = ["quiet_lightning"]


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's loggers (ERROR only) and all warnings inside the block; the
    previous levels and filters come back afterwards, also on an exception."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
