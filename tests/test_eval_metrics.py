"""PSNR/SSIM against direct numpy transcriptions, codebook statistics by hand, Fréchet distance
against torch-fidelity's own formula, and the table layout."""
import math

import numpy as np
import pytest
import torch

from arcvq_plugin.evaluation import codebook_metrics, codebook_metrics_from_counts, format_table, reconstruction_metrics
from arcvq_plugin.evaluation.frechet import frechet_distance
from arcvq_plugin.evaluation.image_metrics import per_image_psnr, per_image_ssim


def numpy_psnr(real: np.ndarray, fake: np.ndarray) -> float:
    """10 log10(1 / MSE) over all pixels and channels (data_range 1)."""
    return 10.0 * math.log10(1.0 / np.mean((real - fake) ** 2))


def numpy_ssim(real: np.ndarray, fake: np.ndarray, win: int) -> float:
    """Wang et al. SSIM, uniform win x win window, sample covariances, K1=0.01, K2=0.03, data
    range 1, averaged over the windows that lie inside the image and over channels; (C, H, W)."""
    c1, c2, n = 0.01 ** 2, 0.03 ** 2, win * win
    values = []
    for x, y in zip(real, fake):
        wx = np.lib.stride_tricks.sliding_window_view(x, (win, win)).reshape(-1, n)
        wy = np.lib.stride_tricks.sliding_window_view(y, (win, win)).reshape(-1, n)
        mx, my = wx.mean(1), wy.mean(1)
        vx = ((wx - mx[:, None]) ** 2).sum(1) / (n - 1)
        vy = ((wy - my[:, None]) ** 2).sum(1) / (n - 1)
        cxy = ((wx - mx[:, None]) * (wy - my[:, None])).sum(1) / (n - 1)
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        values.append(s.mean())
    return float(np.mean(values))


@pytest.fixture(scope="module")
def image_pair():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(3, 3, 16, 20, generator=generator)
    fake = (real + 0.1 * torch.randn(3, 3, 16, 20, generator=generator)).clamp(0, 1)
    return real, fake


def test_psnr_matches_numpy(image_pair):
    real, fake = image_pair
    ours = per_image_psnr(real, fake)
    expected = [numpy_psnr(r.double().numpy(), f.double().numpy()) for r, f in zip(real, fake)]
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("channels,win", [(3, 7), (1, 11)])
def test_ssim_matches_numpy(image_pair, channels, win):
    real, fake = (t[:, :channels] for t in image_pair)
    ours = per_image_ssim(real, fake, win_size=win)
    expected = [numpy_ssim(r.double().numpy(), f.double().numpy(), win) for r, f in zip(real, fake)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9)


def test_reconstruction_metrics_average_per_image_and_quantize(image_pair):
    real, fake = image_pair
    result = reconstruction_metrics(real, fake, lpips=False, fid=False, ssim_win_size=7)
    q = lambda t: torch.round(t * 255) / 255
    assert result["psnr"] == pytest.approx(np.mean([numpy_psnr(r.double().numpy(), f.double().numpy()) for r, f in zip(q(real), q(fake))]))
    assert result["ssim"] == pytest.approx(np.mean([numpy_ssim(r.double().numpy(), f.double().numpy(), 7) for r, f in zip(q(real), q(fake))]))
    assert result["lpips"] is None and result["rfid"] is None
    assert result["unavailable"] == {"lpips": "not requested", "rfid": "not requested"}
    raw = reconstruction_metrics(real, fake, lpips=False, fid=False, ssim_win_size=7, quantize=False)
    assert raw["psnr"] == pytest.approx(np.mean(per_image_psnr(real, fake)))
    # grayscale scored directly equals its RGB copy (the reference reads images as RGB)
    gray = reconstruction_metrics(real[:, :1], fake[:, :1], lpips=False, fid=False, ssim_win_size=7)
    rgb = reconstruction_metrics(real[:, :1].repeat(1, 3, 1, 1), fake[:, :1].repeat(1, 3, 1, 1), lpips=False, fid=False, ssim_win_size=7)
    assert gray["psnr"] == pytest.approx(rgb["psnr"]) and gray["ssim"] == pytest.approx(rgb["ssim"])


