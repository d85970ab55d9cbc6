"""arcvq-patch and the taming-transformers series on an upstream-layout clone.

The clone is assembled from PyPI's taming-transformers-rom1504 (the real upstream tree is not
installable offline): its files in upstream's layout, the three files the series touches rebuilt
to upstream's exact bytes (test_patch_fixtures/taming_pypi_to_upstream.diff, checked against the
sha256 recorded from upstream in patches/taming-transformers/upstream.json), then ``git init``.
Two names PyPI lacks and upstream imports but the tests never use get stand-ins (see
``_add_stand_ins``); they are not files the series touches.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from arcvq_plugin.patching import load_all_series
from arcvq_plugin.patching.cli import main as arcvq_patch

REPO = Path(__file__).resolve().parents[1]
SERIES_DIR = REPO / "patches" / "taming-transformers"
FIXTURE_DIFF = Path(__file__).parent / "test_patch_fixtures" / "taming_pypi_to_upstream.diff"
MANIFEST = json.loads((SERIES_DIR / "upstream.json").read_text())
TOUCHED = sorted(MANIFEST["files"])


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _add_stand_ins(clone: Path) -> None:
    """Names upstream imports that PyPI's copy lacks, in files the series does not touch.

    upstream taming/data/utils.py imports ``Annotation`` from taming/data/helper_types.py (absent
    on PyPI; custom_collate only isinstance-checks it) and upstream vqgan.py imports
    ``EMAVectorQuantizer`` (absent from PyPI's quantize.py; only the EMAVQ class uses it).
    """
    (clone / "taming" / "data" / "helper_types.py").write_text(
        "from typing import NamedTuple\n\n\nclass Annotation(NamedTuple):\n    category_no: int\n")
    with open(clone / "taming" / "modules" / "vqvae" / "quantize.py", "a") as f:
        f.write("\n\nclass EMAVectorQuantizer(nn.Module):\n"
                "    def __init__(self, *args, **kwargs):\n"
                "        raise NotImplementedError('not shipped by the PyPI copy')\n")


@pytest.fixture()
def taming_clone(tmp_path: Path) -> Path:
    """A committed git clone in upstream's layout whose touched files are upstream's bytes."""
    clone = tmp_path / "taming-transformers"
    pypi = Path(importlib.util.find_spec("taming").origin).parent
    shutil.copytree(pypi, clone / "taming", ignore=shutil.ignore_patterns("__pycache__"))
    (clone / "taming" / "main.py").rename(clone / "main.py")
    subprocess.run(["git", "apply", "--whitespace=nowarn", str(FIXTURE_DIFF)], cwd=clone, check=True,
                   env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    for path in TOUCHED:
        assert _sha(clone / path) == MANIFEST["files"][path]["original_sha256"], path
    _add_stand_ins(clone)
    _git(clone, "init", "-q")
    _git(clone, "add", "-A")
    _git(clone, "commit", "-qm", "upstream layout")
    return clone


def _snapshot(clone: Path) -> dict[str, bytes]:
    return {str(p.relative_to(clone)): p.read_bytes() for p in sorted(clone.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(clone).parts}


def _tiny_config(tmp: Path, name: str, *, quantizer: bool, own_model: bool, norm_bound_listed: bool) -> Path:
    """configs/taming/tiny_*.yaml, optionally on the clone's own taming.models.vqgan.VQModel."""
    config = yaml.safe_load((REPO / "configs" / "taming" / "tiny_arcvq.yaml").read_text())
    if not quantizer:
        del config["model"]["params"]["quantizer_config"]
    if own_model:
        config["model"]["target"] = "taming.models.vqgan.VQModel"
    callbacks = config["lightning"]["callbacks"]
    if not norm_bound_listed:
        callbacks.pop("norm_bound", None)
    callbacks.pop("codebook_monitor", None)
    config["data"]["params"]["train"]["params"]["length"] = 8
    config["data"]["params"]["validation"]["params"]["length"] = 4
    config["lightning"]["trainer"].update(max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0,
                                          enable_progress_bar=False, enable_model_summary=False)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(clone: Path, config: Path) -> dict:
    """Run the clone's patched ``python main.py --base config -t True``; return last.ckpt."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "TORCH_HOME": str(clone / "torch_home"),
           "HF_HUB_OFFLINE": "1"}
    logs = clone / "logs"
    before = set(logs.iterdir()) if logs.exists() else set()
    result = subprocess.run([sys.executable, "main.py", "--base", str(config), "-t", "True", "--no-test", "True"],
                            cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (run,) = set(logs.iterdir()) - before
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_series_manifest_matches_patches() -> None:
    (series,) = [s for s in load_all_series() if s.upstream == "taming-transformers"]
    assert series.commit.startswith("3ba01b2")
    assert list(series.paths) == TOUCHED
    assert [p.name[:4] for p in series.patches] == ["0001", "0002", "0003", "0004", "0005"]


def test_apply_train_revert(taming_clone: Path, tmp_path: Path, capsys) -> None:
    clone = taming_clone
    before = _snapshot(clone)
    assert arcvq_patch(["check", str(clone)]) == 0
    assert arcvq_patch(["apply", str(clone)]) == 0
    for path in TOUCHED:
        assert _sha(clone / path) == MANIFEST["files"][path]["patched_sha256"], path
    changed = {p for p, data in _snapshot(clone).items() if before.get(p) != data}
    assert changed == set(TOUCHED) | {f".arcvq-patch/taming-transformers/original/{p}" for p in TOUCHED} | {
        ".arcvq-patch/taming-transformers/record.json"}
    capsys.readouterr()
    assert arcvq_patch(["apply", str(clone)]) == 0
    assert "already applied" in capsys.readouterr().out

    batches = 2  # 8 training images, batch size 4
    arc = _train(clone, _tiny_config(tmp_path, "arc", quantizer=True, own_model=False, norm_bound_listed=True))
    assert int(arc["state_dict"]["quantize.clock"]) == batches  # one tick per batch, hook registered once
    assert arc["global_step"] == 2 * batches  # manual optimization: two optimizer steps per batch
    own = _train(clone, _tiny_config(tmp_path, "own", quantizer=True, own_model=True, norm_bound_listed=False))
    assert int(own["state_dict"]["quantize.clock"]) == batches  # NormBoundCallback added by main.py
    assert own["state_dict"]["quantize.embedding.weight"].shape == (32, 8)
    base = _train(clone, _tiny_config(tmp_path, "base", quantizer=False, own_model=True, norm_bound_listed=False))
    assert "quantize.clock" not in base["state_dict"]  # upstream VectorQuantizer2
    assert base["state_dict"]["quantize.embedding.weight"].shape == (32, 8)
    assert set(own["state_dict"]) == set(base["state_dict"]) | {"quantize.clock"}

    assert arcvq_patch(["revert", str(clone)]) == 0
    after = _snapshot(clone)
    assert {p: d for p, d in after.items() if not p.startswith("logs/")} == before
    assert _git(clone, "status", "--porcelain", "--untracked-files=no") == ""
    assert arcvq_patch(["revert", str(clone)]) == 0  # nothing left to revert


def test_refuses_dirty_tree(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    util = clone / "taming" / "util.py"
    util.write_text(util.read_text() + "# local edit\n")
    before = _snapshot(clone)
    assert arcvq_patch(["check", str(clone)]) == 1
    assert arcvq_patch(["apply", str(clone)]) == 1
    assert "uncommitted changes in taming/util.py" in capsys.readouterr().err
    assert _snapshot(clone) == before
    assert arcvq_patch(["apply", str(clone), "--force"]) == 0
    assert arcvq_patch(["revert", str(clone)]) == 0
    assert _snapshot(clone) == before


def test_refuses_unknown_commit_and_force_reverts_byte_exact(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    main = clone / "main.py"
    main.write_text(main.read_text().replace('        help="postfix for logdir",',
                                             '        help="postfix for the log folder",'))
    _git(clone, "commit", "-qam", "local change")
    before = _snapshot(clone)
    assert arcvq_patch(["apply", str(clone)]) == 1
    err = capsys.readouterr().err
    assert "unknown commit" in err and "main.py" in err and "--force" in err
    assert _snapshot(clone) == before
    assert arcvq_patch(["apply", str(clone), "--force"]) == 0
    assert "postfix for the log folder" in main.read_text()
    main.write_text(main.read_text() + "# edited after patching\n")
    assert arcvq_patch(["revert", str(clone)]) == 1  # would discard the edit
    assert "changed since" in capsys.readouterr().err
    assert arcvq_patch(["revert", str(clone), "--force"]) == 0
    assert _snapshot(clone) == before


def test_partially_applicable_series_changes_nothing(taming_clone: Path, capsys) -> None:
    clone = taming_clone
    vqgan = clone / "taming" / "models" / "vqgan.py"
    vqgan.write_text(vqgan.read_text().replace("        rec_loss = log_dict_ae[\"val/rec_loss\"]\n",
                                               "        rec_loss = log_dict_ae[\"val/rec_loss\"]  # mine\n", 1))
    _git(clone, "commit", "-qam", "conflicting change")
    before = _snapshot(clone)
    assert arcvq_patch(["apply", str(clone), "--force"]) == 1
    err = capsys.readouterr().err
    assert "0003-" in err and "does not apply" in err and "nothing was changed" in err
    assert _snapshot(clone) == before  # 0001 and 0002 applied in staging only
    assert not (clone / ".arcvq-patch").exists()


def test_not_a_supported_clone(tmp_path: Path, capsys) -> None:
    (tmp_path / "main.py").write_text("print('hi')\n")
    assert arcvq_patch(["check", str(tmp_path)]) == 2
    assert "not a clone of a supported upstream" in capsys.readouterr().err
