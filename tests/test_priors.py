"""arcvq_plugin.priors: the gated PixelCNN is causal without blind spots, learns a fixed token set,
samples decode to images of the right shape, and arcvq-prior train / sample / table run end to end
on tokens exported by arcvq-tokens from a VQ-VAE checkpoint."""
import json
import runpy
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from arcvq_plugin.evaluation.frechet import frechet_distance
from arcvq_plugin.priors import GatedPixelCNN, nll_bits_per_token, sample_grids, train_prior
from arcvq_plugin.priors.cli import main


def _raster_positions(h, w):
    return [(i, j) for i in range(h) for j in range(w)]


def test_each_position_sees_exactly_the_earlier_positions(one_thread):
    torch.manual_seed(0)
    model = GatedPixelCNN(codebook_size=7, hidden=8, n_layers=4, kernel_size=3).eval()
    h, w = 4, 5
    tokens = torch.randint(0, 7, (1, h, w))
    base = model(tokens)
    positions = _raster_positions(h, w)
    for p, (i, j) in enumerate(positions):
        for q, (k, l) in enumerate(positions):
            changed = tokens.clone()
            changed[0, k, l] = (changed[0, k, l] + 1) % 7
            moved = not torch.allclose(model(changed)[0, :, i, j], base[0, :, i, j], atol=0, rtol=0)
            assert moved == (q < p), f"logits at {(i, j)} {'depend' if moved else 'do not depend'} on {(k, l)}"


def test_nll_decreases_on_a_fixed_token_set(one_thread):
    torch.manual_seed(0)
    rows = torch.arange(6)[:, None, None] % 4  # six grids, each constant (0..3): an easy, fixed set
    tokens = rows.expand(6, 3, 3).contiguous() * 2  # codes 0, 2, 4, 6 of K = 8
    model = GatedPixelCNN(codebook_size=8, hidden=16, n_layers=2)
    before = nll_bits_per_token(model, tokens)
    history = train_prior(model, tokens, tokens, epochs=40, batch_size=6, lr=1e-2, progress=False, log=lambda m: None)
    after = nll_bits_per_token(model, tokens)
    assert before == pytest.approx(3.0, abs=0.5)  # untrained: about log2(8) bits per token
    assert after < 0.5 * before and history[-1]["test_nll_bits"] == pytest.approx(after)
    assert history[-1]["steps"] == 40
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        train_prior(model, tokens + 8, epochs=1, progress=False)


def test_sampling_is_reproducible_and_in_range(one_thread):
    model = GatedPixelCNN(codebook_size=5, hidden=8, n_layers=2)
    draw = lambda: sample_grids(model, 3, (2, 3), batch_size=2, generator=torch.Generator().manual_seed(4))  # noqa: E731
    first = draw()
    assert first.shape == (3, 2, 3) and first.dtype == torch.long and 0 <= int(first.min()) and int(first.max()) < 5
    assert torch.equal(first, draw())
    with pytest.raises(ValueError, match="temperature"):
        sample_grids(model, 1, (2, 2), temperature=0.0)


@pytest.mark.parametrize("kwargs,name", [({"codebook_size": 1}, "codebook_size"), ({"kernel_size": 4}, "kernel_size"),
                                         ({"n_layers": 0}, "n_layers")])
def test_model_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GatedPixelCNN(**{"codebook_size": 8, **kwargs})


@pytest.fixture(scope="module")
def exported_tokens(tmp_path_factory):
    """A tiny MNIST VQ-VAE checkpoint (the layout arcvq-reproduce writes) and its exported token grids."""
    from arcvq_plugin.config import instantiate_from_config
    from arcvq_plugin.tokens import main as tokens_main

    root = tmp_path_factory.mktemp("prior")
    split = lambda name: {"target": "arcvq_plugin.data.mnist.MNIST", "params": {"split": name, "limit": 40}}  # noqa: E731
    config = OmegaConf.create({
        "model": {"target": "arcvq_plugin.vqvae.VQVAE", "params": {
            "hidden_channels": 16, "res_hidden_channels": 8, "n_embed": 16, "embed_dim": 4,
            "quantizer_config": {"target": "arcvq_plugin.ArcQuantizer"}}},
        "data": {"target": "arcvq_plugin.data.device_batches.DeviceDataModule",
                 "params": {"batch_size": 8, "train": split("train"), "test": split("test")}}})
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    (root / "tokenizer.yaml").write_text(OmegaConf.to_yaml(config))
    torch.save({"state_dict": model.state_dict(), "config": OmegaConf.to_container(config)}, root / "tokenizer.ckpt")
    for name in ("train", "test"):
        assert tokens_main(["export", "--config", str(root / "tokenizer.yaml"), "--ckpt", str(root / "tokenizer.ckpt"),
                            "--split", name, "--out", str(root / f"{name}.npy")]) == 0
    return root


