"""File input and output shared by the modalities: atomic writes (write to a temp file in the
same folder, fsync, then rename, so a crash never leaves a half-written checkpoint, config or
report behind), a ``.npy`` reader whose errors name the file, and a lock that keeps two processes
from writing one run folder."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_write_text", "read_npy", "RunFolderBusy", "run_folder_lock", "RANK_VARIABLES"]

RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
"""Environment variables a launcher (Lightning's DDP subprocesses, torchrun, SLURM) sets to a process's rank; a
process where one of them is not 0 is a worker of a run whose rank 0 holds the lock (:func:`run_folder_lock`)."""


class RunFolderBusy(RuntimeError):
    """Another process holds the lock of the run folder this one was asked to write."""


def _lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def run_folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on writing run folder ``folder`` for the ``with`` block, or raise
    :class:`RunFolderBusy` naming the process that holds it: two trainings into one folder would
    overwrite each other's checkpoints. The lock is ``flock`` on ``.<name>.lock`` beside the folder
    (so a command refused before it writes leaves no folder), released by the kernel when its process
    dies (no stale locks) and removed on exit. Workers of a multi-process launch (:data:`RANK_VARIABLES`
    not 0) take none: their rank 0 holds it. A no-op where ``fcntl`` does not exist (Windows)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    if any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES):
        yield
        return
    folder = Path(folder).resolve()  # one lock whatever the spelling: links and .. resolved
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder; the output option names a run folder to write")
    path = _lock_path(folder)
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: flock needs no write access
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                fd = _unlocked(folder, path, e)
        except OSError as e:  # a read-only parent folder (the run folder itself may be writable)
            fd = _unlocked(folder, path, e)
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"{folder}: {holder} is writing this run folder (lock {path}); wait for it to finish "
                                f"or choose another output folder") from None
        try:  # the file may have been removed by the holder that just released it: lock the one at path
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]})".encode(), 0)
        except OSError:  # opened read-only: locked all the same, without naming this process
            pass
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(fd)


def _unlocked(folder: Path, path: Path, error: OSError) -> None:
    """Warn that ``folder`` is written without a lock (``path`` cannot be made: ``error``); None."""
    import warnings

    warnings.warn(f"{folder}: cannot create the run-folder lock {path} ({error.strerror or error}); writing without it, "
                  f"so a second process writing this folder would not be stopped", UserWarning, stacklevel=4)
    return None


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
