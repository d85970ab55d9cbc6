"""``arcvq-patch`` on a clone it cannot write: refused before writing (read-only) or rolled back
completely (full disk), with a message and exit status 1 (reliability rows 113-114).

The full disk is a real tmpfs holding the clone when this process may mount one (root), else (and
for a write that fails only when flushed, after the temporary file exists) ``fsync`` raises the
OSError(ENOSPC) a full disk raises.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from arcvq_plugin.patching import find_series, load_all_series, operations
from arcvq_plugin.patching.cli import main as arcvq_patch
from upstream_clones import build_taming_clone, snapshot


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".git" not in p.relative_to(folder).parts)


def test_read_only_clone_is_refused_before_writing(tmp_path, capsys, read_only):
    clone = build_taming_clone(tmp_path)
    before, names = snapshot(clone), _files(clone)
    read_only(clone)
    assert arcvq_patch(["apply", str(clone)]) == 1
    err = capsys.readouterr().err
    assert "cannot write into" in err and "nothing was changed" in err and "Traceback" not in err
    assert snapshot(clone) == before and _files(clone) == names


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` until about ``leave`` bytes are free."""
    with open(folder / "filler", "wb") as handle:
        try:
            while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave:
                handle.write(b"\0" * 4096)
                handle.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC


@pytest.mark.parametrize("room", ["none", "originals only", "fails at fsync"])
def test_full_disk_apply_is_rolled_back_completely(tmp_path, capsys, monkeypatch, room):
    built = build_taming_clone(tmp_path / "built")
    disk = tmp_path / "disk"
    disk.mkdir()
    size = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    mounted = room != "fails at fsync" and os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size * 2 + (8 << 20)}", "tmpfs", str(disk)],
        capture_output=True).returncode == 0
    try:
        clone = Path(shutil.copytree(built, disk / built.name, symlinks=True))
        before, names = snapshot(clone), _files(clone)
        touched = sum((clone / path).stat().st_size for path in find_series(clone, load_all_series(None)).paths)
        if mounted:
            _fill(disk, 0 if room == "none" else touched + 8192)
        else:
            def full_disk(fd):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(operations.os, "fsync", full_disk)
        assert arcvq_patch(["apply", str(clone)]) == 1
        err = capsys.readouterr().err
        assert "No space left on device" in err and "nothing was changed" in err and "Traceback" not in err
        assert snapshot(clone) == before and _files(clone) == names  # no .arcvq-patch/, no *.arcvq-patch-tmp
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: a failed test may hold a file open