def test_cli_train_sample_table_end_to_end(exported_tokens, tmp_path, capsys, monkeypatch, one_thread):
    from arcvq_plugin.evaluation import weight_cache
    from arcvq_plugin.priors import sample_fid

    tokens = exported_tokens
    prior = tmp_path / "prior"
    train_args = ["train", "--train-tokens", str(tokens / "train.npy"), "--test-tokens", str(tokens / "test.npy"),
                  "--out", str(prior), "--epochs", "2", "--batch-size", "8", "--hidden", "8", "--layers", "2",
                  "--device", "cpu", "--no-progress-bar"]
    assert main(train_args) == 0
    summary = json.loads((prior / "prior.json").read_text())
    assert summary["grid"] == [7, 7] and summary["n_train"] == 40 and len(summary["history"]) == 2
    assert summary["test_nll_bits"] < summary["untrained_test_nll_bits"]
    assert summary["tokenizer"]["checkpoint"].endswith("tokenizer.ckpt")  # from the tokens' sidecar
    assert main(train_args) == 2 and "--force" in capsys.readouterr().err  # no silent overwrite

    samples = tmp_path / "samples"
    sample_args = ["sample", "--prior", str(prior / "prior.ckpt"), "--out", str(samples), "--n", "6",
                   "--batch-size", "4", "--fid", "--fid-images", "10", "--device", "cpu"]
    monkeypatch.setattr(weight_cache, "inception_weights_path", lambda: tmp_path / "missing.pth")
    assert main(sample_args) == 2 and "arcvq-install-metric-weights" in capsys.readouterr().err
    assert not samples.exists()  # refused before any work

    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    monkeypatch.setattr(weight_cache, "inception_weights_path", lambda: weights)
    monkeypatch.setattr(sample_fid, "inception_weights_path", lambda: weights)
    pooled = lambda images: torch.nn.functional.avg_pool2d(images, 7).flatten(1).double().numpy()  # noqa: E731
    monkeypatch.setattr(sample_fid, "inception_features", lambda *sets, **kw: [pooled(s) for s in sets])
    assert main(sample_args) == 0
    result = json.loads((samples / "sample.json").read_text())
    grids = np.load(samples / "tokens.npy")
    assert grids.shape == (6, 7, 7) and int(grids.max()) < 16
    # decoded samples are (6, 1, 28, 28) images; FID compares them with the first 10 test digits
    from arcvq_plugin.data.mnist import MNIST
    from arcvq_plugin.ldm.checkpoints import load_for_inference
    from arcvq_plugin.tokens import decode_indices

    tokenizer = load_for_inference([str(tokens / "tokenizer.yaml")], str(tokens / "tokenizer.ckpt"))
    decoded = ((decode_indices(tokenizer, torch.from_numpy(grids.astype(np.int64))) + 1) / 2).clamp(0, 1)
    assert decoded.shape == (6, 1, 28, 28)
    reference = MNIST("test", limit=10).pixels.permute(0, 3, 1, 2).float() / 255
    assert result["fid"]["fid"] == pytest.approx(frechet_distance(pooled(reference), pooled(decoded)), rel=1e-6)
    assert result["fid"]["n_samples"] == 6 and result["fid"]["n_reference"] == 10
    assert result["test_nll_bits"] == summary["test_nll_bits"]

    table_file = tmp_path / "table.md"
    assert main(["table", f"arcvq={samples}", "--out", str(table_file)]) == 0
    text = table_file.read_text()
    assert "| arcvq | 7 x 7 = 49 | 16 |" in text and "43.13" in text and "57.36" in text


def test_python_dash_m_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m arcvq_plugin.priors", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("arcvq_plugin.priors", run_name="__main__")
    assert exit_info.value.code == 0 and "train" in capsys.readouterr().out
