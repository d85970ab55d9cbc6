"""CodebookMonitor and the codebook figures: statistics, PNGs, TensorBoard, both quantiser kinds."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger

from arcvq_plugin.codebook_figures import (pairwise_distances, plot_norm_histogram,
                                           plot_pairwise_distances, plot_usage_histogram, save_figure)
from arcvq_plugin.codebook_monitor import CodebookMonitor, codebook_statistics
from arcvq_plugin.config import instantiate_from_config, load_configs

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_codebook_statistics_by_hand():
    counts = torch.tensor([2.0, 2.0, 0.0, 0.0])
    codebook = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    stats = codebook_statistics(counts, codebook, radius=2.5)
    assert stats == pytest.approx({"usage_percent": 50.0, "perplexity": 2.0, "dead_codes": 2.0,
                                   "norm_min": 0.0, "norm_mean": 1.75, "norm_max": 5.0, "radius": 2.5})
    assert codebook_statistics(torch.zeros(4), codebook)["perplexity"] == 1.0
    with pytest.raises(ValueError, match="agree"):
        codebook_statistics(torch.ones(3), codebook)


def test_figures_are_figures_and_save_as_png(tmp_path):
    codebook = torch.randn(16, 4)
    expected = np.linalg.norm(codebook.numpy()[:, None] - codebook.numpy()[None], axis=-1)
    np.testing.assert_allclose(pairwise_distances(codebook), expected, atol=1e-5)
    assert pairwise_distances(codebook, max_codes=5).shape == (5, 5)
    figures = [plot_norm_histogram(codebook, radius=2.0), plot_norm_histogram(codebook, radius=1e30),
               plot_pairwise_distances(codebook, max_codes=8), plot_usage_histogram(torch.arange(16.0))]
    for i, fig in enumerate(figures):
        assert isinstance(fig, Figure)
        path = save_figure(fig, tmp_path / "sub" / f"f{i}.png")
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="codebook"):
        plot_norm_histogram(torch.zeros(3))
    with pytest.raises(ValueError, match="counts"):
        plot_usage_histogram(torch.tensor([1.0, -1.0]))


def test_monitor_arguments_are_validated():
    with pytest.raises(ValueError, match="figures_every_n_validations"):
        CodebookMonitor(figures_every_n_validations=0)
    with pytest.raises(ValueError, match="max_codes_in_matrix"):
        CodebookMonitor(max_codes_in_matrix=0)
    with pytest.raises(ValueError, match="no attribute 'codebook'"):
        CodebookMonitor(quantizer="codebook").find_quantizer(torch.nn.Module())


@pytest.mark.parametrize("name", ["tiny_arcvq", "tiny_baseline"])
def test_monitor_logs_scalars_figures_and_pngs_per_validation(tmp_path, name):
    config = load_configs([str(CONFIGS / f"{name}.yaml")], ["data.params.validation.params.length=8"])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    datamodule = instantiate_from_config(config.data)
    monitor = CodebookMonitor(max_codes_in_matrix=16)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=[monitor],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule=datamodule)

    # the counts are the codes the validation batches selected: recount them by hand
    model.eval()
    expected = torch.zeros(model.quantize.n_e)
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            _, _, (_, _, indices) = model.encode(model.get_input(batch, "image"))
            expected += torch.bincount(indices.reshape(-1), minlength=model.quantize.n_e)
    stats = monitor.last_statistics
    assert stats["usage_percent"] == pytest.approx(100.0 * float((expected > 0).float().mean()))
    assert stats["dead_codes"] == float((expected == 0).sum())
    p = expected / expected.sum()
    assert stats["perplexity"] == pytest.approx(math.exp(-float(torch.special.xlogy(p, p).sum())), rel=1e-5)
    assert ("radius" in stats) == (name == "tiny_arcvq")
    for key, value in stats.items():
        assert float(trainer.callback_metrics[f"codebook/{key}"]) == pytest.approx(value, rel=1e-6)

    assert sorted(Path(p).name for p in monitor.last_figure_paths) == [
        "norm_histogram_gs-000000_e-000000.png", "pairwise_distances_gs-000000_e-000000.png",
        "usage_histogram_gs-000000_e-000000.png"]
    for path in monitor.last_figure_paths:
        assert Path(path).parent == tmp_path / "codebook" and Path(path).stat().st_size > 1000
    logger.experiment.flush()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert {"codebook/norm_histogram", "codebook/pairwise_distances",
            "codebook/usage_histogram"} <= set(events.Tags()["images"])
