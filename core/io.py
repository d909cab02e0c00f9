"""File input and output shared by the modalities: atomic writes (write to a temp file in the
same folder, fsync, then rename, so a crash never leaves a half-written checkpoint, config or
report behind) and a ``.npy`` reader whose errors name the file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "read_npy"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then rename it over ``path``.
    On any error the temp file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp creates 0600, and a writer may replace the file with its own 0600 one (safetensors does): give it
        # the mode a plain open() would (0666 & ~umask), after the write
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write(Path(path), lambda p: p.write_text(text))


def read_npy(path: str | Path, what: str = "array", mmap: bool = False) -> np.ndarray:
    """Read a ``.npy`` file without unpickling (object arrays are refused); ``mmap``: memory-mapped read-only, so
    that a large array is read only where it is indexed. An absent, empty, truncated or non-``.npy`` file raises an
    error that names ``path`` and ``what`` it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty; expected a .npy {what}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy {what} ({e})") from None
