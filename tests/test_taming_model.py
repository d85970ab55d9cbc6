"""arcvq_plugin.taming.VQModel: taming's VQGAN + quantizer_config on pytorch-lightning 2.x.

Tiny configs (configs/taming/tiny_*.yaml), CPU, a few batches; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import urllib.request
from pathlib import Path

import pytest
import pytorch_lightning as pl
import requests
import torch
from omegaconf import OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from arcvq_plugin.checkpoint_loading import CheckpointReadError
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.taming import LPIPSWeightsMissingError, VQLPIPSWithDiscriminator, VQModel
from arcvq_plugin.taming.perceptual import lpips_heads_path, vgg16_weights_path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"
BATCHES = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(name: str):
    return load_configs([str(CONFIGS / f"{name}.yaml")],
                        ["data.params.train.params.length=12", "data.params.validation.params.length=4"])


def tiny_model(name: str = "tiny_arcvq", **params) -> VQModel:
    config = tiny_config(name)
    model = instantiate_from_config(config.model, **params)
    model.learning_rate = config.model.base_learning_rate
    return model


def fit(name: str, tmp_path: Path, callbacks=None) -> tuple[VQModel, pl.Trainer]:
    """Train the tiny config for BATCHES batches and validate once, on the CPU."""
    config = tiny_config(name)
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    model.learning_rate = config.model.base_learning_rate
    if callbacks is None:
        callbacks = [instantiate_from_config(c) for c in config.lightning.callbacks.values()]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=BATCHES,
                         limit_val_batches=1, num_sanity_val_steps=0, callbacks=callbacks,
                         logger=TensorBoardLogger(str(tmp_path), name="tb"), log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=instantiate_from_config(config.data))
    return model, trainer


def test_arcvq_trains_both_optimizers_once_per_batch_on_the_quantizer_clock(tmp_path):
    model, trainer = fit("tiny_arcvq", tmp_path)
    metrics = trainer.callback_metrics
    assert type(model.quantize).__name__ == "ArcQuantizer"
    # the clock counts batches; Lightning's global_step counts both optimizers' steps
    assert int(model.quantize.clock) == BATCHES == model.optimizer_steps
    assert trainer.global_step == 2 * BATCHES
    opt_ae, opt_disc = trainer.optimizers
    for opt in (opt_ae, opt_disc):
        steps = {int(state["step"]) for state in opt.state.values()}
        assert steps == {BATCHES}
    # disc_start=2 counts autoencoder steps: factor 0, 0, 1 over the 3 batches (global_step: 0, 1, 1)
    assert float(metrics["train/disc_factor_epoch"]) == pytest.approx(1 / 3)
    # the quantiser's breakdown beside upstream's logs, training and validation
    for split in ("train", "val"):
        for key in ("vq", "arc", "arc_weight", "radius", "perplexity", "usage"):
            name = f"{split}/quantizer/{key}" + ("_epoch" if split == "train" else "")
            assert torch.isfinite(metrics[name]), name
    assert float(metrics["train/quantizer/arc_epoch"]) > 0
    # validation logged each key once (upstream logs val/rec_loss twice, which Lightning rejects)
    assert {"val/rec_loss", "val/aeloss", "val/disc_loss", "val/nll_loss"} <= set(metrics)
    norms = model.quantize.embedding.weight.detach().norm(dim=1)
    assert float(norms.max()) <= float(model.quantize.radius) * (1 + 1e-6)
    # a Lightning checkpoint of this run initialises a new model, quantiser and clock included
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    restored = tiny_model(ckpt_path=str(tmp_path / "last.ckpt"))
    assert int(restored.quantize.clock) == BATCHES
    torch.testing.assert_close(restored.quantize.embedding.weight, model.quantize.embedding.weight)


def test_baseline_is_taming_vector_quantizer_and_counts_batches_from_global_step(tmp_path):
    model, trainer = fit("tiny_baseline", tmp_path)
    assert type(model.quantize).__name__ == "VectorQuantizer2"
    assert trainer.global_step == 2 * BATCHES and model.optimizer_steps == BATCHES
    metrics = trainer.callback_metrics
    assert float(metrics["train/disc_factor_epoch"]) == pytest.approx(1 / 3)
    assert "val/rec_loss" in metrics and "codebook/usage_percent" in metrics
    assert not any(k.startswith("train/quantizer/") for k in metrics)


def test_baseline_and_arcvq_share_parameter_names():
    arc, base = tiny_model("tiny_arcvq").state_dict(), tiny_model("tiny_baseline").state_dict()
    assert set(arc) - set(base) == {"quantize.clock"}
    assert set(base) <= set(arc)
    assert arc["quantize.embedding.weight"].shape == base["quantize.embedding.weight"].shape == (32, 8)


def test_training_without_norm_bound_callback_fails_before_the_first_step(tmp_path):
    config = tiny_config("tiny_arcvq")
    model = tiny_model()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False, num_sanity_val_steps=0,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[])
    with pytest.raises(RuntimeError, match="NormBoundCallback"):
        trainer.fit(model, datamodule=instantiate_from_config(config.data))
    assert int(model.quantize.clock) == 0


def test_learning_rate_must_be_set():
    config = tiny_config("tiny_baseline")
    model = instantiate_from_config(config.model)
    with pytest.raises(AttributeError, match="learning_rate"):
        model.configure_optimizers()


def test_decode_code_decodes_the_selected_codes():
    model = tiny_model().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        quant, _, (_, _, indices) = model.encode(x)
        expected = model.decode(quant)
        from_grid = model.decode_code(indices.reshape(2, 8, 8))
        from_flat = model.decode_code(indices, shape=(2, 8, 8))
    torch.testing.assert_close(from_grid, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_flat, from_grid)
    with pytest.raises(ValueError, match="shape"):
        model.decode_code(indices)


def test_quantizer_config_is_filled_from_the_model_and_mismatches_are_rejected():
    model = tiny_model(quantizer_config={"target": "arcvq_plugin.ArcQuantizer",
                                         "params": {"sane_index_shape": False, "arc_top_k": 2}})
    assert (model.quantize.n_e, model.quantize.e_dim, model.quantize.arc_top_k) == (32, 8, 2)
    with pytest.raises(ValueError, match="n_e=64 disagrees with the model's n_embed=32"):
        tiny_model(quantizer_config={"target": "arcvq_plugin.ArcQuantizer", "params": {"n_e": 64}})
    with pytest.raises(ValueError, match="n_embed"):
        tiny_model(n_embed=0)


def test_init_from_ckpt_restores_the_quantizer_before_anything_else(tmp_path):
    source = tiny_model()
    with torch.no_grad():
        source.quantize.embedding.weight.mul_(0.5)
        source.quantize.clock.fill_(7)
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": source.state_dict(), "global_step": 14}, path)

    restored = tiny_model(ckpt_path=str(path), ignore_keys=["loss.discriminator"])
    assert int(restored.quantize.clock) == 7 and restored.optimizer_steps == 0
    torch.testing.assert_close(restored.quantize.embedding.weight, source.quantize.embedding.weight)
    torch.testing.assert_close(restored.encoder.conv_in.weight, source.encoder.conv_in.weight)
    assert not torch.equal(restored.loss.discriminator.main[0].weight, source.loss.discriminator.main[0].weight)

    # an upstream (baseline) checkpoint loads into an ArcVQ model: codebook in, clock from zero
    baseline = tiny_model("tiny_baseline")
    torch.save({"state_dict": baseline.state_dict()}, tmp_path / "baseline.ckpt")
    arc = tiny_model(ckpt_path=str(tmp_path / "baseline.ckpt"))
    torch.testing.assert_close(arc.quantize.embedding.weight, baseline.quantize.embedding.weight)
    assert int(arc.quantize.clock) == 0

    with pytest.raises(ValueError, match="architecture"):
        tiny_model(n_embed=16, ckpt_path=str(path))

    # ckpt_path loads tensors only: a checkpoint that pickles Python objects (old Lightning) is refused,
    # naming the way to trust it (arcvq-convert --trust-checkpoint writes a tensors-only copy)
    torch.save({"state_dict": source.state_dict(), "hparams": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(CheckpointReadError, match="trust-checkpoint"):
        tiny_model(ckpt_path=str(path))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty TORCH_HOME and every download path of torch, torchvision, taming and lpips blocked."""
    def refuse(*args, **kwargs):
        raise AssertionError("the test tried to download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    # torch.hub.set_dir() elsewhere in the session would override TORCH_HOME: pin the hub folder
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_home" / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    return tmp_path / "torch_home"


def test_missing_lpips_weights_give_a_clear_error_without_downloading(offline):
    assert vgg16_weights_path().startswith(str(offline))
    with pytest.raises(LPIPSWeightsMissingError) as err:
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0)
    message = str(err.value)
    assert "python -m arcvq_plugin.evaluation.weights" in message
    assert vgg16_weights_path() in message and "perceptual_weight=0" in message
    # a config naming taming's own loss gets the same message instead of a download
    config = tiny_config("tiny_arcvq").model
    config.params.lossconfig.target = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
    config.params.lossconfig.params.perceptual_weight = 1.0
    with pytest.raises(LPIPSWeightsMissingError, match="arcvq_plugin.evaluation.weights"):
        instantiate_from_config(config)
    # perceptual_weight 0 builds no LPIPS at all: no weights needed
    loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    assert not any(k.startswith("perceptual_loss") for k in loss.state_dict())


