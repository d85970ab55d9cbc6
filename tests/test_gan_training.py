"""The GAN training loop's upstream semantics (arcvq_plugin.gan_training), through the models and arcvq-train.

- the loss gets the same step sequence for the baseline and ArcVQ (Lightning 1.0's global_step:
  autoencoder optimizer steps), also with accumulation, and from 0 when fine-tuning a converted
  checkpoint whose ArcVQ clock starts at t0;
- the discriminator's fresh pass sees the updated autoencoder and trains no quantiser statistics;
  ``disc_reconstruction: reuse`` is the one-forward loop;
- ``accumulate_grad_batches: 2`` over two batches equals one batch of twice the size, one clock tick;
- a checkpoint written on SIGUSR1 in the middle of an epoch and of an accumulation window, resumed
  with ``-r``, ends bit for bit where the straight run ends (dropout, per-sample random jitter,
  DataLoader workers, two epochs);
- 2-process DDP (gloo) with the strategy ``arcvq-train --gpus 0,1`` picks, discriminator active.
"""
from __future__ import annotations

import functools
import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import arcvq_plugin.quantizer as quantizer_module
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.convert import convert_checkpoint
from arcvq_plugin.data.sample_images import SampleImagesTrain
from arcvq_plugin.main import _trainer_kwargs, main
from upstream_clones import assert_same_training_state

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "taming"
TINY = {"arcvq": str(CONFIGS / "tiny_arcvq.yaml"), "baseline": str(CONFIGS / "tiny_baseline.yaml")}
QUIET = ["--enable_progress_bar", "false", "--enable_model_summary", "false"]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- helpers ---------------------------------------------------------------------------------
def record_loss_calls(model) -> list[tuple]:
    """Wrap ``model.loss.forward`` (signature kept); each call appends (optimizer_idx, step,
    disc_factor, reconstructions) to the returned list."""
    calls: list[tuple] = []
    forward = model.loss.forward

    @functools.wraps(forward)
    def recording(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, *args, **kwargs):
        loss, log = forward(codebook_loss, inputs, reconstructions, optimizer_idx, global_step, *args, **kwargs)
        factor = float(log[f"{kwargs.get('split', 'train')}/disc_factor"]) if optimizer_idx == 0 else None
        calls.append((optimizer_idx, global_step, factor, reconstructions.detach().clone()))
        return loss, log

    model.loss.forward = recording
    return calls


def tiny_model(name: str, overrides=()):
    config = load_configs([TINY[name]], ["data.params.train.params.length=20", *overrides])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate = float(config.model.base_learning_rate)
    return model, config


def fit(model, config, batches: int, callbacks=(), accumulate: int = 1) -> pl.Trainer:
    from arcvq_plugin import NormBoundCallback

    model.accumulate_grad_batches = accumulate
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[NormBoundCallback(), *callbacks], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=instantiate_from_config(config.data))
    return trainer


def steps(calls) -> list[tuple[int, int]]:
    return [(idx, step) for idx, step, _, _ in calls]


