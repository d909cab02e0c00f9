"""Atomic writes keep the previous file when writing fails and leave no temp files."""

import pytest

from modaflow.core.io import atomic_write, atomic_write_text


def test_atomic_write_replaces(tmp_path) -> None:
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(x.name for x in p.parent.iterdir()) == ["f.txt"]


def test_failed_write_keeps_old_content(tmp_path) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "good")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, broken)
    assert p.read_text() == "good"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_mode_follows_umask(tmp_path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        p = tmp_path / "f.txt"
        atomic_write_text(p, "x")
        assert p.stat().st_mode & 0o777 == 0o644
        import torch
        from safetensors.torch import save_file  # writes a new file of mode 0600 in place of the temp file

        q = tmp_path / "f.safetensors"
        atomic_write(q, lambda t: save_file({"a": torch.zeros(2)}, str(t)))
        assert q.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