def test_lpips_is_built_from_local_weights_when_present(offline, monkeypatch):
    """With a VGG16 file in the cache, taming's LPIPS is built and its heads come from `lpips`."""
    from taming.modules.losses import lpips as taming_lpips
    from torchvision.models import vgg

    path = Path(vgg16_weights_path())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")  # only its presence is checked; the backbone below is built without it

    class Backbone:  # torchvision's VGG16 feature stack, randomly initialised (no 500 MB classifier)
        def __init__(self, pretrained: bool):
            assert pretrained
            self.features = vgg.make_layers(vgg.cfgs["D"])

    monkeypatch.setattr(taming_lpips.models, "vgg16", Backbone)
    loss = VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0, disc_num_layers=2, disc_ndf=8)
    heads = torch.load(lpips_heads_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(loss.perceptual_loss.lin0.model[1].weight, heads["lin0.model.1.weight"])
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    value, log = loss(torch.tensor(0.0), x, x.flip(-1), 1, 0, split="train")
    assert torch.isfinite(value)
    assert float(loss.perceptual_loss(x, x.flip(-1)).mean()) > 0


def test_loss_arguments_are_validated():
    with pytest.raises(ValueError, match="disc_start"):
        VQLPIPSWithDiscriminator(disc_start=-1, perceptual_weight=0.0)
    with pytest.raises(ValueError, match="perceptual_weight"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=-1.0)
    with pytest.raises(ValueError, match="disc_loss"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0, disc_loss="wgan")


def test_every_taming_config_builds_its_model_and_baselines_differ_only_in_the_quantizer():
    for arc_name, base_name in [("imagenet_arcvq_f16", "imagenet_vqgan_f16"),
                                ("imagenet_arcvq_f8", "imagenet_vqgan_f8"),
                                ("tiny_arcvq", "tiny_baseline")]:
        arc = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{arc_name}.yaml"))
        base = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{base_name}.yaml"))
        quantizer = arc["model"]["params"].pop("quantizer_config")
        assert quantizer["target"] == "arcvq_plugin.ArcQuantizer"
        assert arc == base, arc_name
    # the CVQ-VAE baseline: the ArcVQ f8 config with ClusteredQuantizer (same beta, taming's legacy default)
    cvq = OmegaConf.to_container(OmegaConf.load(CONFIGS / "imagenet_cvq_f8.yaml"))
    arc = OmegaConf.to_container(OmegaConf.load(CONFIGS / "imagenet_arcvq_f8.yaml"))
    quantizer = cvq["model"]["params"].pop("quantizer_config")
    assert quantizer == {"target": "arcvq_plugin.baselines.ClusteredQuantizer",
                         "params": {"beta": 0.25, "distance": "cos", "usage_decay": 0.99}}
    assert arc["model"]["params"].pop("quantizer_config")["params"]["beta"] == 0.25
    assert cvq == arc
    paper = OmegaConf.load(CONFIGS / "imagenet_arcvq_f16.yaml").model
    q = paper.params.quantizer_config.params
    assert (paper.params.n_embed, paper.params.embed_dim, q.bbnr_alpha, q.arc_gamma_decay) == (1024, 16, 1e-5, 1e-4)
    assert (q.arc_s, q.arc_m, q.arc_top_k, q.arc_gamma, paper.base_learning_rate) == (10.0, 0.1, 3, 1.0, 4.5e-6)
    # the paper's autoencoders give 16x16 and 32x32 tokens at 256 px (built here narrow, at 64 px)
    for name, factor in [("imagenet_arcvq_f16", 16), ("imagenet_arcvq_f8", 8), ("imagenet_cvq_f8", 8),
                         ("custom_arcvq", 16)]:
        config = OmegaConf.load(CONFIGS / f"{name}.yaml")
        for callback in config.lightning.callbacks.values():
            instantiate_from_config(callback)
        config.model.params.ddconfig.update(ch=32, num_res_blocks=1, resolution=64)
        config.model.params.lossconfig.params.perceptual_weight = 0.0
        model = instantiate_from_config(config.model).eval()
        with torch.no_grad():
            _, _, (_, _, indices) = model.encode(torch.zeros(1, 3, 64, 64))
        assert indices.numel() == (64 // factor) ** 2, name