# ---- the loss's step --------------------------------------------------------------------------
@pytest.mark.parametrize("accumulate", [1, 2])
def test_baseline_and_arcvq_give_the_loss_the_same_steps(accumulate):
    expected = [(idx, batch // accumulate) for batch in range(4) for idx in (0, 1)]
    for name in ("baseline", "arcvq"):
        model, config = tiny_model(name)
        calls = record_loss_calls(model)
        trainer = fit(model, config, batches=4, accumulate=accumulate)
        assert steps(calls) == expected, name
        assert trainer.global_step == 2 * 4 // accumulate
        if name == "arcvq":
            assert int(model.quantize.clock) == 4 // accumulate  # one tick per optimizer step


def test_a_converted_checkpoint_fine_tunes_with_the_discriminator_from_disc_start(tmp_path):
    """Its ArcVQ clock starts at t0 > 0 (the codebook norms are large); disc_start counts this
    training's steps from 0, as upstream, so the discriminator starts at batch index 3."""
    baseline, _ = tiny_model("baseline")
    state = baseline.state_dict()
    state["quantize.embedding.weight"] = torch.nn.functional.normalize(
        state["quantize.embedding.weight"], dim=1) * torch.linspace(1.0, 4.0, 32)[:, None]
    torch.save({"state_dict": state, "global_step": 5000}, tmp_path / "vqgan.ckpt")
    report = convert_checkpoint(tmp_path / "vqgan.ckpt", tmp_path / "arc.ckpt", resolution=32,
                                bbnr_alpha=3e-4, near_duplicate_cosine=None, log=lambda _: None)
    t0 = report.conversion.clock_start
    assert t0 > 1000

    model, config = tiny_model("arcvq", [f"model.params.ckpt_path={tmp_path / 'arc.ckpt'}",
                                         "model.params.lossconfig.params.disc_start=3"])
    assert int(model.quantize.clock) == t0
    calls = record_loss_calls(model)
    fit(model, config, batches=5)
    factors = [factor for idx, _, factor, _ in calls if idx == 0]
    assert factors == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert int(model.quantize.clock) == t0 + 5  # the ArcVQ clock runs on from t0


# ---- the discriminator's reconstructions ------------------------------------------------------
class KeepBatches(pl.Callback):
    def __init__(self):
        self.inputs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.inputs.append(pl_module.get_input(batch, pl_module.image_key).clone())


@pytest.mark.parametrize("mode", ["fresh", "reuse"])
def test_discriminator_reconstructions(monkeypatch, mode):
    model, config = tiny_model("arcvq", [f"model.params.disc_reconstruction={mode}"])
    arc_losses = []
    original = quantizer_module.arc_margin_loss_normalized
    monkeypatch.setattr(quantizer_module, "arc_margin_loss_normalized",
                        lambda *a, **k: arc_losses.append(1) or original(*a, **k))
    calls = record_loss_calls(model)
    batches = KeepBatches()
    fit(model, config, batches=1, callbacks=[batches])
    (_, _, _, ae_input), (_, _, _, disc_input) = calls
    with torch.no_grad(), model.quantize.passive():
        after_step, _ = model._autoencode(batches.inputs[0])
    if mode == "fresh":  # the second forward ran after the autoencoder's step
        torch.testing.assert_close(disc_input, after_step, rtol=0, atol=0)
        assert not torch.allclose(disc_input, ae_input)
    else:  # the first forward's reconstructions, before the step
        torch.testing.assert_close(disc_input, ae_input, rtol=0, atol=0)
        assert not torch.allclose(disc_input, after_step)
    # either way the quantiser trained once: one ArcLoss, one batch of codes counted
    assert len(arc_losses) == 1
    assert int(model.quantize.code_counts.sum()) == 4 * 8 * 8
    assert int(model.quantize.clock) == 1


def test_disc_reconstruction_is_validated():
    with pytest.raises(ValueError, match="disc_reconstruction must be 'fresh'.*or 'reuse'"):
        tiny_model("arcvq", ["model.params.disc_reconstruction=stale"])


# ---- accumulation -----------------------------------------------------------------------------
def test_accumulating_two_batches_equals_one_batch_of_twice_the_size(tmp_path):
    """Exact where the loss is a batch mean: ArcLoss off (its negatives are per batch) and the
    discriminator not started (its BatchNorm statistics are per batch); BBNR on."""
    common = ["--base", TINY["arcvq"], "-t", "--logdir", str(tmp_path), "--no-test", *QUIET,
              "--max_epochs", "1", "--limit_val_batches", "0", "--num_sanity_val_steps", "0",
              "data.params.train.params.length=8", "model.params.lossconfig.params.disc_start=100",
              "model.params.quantizer_config.params.use_arc_loss=false"]
    main([*common, "-n", "accumulated", "data.params.batch_size=4", "--accumulate_grad_batches", "2"])
    main([*common, "-n", "large", "data.params.batch_size=8"])
    runs = {name: torch.load(glob.glob(str(tmp_path / f"*_{name}" / "checkpoints" / "last.ckpt"))[0],
                             weights_only=True) for name in ("accumulated", "large")}
    accumulated, large = runs["accumulated"], runs["large"]
    assert accumulated["global_step"] == large["global_step"] == 2  # one step of each optimizer
    assert int(accumulated["state_dict"]["quantize.clock"]) == int(large["state_dict"]["quantize.clock"]) == 1
    # the gradients of the single step are equal (Adam's first moment is 0.5 * gradient) ...
    for a, b in zip(accumulated["optimizer_states"][0]["state"].values(),
                    large["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-3, atol=1e-12)
    # ... and so are the weights, up to Adam's first step g / (|g| + eps) on the conv biases that
    # precede a GroupNorm (analytically zero gradients, ~1e-9 here: float noise, sign included)
    trained = [k for k in large["state_dict"] if not k.startswith("loss.discriminator.")]
    initial, _ = tiny_model("arcvq")
    assert not torch.allclose(large["state_dict"]["encoder.conv_in.weight"], initial.encoder.conv_in.weight)
    difference = sum(float((accumulated["state_dict"][k].float() - large["state_dict"][k].float()).pow(2).sum())
                     for k in trained)
    size = sum(float(large["state_dict"][k].float().pow(2).sum()) for k in trained)
    assert (difference / size) ** 0.5 < 1e-5
    torch.testing.assert_close(accumulated["state_dict"]["quantize.embedding.weight"],
                               large["state_dict"]["quantize.embedding.weight"], rtol=1e-5, atol=1e-6)


# ---- mid-epoch resume -------------------------------------------------------------------------
class JitteredImages(SampleImagesTrain):
    """SampleImagesTrain with noise drawn from torch, numpy and python RNGs in ``__getitem__``."""

    def __getitem__(self, index):
        import random

        item = dict(super().__getitem__(index))
        noise = 0.05 * (torch.rand(1).item() + np.random.rand() + random.random())
        item["image"] = np.clip(item["image"] + noise, -1, 1).astype(np.float32)
        return item


def test_mid_epoch_resume_equals_the_straight_run(tmp_path):
    """2 epochs x 3 batches, accumulation 2, dropout 0.1, jittered data, 2 DataLoader workers;
    SIGUSR1 after batch 4 (epoch 1, inside an accumulation window), resume with -r."""
    common = ["-t", "--logdir", str(tmp_path), "--no-test", *QUIET, "--max_epochs", "2",
              "--accumulate_grad_batches", "2", "--limit_val_batches", "1", "--num_sanity_val_steps", "0",
              "data.params.train.target=test_gan_training.JitteredImages",
              "data.params.train.params.length=12", "data.params.num_workers=2",
              "model.params.ddconfig.dropout=0.1", "model.params.lossconfig.params.disc_start=1"]
    main(["--base", TINY["arcvq"], *common, "-n", "straight"])
    main(["--base", TINY["arcvq"], *common, "-n", "preempted", "lightning.modelcheckpoint.params.save_last=false",
          "lightning.callbacks.stop.target=upstream_clones.SignalAndStop",
          "lightning.callbacks.stop.params.after=4"])
    (preempted_run,) = glob.glob(str(tmp_path / "*_preempted"))
    signal_ckpt = Path(preempted_run) / "checkpoints" / "last.ckpt"
    half = torch.load(signal_ckpt, weights_only=True)
    assert half["global_step"] == 2 * 2 + 0  # 2 optimizer steps in epoch 0 (batches 0-1, 2), none yet in epoch 1
    assert half["epoch"] == 1 and "arcvq_accumulated_gradients" in half  # mid-window: gradients saved
    main(["-r", str(signal_ckpt), *common, "lightning.modelcheckpoint.params.save_last=true",
          "lightning.callbacks.stop.params.after=1000"])

    (straight_run,) = glob.glob(str(tmp_path / "*_straight"))
    straight = torch.load(Path(straight_run) / "checkpoints" / "last.ckpt", weights_only=True)
    # the resumed run's ModelCheckpoint writes the newest state over the signal's last.ckpt (never last-v1.ckpt)
    assert not signal_ckpt.with_name("last-v1.ckpt").exists()
    resumed = torch.load(signal_ckpt, weights_only=True)
    assert resumed["global_step"] == 8 and int(resumed["state_dict"]["quantize.clock"]) == 4
    assert_same_training_state(straight, resumed)


# ---- DDP --------------------------------------------------------------------------------------
def test_two_process_ddp_with_the_strategy_arcvq_train_picks(tmp_path):
    strategy = _trainer_kwargs({"gpus": "0,1"})["strategy"]
    assert strategy == "ddp_find_unused_parameters_true"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "arcvq_plugin.main", "--base", TINY["arcvq"], "-t", "--no-test",
               "--logdir", str(tmp_path), "-n", "ddp", *QUIET, "--accelerator", "cpu", "--devices", "2",
               "--strategy", strategy, "--max_epochs", "1", "--num_sanity_val_steps", "0",
               "data.params.batch_size=2", "data.params.train.params.length=12",
               "data.params.validation.params.length=4", "model.params.lossconfig.params.disc_start=1"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (run,) = glob.glob(str(tmp_path / "*_ddp"))
    checkpoint = torch.load(Path(run) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * 3  # 12 images / 2 ranks / batch 2: 3 steps per optimizer
    assert int(checkpoint["state_dict"]["quantize.clock"]) == 3
    assert len(checkpoint["arcvq_random_states"]) == 2  # every rank's RNG states
