"""arcvq-patch and the latent-diffusion series on a clone in upstream's real layout.

The clone (tests/upstream_clones.py) has upstream's namespace package ``ldm/`` while PyPI's
ldm-fix, a regular package, stays installed, and upstream's main.py rebuilt byte for byte.
Through ``arcvq-patch check / apply / revert``, the patched main.py trains ldm's own VQModel with
an ArcQuantizer and without (the baseline) on one CPU process and on two (gloo, with the strategy
it picks for ``--gpus 0,1``, discriminator active), resumes a SIGUSR1 checkpoint written mid-epoch
exactly, and every trainable model class of the touched file trains or is refused with its reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arcvq_plugin.patching import load_all_series
from arcvq_plugin.patching.cli import main as arcvq_patch
from upstream_clones import (assert_same_training_state, build_ldm_clone, ddp_on_two_cpus, git,
                             last_checkpoint, manifest, newest_run, run_main, run_script, sha256,
                             snapshot, tiny_config)

UPSTREAM = "latent-diffusion"
MANIFEST = manifest(UPSTREAM)
TOUCHED = sorted(MANIFEST["files"])
OWN_MODEL = "ldm.models.autoencoder.VQModel"
UPSTREAM_DATA = "main.DataModuleFromConfig"


@pytest.fixture()
def ldm_clone(tmp_path: Path) -> Path:
    return build_ldm_clone(tmp_path)


def config(tmp: Path, name: str, **kwargs) -> Path:
    kwargs.setdefault("model_target", OWN_MODEL)
    kwargs.setdefault("data_target", UPSTREAM_DATA)
    kwargs.setdefault("model__params__monitor", None)
    return tiny_config(tmp, name, "ldm/tiny_arcvq_f4.yaml", **kwargs)


def test_series_manifest_matches_patches() -> None:
    (series,) = [s for s in load_all_series() if s.upstream == UPSTREAM]
    assert series.commit.startswith("a506df5")
    assert list(series.paths) == TOUCHED
    assert [p.name[:4] for p in series.patches] == ["0001", "0002", "0003", "0004", "0005"]


def test_apply_train_resume_revert_on_one_process(ldm_clone: Path, tmp_path: Path, capsys) -> None:
    clone = ldm_clone
    before = snapshot(clone)
    assert not (clone / "ldm" / "__init__.py").exists()
    assert arcvq_patch(["check", str(clone)]) == 0
    assert arcvq_patch(["apply", str(clone)]) == 0
    for path in TOUCHED:
        assert sha256(clone / path) == MANIFEST["files"][path]["patched_sha256"], path
    capsys.readouterr()
    assert arcvq_patch(["apply", str(clone)]) == 0
    assert "already applied" in capsys.readouterr().out

    # ldm's own VQModel (ldm-fix's has no quantizer_config): ArcVQ and the baseline
    run_main(clone, config(tmp_path, "arc"))
    arc = last_checkpoint(clone)
    assert arc["global_step"] == 2 * 2 and int(arc["state_dict"]["quantize.clock"]) == 2  # 8 images, batch 4
    run_main(clone, config(tmp_path, "base", quantizer=False))
    base = last_checkpoint(clone)
    assert set(arc["state_dict"]) == set(base["state_dict"]) | {"quantize.clock"}

    # preemption: 3 batches, SIGUSR1 after batch 1, resumed with -r
    resume = dict(train_length=12, model__params__lossconfig__params__disc_start=1)
    run_main(clone, config(tmp_path, "straight", **resume))
    straight = last_checkpoint(clone)
    stop = {"target": "upstream_clones.SignalAndStop", "params": {"after": 1}}
    run_main(clone, config(tmp_path, "preempted", **resume, lightning__callbacks__stop=stop,
                           lightning__modelcheckpoint={"params": {"save_last": False}}))
    signal_checkpoint = newest_run(clone) / "checkpoints" / "last.ckpt"
    assert torch.load(signal_checkpoint, weights_only=True)["global_step"] == 2
    run_main(clone, config(tmp_path, "resume_settings", **resume,
                           lightning__modelcheckpoint={"params": {"save_last": True}},
                           lightning__callbacks__stop={"params": {"after": 1000}}),
             "-r", str(signal_checkpoint))
    resumed = torch.load(signal_checkpoint.with_name("last-v1.ckpt"), weights_only=True)
    assert resumed["global_step"] == 2 * 3 and int(resumed["state_dict"]["quantize.clock"]) == 3
    assert_same_training_state(straight, resumed)

    assert arcvq_patch(["revert", str(clone)]) == 0
    assert snapshot(clone) == before
    assert git(clone, "status", "--porcelain", "--untracked-files=no") == ""


def test_two_processes_with_the_strategy_main_py_picks_for_two_gpus(ldm_clone: Path, tmp_path: Path) -> None:
    clone = ldm_clone
    assert arcvq_patch(["apply", str(clone)]) == 0
    ddp = ddp_on_two_cpus(clone)
    active = dict(train_length=16, model__params__lossconfig__params__disc_start=0)  # 2 batches per rank
    run_main(clone, config(tmp_path, "ddp_arc", **active), *ddp)
    arc = last_checkpoint(clone)
    assert arc["global_step"] == 2 * 2 and int(arc["state_dict"]["quantize.clock"]) == 2
    run_main(clone, config(tmp_path, "ddp_base", quantizer=False, **active), *ddp)
    assert last_checkpoint(clone)["global_step"] == 2 * 2


MODEL_CLASSES = r"""
import pytorch_lightning as pl, torch
from torch import nn
from torch.utils.data import DataLoader
import main  # binds ldm to this clone
from ldm.models import autoencoder


