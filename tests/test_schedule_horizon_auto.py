"""``schedule_horizon: auto``: NormBoundCallback resolves T from the Trainer (max_steps, max_epochs
with accumulation, the GAN's two optimizers), refuses an endless run, writes T into the saved
project config, keeps a checkpoint's T on resume, and gives every DDP rank the same T."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from arcvq_plugin import ArcQuantizer
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.norm_bound_callback import NormBoundCallback
from arcvq_plugin.trainer_cli.callbacks import SetupCallback

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"
AUTO = {"schedule_horizon": "auto", "schedule_reference_horizon": 29_500}


class TinyAutoencoder(pl.LightningModule):
    """An encoder and an ArcQuantizer, optimised automatically (one optimizer step per batch)."""

    def __init__(self, images: int = 20, batch_size: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Conv2d(1, 3, 1)
        self.quantize = ArcQuantizer(8, 3, arc_top_k=1, **AUTO)
        self.images, self.batch_size = images, batch_size

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        z_q, loss, _ = self.quantize(self.encoder(batch))
        return loss + z_q.pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(torch.randn(self.images, 1, 2, 2), batch_size=self.batch_size)


def fit(model: pl.LightningModule, callbacks=(), ckpt_path=None, datamodule=None, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[NormBoundCallback(), *callbacks], **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("trainer_kwargs,steps", [
    ({"max_steps": 7, "max_epochs": -1}, 7),
    ({"max_epochs": 3}, 30),                                   # 20 images / batch 2 = 10 batches per epoch
    ({"max_epochs": 3, "accumulate_grad_batches": 3}, 12),     # 3 x ceil(10 / 3): a step at each epoch's end
    ({"max_epochs": 2, "limit_train_batches": 4}, 8),
    ({"max_epochs": 3, "max_steps": 5}, 5),                    # whichever ends the run first
])
def test_auto_is_the_runs_codebook_steps(trainer_kwargs, steps):
    model = TinyAutoencoder()
    fit(model, **trainer_kwargs)
    q = model.quantize
    assert q.resolved_schedule_horizon == steps and int(q.clock) == steps  # the run really had T steps
    assert float(q.effective_rates[1]) == pytest.approx(5e-4 * 29_500 / steps)
    assert float(q.arc_weight) == pytest.approx(float(torch.tensor(5e-4 * 29_500).neg().exp()), rel=1e-5)


def test_a_run_without_finite_length_is_refused_before_any_step():
    model = TinyAutoencoder()
    with pytest.raises(ValueError, match="schedule_horizon='auto' needs a run of finite length"):
        fit(model, max_epochs=-1, max_steps=-1)
    assert int(model.quantize.clock) == 0


@pytest.mark.parametrize("trainer_kwargs,accumulate,steps", [
    ({"max_epochs": 2, "limit_train_batches": 3}, 2, 4),  # 2 x ceil(3 / 2) codebook steps
    ({"max_epochs": 5, "max_steps": 6}, 1, 3),            # global_step counts both optimizers: 6 / 2
])
def test_auto_counts_codebook_steps_of_the_manual_gan(trainer_kwargs, accumulate, steps):
    config = load_configs([str(CONFIGS / "tiny_arcvq.yaml")], [
        "data.params.batch_size=2", "data.params.train.params.length=8",
        "model.params.quantizer_config.params.schedule_horizon=auto"])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate, model.accumulate_grad_batches = 1e-4, accumulate
    fit(model, datamodule=instantiate_from_config(config.data), limit_val_batches=0, **trainer_kwargs)
    assert model.quantize.resolved_schedule_horizon == steps and int(model.quantize.clock) == steps


def test_the_saved_project_config_holds_the_resolved_horizon(tmp_path):
    config = OmegaConf.create({"model": {"params": {"quantizer_config": {"params": dict(AUTO)}}},
                               "first_stage": [{"params": {"schedule_horizon": "auto"}}]})
    setup = SetupCallback("now", str(tmp_path), str(tmp_path / "checkpoints"), str(tmp_path / "configs"),
                          config, OmegaConf.create({}))
    fit(TinyAutoencoder(), callbacks=[setup], max_steps=6, max_epochs=-1)
    saved = OmegaConf.load(tmp_path / "configs" / "now-project.yaml")
    assert saved.model.params.quantizer_config.params.schedule_horizon == 6
    assert saved.first_stage[0].params.schedule_horizon == 6


def test_resume_keeps_the_checkpoints_horizon(tmp_path):
    model = TinyAutoencoder()
    fit(model, max_steps=4, max_epochs=-1).save_checkpoint(tmp_path / "step4.ckpt")
    rates = model.quantize.effective_rates.clone()

    resumed = TinyAutoencoder()
    fit(resumed, ckpt_path=str(tmp_path / "step4.ckpt"), max_steps=10, max_epochs=-1)  # a longer run now
    q = resumed.quantize
    assert int(q.clock) == 10 and q.resolved_schedule_horizon == 4  # T and the rates of the run that began
    assert torch.equal(q.effective_rates, rates) and int(q.schedule_origin) == 0


class SaveRankHorizon(pl.Callback):
    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        q = pl_module.quantize
        torch.save({"horizon": q.resolved_schedule_horizon, "rates": q.effective_rates.clone(),
                    "clock": int(q.clock), "weight": q.arc_weight.clone()},
                   Path(self.folder) / f"rank{trainer.global_rank}.pt")


def test_two_ddp_ranks_resolve_the_same_horizon(tmp_path):
    config = load_configs([str(CONFIGS / "tiny_arcvq.yaml")], [
        "data.params.batch_size=2", "data.params.train.params.length=8", "data.params.validation.params.length=4",
        "model.params.quantizer_config.params.schedule_horizon=auto"])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate = 1e-4
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true",
                         max_epochs=1, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[NormBoundCallback(), SaveRankHorizon(str(tmp_path))],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=instantiate_from_config(config.data))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # 8 images, batch 2, 2 ranks: 2 batches per rank and epoch, so T = 2 (not a single process's 4)
    assert [r["horizon"] for r in ranks] == [2, 2] and [r["clock"] for r in ranks] == [2, 2]
    assert torch.equal(ranks[0]["rates"], ranks[1]["rates"]) and torch.equal(ranks[0]["weight"], ranks[1]["weight"])
