"""Bad training state is refused, never trained on:

- a NaN pixel or a non-finite loss stops the baseline (taming's VectorQuantizer2), ArcVQ and the
  VQ-VAE alike, with one error kind naming the batch and the step, before the update: the model is
  as the previous batch left it (``check_finite: false`` trains on);
- a mid-epoch resume under another batch size, training-set length or world size is refused
  naming what changed; at an epoch boundary it starts the next epoch, every sample once;
- quantiser state is validated on load (clock a non-negative integer, codebook and buffers finite),
  through ``load_state_dict``, ``ckpt_path`` and ``arcvq-train -r``.
"""
from __future__ import annotations

import functools
import glob
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

import arcvq_plugin.data.resumable as resumable
from arcvq_plugin import ArcQuantizer, NormBoundCallback
from arcvq_plugin.baselines import ClusteredQuantizer
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.data.resumable import ResumableDataLoader, ResumePositionError
from arcvq_plugin.data.sample_images import SampleImagesTrain
from arcvq_plugin.finite_training import NonFiniteTrainingError
from arcvq_plugin.main import main
from arcvq_plugin.quantizer_contract import QuantizerStateError
from arcvq_plugin.vqvae import VQVAE

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"
TINY = {"arcvq": str(CONFIGS / "tiny_arcvq.yaml"), "baseline": str(CONFIGS / "tiny_baseline.yaml")}
QUIET = ["--enable_progress_bar", "false", "--enable_model_summary", "false"]
NAN_MESSAGE = (r"training batch \d+ of epoch 0 \(optimizer step \d+\): the input batch 'image' holds NaN or inf "
               r"\(1 NaN, 0 inf of \d+ values\); stopped before the update")

pytestmark = pytest.mark.usefixtures("one_thread")


class OneNaNPixel(SampleImagesTrain):
    """The tiny configs' training images, with one NaN pixel in item 5."""

    def __getitem__(self, index: int):
        item = dict(super().__getitem__(index))
        if index == 5:
            item["image"] = item["image"].copy()
            item["image"][3, 4, 1] = np.nan
        return item


# ---- helpers ---------------------------------------------------------------------------------
def tiny_model(name: str, overrides=()):
    config = load_configs([TINY[name]], ["data.params.train.params.length=16", *overrides])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate = float(config.model.base_learning_rate)
    return model, config