class TinyKLLoss(nn.Module):
    # the call signature of ldm's LPIPSWithDiscriminator (whose LPIPS needs downloaded weights)
    def __init__(self):
        super().__init__()
        self.discriminator = nn.Conv2d(3, 1, 3)

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step, last_layer=None, split="train"):
        if optimizer_idx == 0:
            loss = (inputs - reconstructions).abs().mean() + 1e-6 * posteriors.kl().mean() \
                - self.discriminator(reconstructions).mean() * float(global_step >= 0)
            return loss, {f"{split}/rec_loss": loss.detach()}
        loss = torch.relu(1 - self.discriminator(inputs.detach())).mean() + \
            torch.relu(1 + self.discriminator(reconstructions.detach())).mean()
        return loss, {f"{split}/disc_loss": loss.detach()}


dd = dict(double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[], dropout=0.0)
gan = dict(target="arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator",
           params=dict(disc_start=0, disc_num_layers=1, disc_ndf=8, perceptual_weight=0.0))
images = [{"image": torch.rand(16, 16, 3) * 2 - 1} for _ in range(4)]
cases = [
    ("VQModel", lambda: autoencoder.VQModel(dd, gan, 16, 4)),
    ("VQModelInterface", lambda: autoencoder.VQModelInterface(4, dd, gan, 16)),
    ("AutoencoderKL", lambda: autoencoder.AutoencoderKL(dict(dd, double_z=True), dict(target="__main__.TinyKLLoss"), 4)),
]
for name, build in cases:
    model = build()
    model.learning_rate = 1e-3
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        trainer.fit(model, DataLoader(images, batch_size=2), DataLoader(images, batch_size=2))
    except NotImplementedError as refusal:
        print("REFUSED", name, "|", refusal)
        continue
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    print("TRAINED", name, trainer.global_step, moved > 0)
"""


def test_every_model_class_trains_a_step_or_is_refused_with_its_reason(ldm_clone: Path) -> None:
    assert arcvq_patch(["apply", str(ldm_clone)]) == 0
    lines = [line for line in run_script(ldm_clone, MODEL_CLASSES).splitlines()
             if line.startswith(("TRAINED", "REFUSED"))]
    assert lines[0] == "TRAINED VQModel 4 True"  # 2 batches x 2 optimizers
    assert lines[1].startswith("REFUSED VQModelInterface | VQModelInterface is LatentDiffusion's frozen first stage")
    assert lines[2] == "TRAINED AutoencoderKL 4 True"
    assert len(lines) == 3
