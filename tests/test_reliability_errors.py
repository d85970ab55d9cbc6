"""Clear errors before any output exists: damaged checkpoints, unreadable images and full disks in
``arcvq-convert`` (reliability rows 110-119).

Full disks are real where the machine allows it: a 64 KiB tmpfs mounted by root. Elsewhere the
test raises the exact exception torch's zip writer raises on a full disk (RuntimeError).
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest
import torch

from arcvq_plugin.atomic_outputs import save_torch
from arcvq_plugin.convert.cli import main as convert_main
from test_convert import image_folder, save, upstream_state_dict, with_codebook  # noqa: F401 - image_folder: a fixture

LAYOUT = "vq-f8-n256"
CODEBOOK = "quantize.embedding.weight"


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return upstream_state_dict(LAYOUT)


@pytest.fixture
def full_disk(tmp_path, monkeypatch):
    """A folder on a full file system: a real 64 KiB tmpfs when this process may mount one, else a
    folder where ``torch.save`` raises what its zip writer raises on ENOSPC."""
    folder = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True).returncode == 0
    if not mounted:
        real_save = torch.save

        def save_on_full_disk(obj, path, *args, **kwargs):
            if str(path).startswith(str(folder)):
                with open(path, "wb") as handle:
                    handle.write(b"PK\x03\x04")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            return real_save(obj, path, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save_on_full_disk)
    yield folder
    if mounted:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)  # lazy: a failed test may hold a file open


def _convert(tmp_path, capsys, state_dict, *extra, out=None) -> tuple[int, str]:
    src = save(tmp_path / "in.ckpt", state_dict)
    out = out or tmp_path / "out" / "out.ckpt"
    out.parent.mkdir(exist_ok=True)
    code = convert_main([src, str(out), "--skip-near-duplicates", *extra])
    return code, capsys.readouterr().err


def _no_output(tmp_path) -> None:
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("damage", ["nan", "inf", "1e30"])
def test_convert_refuses_a_non_finite_or_overflowing_codebook(tmp_path, capsys, source, damage):
    codebook = source[CODEBOOK].clone()
    if damage == "1e30":
        codebook = codebook / codebook.abs().max() * 1e30
    else:
        codebook[3, 1] = float(damage)
    code, err = _convert(tmp_path, capsys, with_codebook(source, codebook))
    assert code == 2, err
    assert "Traceback" not in err and f"codebook '{CODEBOOK}'" in err
    assert ("overflows float32" in err and "must be below" in err) if damage == "1e30" else "must be finite" in err
    _no_output(tmp_path)


def test_convert_names_a_non_finite_decoder_weight(tmp_path, capsys, source):
    state = dict(source)
    key = next(k for k in state if k.startswith("decoder.") and k.endswith(".weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    code, err = _convert(tmp_path, capsys, state)
    assert code == 2
    assert f"holds non-finite values at key {key!r}" in err and "differs from the input" not in err
    _no_output(tmp_path)


def test_convert_names_a_corrupt_image_before_writing(tmp_path, capsys, source, image_folder):
    images = tmp_path / "images"
    images.mkdir()
    for path in image_folder.iterdir():
        (images / path.name).write_bytes(path.read_bytes())
    (images / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    code, err = _convert(tmp_path, capsys, source, "--images", str(images), "--image-size", "32")
    assert code == 2, err
    assert "cannot read the image file" in err and "img1.png" in err and "writing the outputs failed" not in err
    _no_output(tmp_path)


def test_convert_on_a_full_disk_reports_the_write_failure_and_leaves_nothing(tmp_path, capsys, source, full_disk):
    code, err = _convert(tmp_path, capsys, source, out=full_disk / "out.ckpt")
    assert code == 1, err
    assert "writing the outputs failed" in err and "nothing was written" in err and "Traceback" not in err
    assert list(full_disk.iterdir()) == []  # no temporary file left behind


def test_save_torch_turns_the_zip_writers_error_into_oserror(full_disk):
    with pytest.raises(OSError, match="torch.save wrote"):
        save_torch({"x": torch.zeros(100_000)}, full_disk / "x.pt")

