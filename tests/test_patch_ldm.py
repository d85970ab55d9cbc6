"""The latent-diffusion series' model patches on PyPI's ldm-fix copy (byte-identical to upstream).

ldm-fix ships upstream's ldm/models/autoencoder.py and ldm/models/diffusion/ddpm.py byte for
byte but no main.py, so the patches to those two files are applied here with ``git apply`` in
series order (checked against patches/latent-diffusion/upstream.json before and after), and the
patched VQModel trains two batches under pytorch-lightning 2.x, with taming's loss (which rejects
``predicted_indices``), with and without an ArcQuantizer ``quantizer_config``.
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

REPO = Path(__file__).resolve().parents[1]
SERIES_DIR = REPO / "patches" / "latent-diffusion"
MANIFEST = json.loads((SERIES_DIR / "upstream.json").read_text())
MODEL_FILES = ["ldm/models/autoencoder.py", "ldm/models/diffusion/ddpm.py"]

TRAIN_SCRIPT = r"""
import pytorch_lightning as pl, torch
from torch.utils.data import DataLoader
from arcvq_plugin import NormBoundCallback
from ldm.models.autoencoder import VQModel
import ldm.models.diffusion.ddpm  # imports under Lightning 2.x once patched

ddconfig = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
lossconfig = dict(target="arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator",
                  params=dict(disc_start=1, disc_num_layers=1, disc_ndf=8, perceptual_weight=0.0))
data = [{"image": torch.rand(16, 16, 3) * 2 - 1} for _ in range(4)]
for quantizer_config in (None, {"target": "arcvq_plugin.ArcQuantizer", "params": {"arc_top_k": 2}}):
    torch.manual_seed(0)
    model = VQModel(ddconfig, lossconfig, n_embed=16, embed_dim=4, quantizer_config=quantizer_config)
    model.learning_rate = 1e-4
    assert not model.loss_takes_indices  # taming's loss: no predicted_indices=
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[NormBoundCallback()] if quantizer_config else [])
    trainer.fit(model, DataLoader(data, batch_size=2), DataLoader(data, batch_size=2))
    assert trainer.global_step == 4, trainer.global_step  # 2 batches x 2 optimizers
    kind = type(model.quantize).__name__
    clock = int(model.quantize.clock) if quantizer_config else None
    print("TRAINED", kind, clock, sorted(trainer.callback_metrics)[:3])
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ldm_model_patches_train_vqmodel(tmp_path: Path) -> None:
    tree = tmp_path / "latent-diffusion"
    pypi = Path(importlib.util.find_spec("ldm").origin).parent
    shutil.copytree(pypi, tree / "ldm", ignore=shutil.ignore_patterns("__pycache__"))
    for path in MODEL_FILES:
        assert _sha(tree / path) == MANIFEST["files"][path]["original_sha256"], path
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    model_patches = [p for p in sorted(SERIES_DIR.glob("*.patch")) if "diff --git a/main.py" not in p.read_text()]
    assert [p.name[:4] for p in model_patches] == ["0002", "0003", "0004"]
    for patch in model_patches:
        subprocess.run(["git", "apply", str(patch)], cwd=tree, env=env, check=True)
    for path in MODEL_FILES:
        assert _sha(tree / path) == MANIFEST["files"][path]["patched_sha256"], path

    result = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT], cwd=tree, capture_output=True, text=True,
                            env={**env, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    trained = [line.split()[1:3] for line in result.stdout.splitlines() if line.startswith("TRAINED")]
    assert trained == [["VectorQuantizer2", "None"], ["ArcQuantizer", "2"]]
