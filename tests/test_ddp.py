"""Lightning DDP on the CPU (2 processes, gloo): codebooks and clocks stay identical across ranks,
CodebookMonitor statistics are reduced over ranks, ArcLoss negatives are gathered from all ranks."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from arcvq_plugin.codebook_monitor import CodebookMonitor, codebook_statistics
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.norm_bound_callback import NormBoundCallback

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"
BATCHES = 2
VAL_IMAGES = 8


class SaveRankState(pl.Callback):
    """Writes each rank's codebook, clock, weights, local counts and monitor statistics to a file."""

    def __init__(self, folder: str, monitor: CodebookMonitor):
        self.folder = folder
        self.monitor = monitor

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        q = pl_module.quantize
        torch.save({"codebook": q.embedding.weight.detach().clone(), "clock": int(q.clock),
                    "encoder": pl_module.encoder.conv_in.weight.detach().clone(),
                    "discriminator": pl_module.loss.discriminator.main[0].weight.detach().clone(),
                    "local_counts": q.code_counts.clone(), "statistics": dict(self.monitor.last_statistics),
                    "global_step": trainer.global_step, "world_size": trainer.world_size},
                   Path(self.folder) / f"rank{trainer.global_rank}.pt")


def test_two_process_ddp_keeps_codebooks_and_clocks_identical(tmp_path):
    config = load_configs([str(CONFIGS / "tiny_arcvq.yaml")], [
        "data.params.batch_size=2", "data.params.train.params.length=8",
        f"data.params.validation.params.length={VAL_IMAGES}",
        "model.params.quantizer_config.params.arc_gather_negatives=true"])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate = 1e-3
    initial_codebook = model.quantize.embedding.weight.detach().clone()
    monitor = CodebookMonitor(figures=False)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true",
                         max_epochs=1, limit_train_batches=BATCHES, num_sanity_val_steps=0,
                         callbacks=[NormBoundCallback(), monitor, SaveRankState(str(tmp_path), monitor)],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, datamodule=instantiate_from_config(config.data))

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for r in ranks:
        assert r["clock"] == BATCHES and r["global_step"] == 2 * BATCHES
    for key in ("codebook", "encoder", "discriminator"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert not torch.equal(ranks[0]["codebook"], initial_codebook)  # it trained
    # each rank validated its own half; the monitor reports the union on every rank
    assert ranks[0]["local_counts"].sum() > 0 and ranks[1]["local_counts"].sum() > 0
    union = ranks[0]["local_counts"] + ranks[1]["local_counts"]
    assert int(union.sum()) == VAL_IMAGES * 8 * 8
    expected = codebook_statistics(union, ranks[0]["codebook"], float(torch.exp(torch.tensor(3e-4 * BATCHES))))
    for r in ranks:
        assert r["statistics"] == pytest.approx(expected, rel=1e-5)
