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


def test_run_folder_lock_refuses_a_second_writer_and_never_goes_stale(tmp_path, monkeypatch) -> None:
    import os
    import signal
    import subprocess
    import sys

    from modaflow.core.io import RunFolderBusy, run_folder_lock

    run = tmp_path / "runs" / "a"
    with run_folder_lock(run):
        assert not run.exists() and (tmp_path / "runs" / ".a.lock").is_file()  # beside the folder, which is not made
        with pytest.raises(RunFolderBusy, match=rf"^{run}: pid {os.getpid()} \(.*\) is writing this run folder \(lock "
                                                rf"{tmp_path / 'runs' / '.a.lock'}\); wait for it"):
            with run_folder_lock(run):
                pass
        with run_folder_lock(tmp_path / "runs" / "b"):  # another folder: its own lock
            pass
        monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker: rank 0 holds the lock
        with run_folder_lock(run):
            pass
        monkeypatch.delenv("LOCAL_RANK")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == []  # released and removed
    # one lock whatever the spelling: a link to the folder, or a path through ..
    run.mkdir()
    (tmp_path / "link").symlink_to(run)
    with run_folder_lock(tmp_path / "link"):
        for other in (run, tmp_path / "runs" / "b" / ".." / "a"):
            with pytest.raises(RunFolderBusy, match=rf"^{run}: pid "):
                with run_folder_lock(other):
                    pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file: exists and is not a folder; the output option names a run folder"):
        with run_folder_lock(tmp_path / "file"):
            pass
    # a holder killed outright leaves its file behind, but the kernel released its lock
    code = f"from modaflow.core.io import run_folder_lock\nwith run_folder_lock({str(run)!r}):\n    print('held', flush=True)\n    input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusy, match=rf"pid {proc.pid} "):
        with run_folder_lock(run):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / "runs" / ".a.lock").is_file()
    with run_folder_lock(run):
        pass