def test_reconstruction_metrics_validates_inputs(image_pair):
    real, fake = image_pair
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_metrics(real, fake[:2], lpips=False, fid=False)
    with pytest.raises(ValueError, match="C in"):
        reconstruction_metrics(real[:, :2], fake[:, :2], lpips=False, fid=False)
    with pytest.raises(ValueError, match="win_size"):
        reconstruction_metrics(real, fake, lpips=False, fid=False, ssim_win_size=17)
    with pytest.raises(ValueError, match="batch_size"):
        reconstruction_metrics(real, fake, lpips=False, fid=False, batch_size=0)


def test_codebook_metrics_by_hand():
    result = codebook_metrics(torch.tensor([[0, 0], [1, 3]]), n_e=5)
    # counts [2, 1, 0, 1, 0]: p = (1/2, 1/4, 1/4), H = 1.5 ln 2
    assert result["usage"] == pytest.approx(3 / 5)
    assert result["dead_codes"] == 2 and result["used_codes"] == 3
    assert result["perplexity"] == pytest.approx(2 ** 1.5)
    uniform = codebook_metrics(np.arange(8).repeat(3), n_e=8)
    assert uniform["usage"] == 1.0 and uniform["dead_codes"] == 0 and uniform["perplexity"] == pytest.approx(8.0)
    single = codebook_metrics_from_counts(torch.tensor([0.0, 7.0, 0.0]))
    assert single["perplexity"] == pytest.approx(1.0) and single["dead_codes"] == 2


@pytest.mark.parametrize("indices,n_e,match", [
    (torch.tensor([0, 5]), 5, r"\[0, n_e=5\)"),
    (torch.tensor([-1, 0]), 5, r"\[0, n_e=5\)"),
    (torch.tensor([0.0, 1.0]), 5, "integers"),
    (torch.tensor([], dtype=torch.long), 5, "at least one"),
    (torch.tensor([0]), 0, "n_e must be"),
])
def test_codebook_metrics_rejects(indices, n_e, match):
    with pytest.raises(ValueError, match=match):
        codebook_metrics(indices, n_e)


@pytest.mark.parametrize("n1,n2,dim", [(6, 9, 16), (40, 30, 8)])
def test_frechet_distance_matches_torch_fidelity(n1, n2, dim):
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    rng = np.random.default_rng(n1)
    first = rng.normal(size=(n1, dim))
    second = 1.5 * rng.normal(size=(n2, dim)) + 0.3
    expected = fid_statistics_to_metric(
        fid_features_to_statistics(torch.from_numpy(first)), fid_features_to_statistics(torch.from_numpy(second)), False
    )[KEY_METRIC_FID]
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(first, first) == pytest.approx(0.0, abs=1e-9)


def test_format_table_layout():
    row = {"psnr": 28.012, "ssim": 0.98401, "lpips": None, "rfid": 1.68, "unavailable": {"lpips": "weights missing"},
           "codebook": {"usage": 0.75, "perplexity": 300.04, "dead_codes": 128}}
    table = format_table({"ArcVQ-VAE": row})
    lines = table.splitlines()
    assert lines[0] == "| Method | PSNR | SSIM | LPIPS | rFID | Usage % | Perplexity | Dead codes |"
    assert lines[2] == "| ArcVQ-VAE | 28.01 | 0.9840 | n/a | 1.68 | 75.0 | 300.0 | 128 |"
    assert "lpips unavailable: weights missing" in table


def test_lpips_network_is_built_once_per_device_and_again_for_new_weights(tmp_path, monkeypatch):
    """lpips_distances reuses its VGG network across calls (a learning curve calls it many times) and
    builds it again when the weights file changes."""
    import sys
    import types

    from arcvq_plugin.evaluation import perceptual

    builds = []

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()
            builds.append(net)

        def forward(self, first, second, normalize):
            return (first - second).abs().mean(dim=(1, 2, 3))

    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"first")
    monkeypatch.setattr(perceptual, "vgg16_weights_path", lambda: weights)
    fake_module = types.ModuleType("lpips")
    fake_module.LPIPS = FakeLPIPS
    monkeypatch.setitem(sys.modules, "lpips", fake_module)
    perceptual._lpips_network.cache_clear()
    real, fake = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    first = perceptual.lpips_distances(real, fake, device=torch.device("cpu"))
    perceptual.lpips_distances(real, fake, device=torch.device("cpu"))
    assert builds == ["vgg"]
    weights.write_bytes(b"second, longer")
    second = perceptual.lpips_distances(real, fake, device=torch.device("cpu"))
    assert builds == ["vgg", "vgg"]
    np.testing.assert_allclose(first, second)
    perceptual._lpips_network.cache_clear()