class Snapshot(pl.Callback):
    """Copies the model's state, gradients and optimizer states at the start of batch ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.state, self.grads, self.optimizers = at, None, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.at:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.grads = {n: None if p.grad is None else p.grad.clone() for n, p in pl_module.named_parameters()}
            self.optimizers = [{k: v.clone() for s in o.state.values() for k, v in s.items()
                                if isinstance(v, torch.Tensor)} for o in trainer.optimizers]

    def assert_unchanged(self, model, trainer, parts=("",), buffers: bool = True) -> None:
        """The parameters (and with ``buffers`` the buffers), gradients and optimizer states of the
        entries starting with one of ``parts`` are as at the snapshot; the whole state is finite."""
        parameters = dict(model.named_parameters())
        for key, value in model.state_dict().items():
            assert torch.isfinite(value.float()).all(), key
            if key.startswith(parts) and (buffers or key in parameters):
                assert torch.equal(value, self.state[key]), key
        for name, p in parameters.items():
            if name.startswith(parts):
                assert (p.grad is None) == (self.grads[name] is None), name
                assert p.grad is None or torch.equal(p.grad, self.grads[name]), name
        for optimizer, saved in zip(trainer.optimizers, self.optimizers):
            states = [p for group in optimizer.param_groups for p in group["params"]
                      if any(p is q for n, q in parameters.items() if n.startswith(parts))]
            now = {k: v for p in states for k, v in optimizer.state.get(p, {}).items() if isinstance(v, torch.Tensor)}
            assert all(torch.equal(v, saved[k]) for k, v in now.items() if k in saved)


def fit(model, config, batches: int, callbacks=(), accumulate: int = 1) -> pl.Trainer:
    model.accumulate_grad_batches = accumulate
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[NormBoundCallback(), *callbacks], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=instantiate_from_config(config.data))
    return trainer


def nan_at(batch_index: int) -> pl.Callback:
    class NaNPixelAt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == batch_index:
                batch["image"][1, 2, 3, 0] = float("nan")
    return NaNPixelAt()


# ---- non-finite policy -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["baseline", "arcvq"])
def test_a_nan_pixel_is_refused_before_the_update_by_baseline_and_arcvq_alike(name):
    model, config = tiny_model(name)
    snapshot = Snapshot(at=2)
    with pytest.raises(NonFiniteTrainingError, match=r"training batch 2 of epoch 0 \(optimizer step 2\): "
                                                     r"the input batch 'image' holds NaN"):
        fit(model, config, batches=4, callbacks=[snapshot, nan_at(2)])
    snapshot.assert_unchanged(model, model.trainer)
    if name == "arcvq":
        assert int(model.quantize.clock) == 2  # batches 0 and 1 stepped, batch 2 did not


@pytest.mark.parametrize("name", ["baseline", "arcvq"])
def test_arcvq_train_refuses_a_nan_pixel_with_the_same_message_for_both_arms(tmp_path, name):
    with pytest.raises(NonFiniteTrainingError, match=NAN_MESSAGE):
        main(["--base", TINY[name], "-t", "--no-test", "--logdir", str(tmp_path), "-n", name, *QUIET,
              "--limit_val_batches", "0", "--num_sanity_val_steps", "0",
              "data.params.train.target=test_reliability_state.OneNaNPixel"])


@pytest.mark.parametrize("optimizer_idx, untouched", [(0, ""), (1, "loss.discriminator.")])
def test_a_non_finite_loss_is_refused_before_its_backward(optimizer_idx, untouched):
    """Accumulation 2, the bad loss in batch 3 (the second of a window): batch 2's accumulated
    gradients stay. The discriminator loss comes after the autoencoder's step: only the
    discriminator is as before. Buffers the forward updates itself (BatchNorm statistics) are not
    compared: the loss is checked after its forward."""
    model, config = tiny_model("baseline")
    forward = model.loss.forward
    calls = []

    @functools.wraps(forward)  # keeps the signature: no predicted_indices for taming's loss
    def nan_in_batch_3(codebook_loss, inputs, reconstructions, idx, global_step, *args, **kwargs):
        loss, log = forward(codebook_loss, inputs, reconstructions, idx, global_step, *args, **kwargs)
        calls.append(idx)
        if idx == optimizer_idx and len(calls) > 6:
            loss = loss * float("inf")
        return loss, log

    model.loss.forward = nan_in_batch_3
    snapshot = Snapshot(at=3)
    what = "the autoencoder loss" if optimizer_idx == 0 else "the discriminator loss"
    with pytest.raises(NonFiniteTrainingError, match=rf"training batch 3 of epoch 0 \(optimizer step 1\): {what}"):
        fit(model, config, batches=4, callbacks=[snapshot], accumulate=2)
    snapshot.assert_unchanged(model, model.trainer, parts=(untouched,), buffers=False)
    assert any(p.grad is not None for p in model.parameters())  # batch 2's gradients were kept


def test_check_finite_false_trains_on():
    model, config = tiny_model("baseline", ["model.params.check_finite=false"])
    fit(model, config, batches=3, callbacks=[nan_at(1)])
    assert not torch.isfinite(model.quantize.embedding.weight).all()  # what the default refuses


def test_check_finite_is_validated():
    with pytest.raises(ValueError, match="check_finite must be True or False, got 2"):
        tiny_model("baseline", ["model.params.check_finite=2"])
    with pytest.raises(ValueError, match="check_finite must be True or False, got 1"):
        VQVAE(check_finite=1)


class FloatImages(Dataset):
    def __init__(self, bad: int) -> None:
        self.images = torch.rand(8, 8, 8, 1, generator=torch.Generator().manual_seed(0)) * 2 - 1
        if bad >= 0:
            self.images[bad, 1, 1, 0] = float("inf")

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return {"image": self.images[index]}


@pytest.mark.parametrize("bad, match", [
    (5, r"training batch 2 of epoch 0 \(optimizer step 2\): the input batch 'image' holds NaN or inf \(0 NaN, 1 inf"),
    (-1, r"training batch 0 of epoch 0 \(optimizer step 0\): the loss holds"),
])
def test_vqvae_refuses_a_non_finite_input_or_loss_before_the_step(bad, match):
    torch.manual_seed(0)
    model = VQVAE(in_channels=1, hidden_channels=8, n_res_layers=1, res_hidden_channels=4, n_embed=8, embed_dim=4)
    if bad < 0:
        model.data_variance = float("inf") * 0  # NaN loss from the first batch
    snapshot = Snapshot(at=2 if bad >= 0 else 0)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[snapshot])
    with pytest.raises(NonFiniteTrainingError, match=match):
        trainer.fit(model, DataLoader(FloatImages(bad), batch_size=2))
    snapshot.assert_unchanged(model, trainer)


# ---- resume position ---------------------------------------------------------------------------
class Indices(Dataset):
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def six_batches_of_four() -> tuple[dict, list[int]]:
    loader = ResumableDataLoader(Indices(48), batch_size=4, seed=3)
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    head = [int(i) for _ in range(6) for i in next(iterator)]
    return loader.state_dict(), head


@pytest.mark.parametrize("batch_size, length, world, change", [
    (8, 48, 1, "the batch size changed from 4 to 8"),
    (4, 40, 1, "the training set's length changed from 48 to 40"),
    (4, 48, 2, r"the world size \(processes\) changed from 1 to 2"),
])
def test_a_mid_epoch_resume_under_other_settings_is_refused(monkeypatch, batch_size, length, world, change):
    state, _ = six_batches_of_four()
    monkeypatch.setattr(resumable, "_world", lambda: (world, 0))
    resumed = ResumableDataLoader(Indices(length), batch_size=batch_size, seed=3)
    with pytest.raises(ResumePositionError, match=rf"middle of epoch 1 \(after 6 of its 12 batches\): {change}, "
                                                  r".*Resume with the checkpoint's settings \(batch_size 4, "
                                                  r"dataset_length 48, world_size 1\)"):
        resumed.load_state_dict(state)


def test_a_mid_epoch_resume_with_other_batches_per_epoch_is_refused():
    """Same batch size, length and world size, but another ``drop_last``: 13 batches of 4 become 12."""
    loader = ResumableDataLoader(Indices(50), batch_size=4, seed=3)
    iterator = iter(loader)
    for _ in range(6):
        next(iterator)
    resumed = ResumableDataLoader(Indices(50), batch_size=4, seed=3, drop_last=True)
    with pytest.raises(ResumePositionError, match="the batches per epoch changed from 13 to 12"):
        resumed.load_state_dict(loader.state_dict())


def test_a_resume_continues_at_the_next_sample_or_starts_the_next_epoch():
    state, head = six_batches_of_four()
    same = ResumableDataLoader(Indices(48), batch_size=4, seed=3)
    same.load_state_dict(state)
    tail = [int(i) for batch in same for i in batch]
    assert sorted(head + tail) == list(range(48))  # none skipped, none repeated
    # the end of an epoch (or its start) resumes under any batch size: the next epoch, whole
    end_of_epoch_in_eights = {**state, "batch_size": 8, "batches": 6, "batches_in_epoch": 6}
    for saved, batch_size in (({**state, "batches": 12}, 8), ({**state, "batches": 0, "epoch": 2}, 8),
                              (end_of_epoch_in_eights, 4)):
        other = ResumableDataLoader(Indices(48), batch_size=batch_size, seed=3)
        other.load_state_dict(saved)
        assert other.sampler.epoch == 2
        assert sorted(int(i) for batch in other for i in batch) == list(range(48))


def test_a_mid_epoch_state_without_its_settings_warns():
    loader = ResumableDataLoader(Indices(48), batch_size=4, seed=3)
    with pytest.warns(RuntimeWarning, match="does not record the batch size"):
        loader.load_state_dict({"epoch": 0, "batches": 6})
    assert loader.sampler.skip == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict({"epoch": 0, "batches": 12})  # a complete epoch needs no settings


def test_arcvq_train_refuses_a_mid_epoch_resume_with_another_batch_size(tmp_path):
    common = ["-t", "--logdir", str(tmp_path), "--no-test", *QUIET, "--limit_val_batches", "0",
              "--num_sanity_val_steps", "0", "data.params.train.params.length=48"]
    main(["--base", TINY["baseline"], *common, "-n", "preempted", "lightning.modelcheckpoint.params.save_last=false",
          "lightning.callbacks.stop.target=upstream_clones.SignalAndStop", "lightning.callbacks.stop.params.after=6"])
    (run,) = glob.glob(str(tmp_path / "*_preempted"))
    checkpoint = Path(run) / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0][
        "batches"] == 6
    with pytest.raises(ResumePositionError, match="the batch size changed from 4 to 8"):
        main(["-r", str(checkpoint), *common, "data.params.batch_size=8", "lightning.callbacks.stop.params.after=1000"])


# ---- quantiser state on load ---------------------------------------------------------------------
def with_entry(module: torch.nn.Module, key: str, value) -> dict:
    state = module.state_dict()
    if callable(value):
        state[key] = state[key].clone()
        value(state[key])
    else:
        state[key] = value
    return state


def poison(value: float):
    def edit(tensor: torch.Tensor) -> None:
        tensor.view(-1)[1] = value
    return edit


@pytest.mark.parametrize("quantizer, key, value, error", [
    ("arc", "clock", torch.tensor(-3), r"clock must be an integer >= 0 \(optimizer steps\), got -3"),
    ("arc", "clock", torch.tensor(2.5), r"clock must be an integer >= 0 \(optimizer steps\), got 2.5 "
                                        r"\(a torch.float32 tensor, not truncated\)"),
    ("arc", "clock", torch.tensor(True), "clock must be an integer >= 0 .*got True"),
    ("arc", "clock", torch.tensor(float("nan")), "clock must be finite, got 1 NaN"),
    ("arc", "embedding.weight", poison(float("nan")), "embedding.weight must be finite, got 1 NaN and 0 inf among "
                                                      "its 32 values"),
    ("arc", "embedding.weight", poison(float("-inf")), "embedding.weight must be finite, got 0 NaN and 1 inf"),
    ("cvq", "embedding.weight", poison(float("inf")), "embedding.weight must be finite"),
    ("cvq", "running_usage", poison(float("nan")), "running_usage must be finite"),
])
def test_load_state_dict_refuses_bad_quantizer_state_and_loads_nothing(quantizer, key, value, error):
    module = ArcQuantizer(8, 4) if quantizer == "arc" else ClusteredQuantizer(8, 4)
    source = ArcQuantizer(8, 4) if quantizer == "arc" else ClusteredQuantizer(8, 4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(QuantizerStateError, match=error):
        module.load_state_dict(with_entry(source, key, value))
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_an_integral_float_clock_loads_and_a_large_one_is_kept():
    quantizer = ArcQuantizer(8, 4)
    quantizer.load_state_dict(with_entry(quantizer, "clock", torch.tensor(7.0)))
    assert int(quantizer.clock) == 7
    quantizer.load_state_dict(with_entry(quantizer, "clock", torch.tensor(2**40)))
    assert int(quantizer.clock) == 2**40


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    """One-batch arcvq-train runs of both tiny configs: {name: last.ckpt}."""
    logdir = tmp_path_factory.mktemp("state") / "logs"
    paths = {}
    for name in ("arcvq", "baseline"):
        main(["--base", TINY[name], "-t", "--no-test", "--logdir", str(logdir), "-n", name, *QUIET,
              "--limit_train_batches", "1", "--limit_val_batches", "0", "--num_sanity_val_steps", "0"])
        (run,) = glob.glob(str(logdir / f"*_{name}"))
        paths[name] = Path(run) / "checkpoints" / "last.ckpt"
    return paths


def edited_checkpoint(source: Path, target: Path, key: str, edit) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    state = checkpoint["state_dict"]
    state[key] = edit(state[key].clone())
    torch.save(checkpoint, target)
    return target


@pytest.mark.parametrize("name, key, edit, error", [
    ("arcvq", "quantize.clock", lambda t: t * 0 - 4, r"quantize.clock must be an integer >= 0 \(optimizer steps\), "
                                                     r"got -4"),
    ("arcvq", "quantize.clock", lambda t: t.float() + 0.5, r"quantize.clock must be an integer >= 0 .*got 1.5"),
    ("arcvq", "quantize.embedding.weight", lambda t: t.index_fill(0, torch.tensor([3]), float("nan")),
     "quantize.embedding.weight must be finite, got 8 NaN"),
    ("baseline", "quantize.embedding.weight", lambda t: t.index_fill(0, torch.tensor([3]), float("inf")),
     "quantize.embedding.weight must be finite, got 0 NaN and 8 inf"),
])
def test_resume_and_ckpt_path_refuse_bad_quantizer_state(trained_checkpoints, tmp_path, name, key, edit, error):
    bad = edited_checkpoint(trained_checkpoints[name], trained_checkpoints[name].with_name(f"bad-{tmp_path.name}.ckpt"),
                            key, edit)
    try:
        with pytest.raises(QuantizerStateError, match=error):
            main(["-r", str(bad), "-t", "--max_epochs", "2", *QUIET])
        with pytest.raises(QuantizerStateError, match=error):
            tiny_model(name, [f"model.params.ckpt_path={bad}"])
    finally:
        bad.unlink()


def test_a_vqvae_resume_refuses_a_non_finite_baseline_codebook(tmp_path):
    def tiny_vqvae() -> VQVAE:
        torch.manual_seed(0)
        return VQVAE(in_channels=1, hidden_channels=8, n_res_layers=1, res_hidden_channels=4, n_embed=8, embed_dim=4)

    def trainer(batches: int) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=batches, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)

    first = trainer(1)
    first.fit(tiny_vqvae(), DataLoader(FloatImages(-1), batch_size=2))
    first.save_checkpoint(tmp_path / "one.ckpt")
    bad = edited_checkpoint(tmp_path / "one.ckpt", tmp_path / "bad.ckpt", "quantize.embedding.weight",
                            lambda t: t.index_fill(0, torch.tensor([2]), float("nan")))
    with pytest.raises(QuantizerStateError, match="quantize.embedding.weight must be finite, got 4 NaN"):
        trainer(2).fit(tiny_vqvae(), DataLoader(FloatImages(-1), batch_size=2), ckpt_path=str(bad))
