"""write_file_atomic / write_text_atomic / save_torch_atomic: whole files or the old file, no temporary left."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arcvq_plugin.atomic_outputs import save_torch_atomic, write_file_atomic, write_text_atomic


def test_writes_replace_the_file_and_leave_nothing_else(tmp_path: Path):
    target = tmp_path / "table.md"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new\n")
    save_torch_atomic({"w": torch.arange(3)}, tmp_path / "run.pt")
    assert target.read_text() == "new\n"
    assert torch.equal(torch.load(tmp_path / "run.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt", "table.md"]


def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path):
    target = tmp_path / "results.json"
    write_text_atomic(target, '{"old": 1}\n')

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"new": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_file_atomic(target, half_then_fail)
    assert target.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
