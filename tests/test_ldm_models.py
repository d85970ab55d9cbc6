"""arcvq_plugin.ldm's first-stage models and ldm repairs, without training: construction, the
baseline, checkpoint loading, the loss call, names ldm uses without importing, datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from arcvq_plugin.quantizer import ArcQuantizer

DDCONFIG = dict(double_z=False, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
IDENTITY = {"target": "torch.nn.Identity"}
ARC = {"target": "arcvq_plugin.ArcQuantizer", "params": {"bbnr_alpha": 3e-4}}


def _model(cls_name="VQModel", **kwargs):
    import arcvq_plugin.ldm as arc_ldm

    params = dict(ddconfig=DDCONFIG, lossconfig=IDENTITY, n_embed=16, embed_dim=4)
    params.update(kwargs)
    return getattr(arc_ldm, cls_name)(**params)


def test_arcvq_and_baseline_share_the_architecture():
    from taming.modules.vqvae.quantize import VectorQuantizer2

    arc, base = _model(quantizer_config=ARC), _model()
    assert isinstance(arc.quantize, ArcQuantizer) and type(base.quantize) is VectorQuantizer2
    arc_shapes = {k: v.shape for k, v in arc.state_dict().items()}
    base_shapes = {k: v.shape for k, v in base.state_dict().items()}
    assert set(arc_shapes) - set(base_shapes) == {"quantize.clock"}
    assert all(arc_shapes[k] == shape for k, shape in base_shapes.items())
    assert arc.quantize.n_e == 16 and arc.quantize.e_dim == 4


def test_quantizer_config_must_agree_with_the_model():
    with pytest.raises(ValueError, match="n_e"):
        _model(quantizer_config={"target": "arcvq_plugin.ArcQuantizer", "params": {"n_e": 8}})
    with pytest.raises(ValueError, match="n_embed"):
        _model(n_embed=0)


def test_interface_is_ldms_interface_and_loads_the_clock(tmp_path):
    import ldm.models.autoencoder as ldm_autoencoder

    trained = _model(quantizer_config=ARC)
    trained.quantize.clock.fill_(7)
    path = tmp_path / "fs.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    interface = _model("VQModelInterface", quantizer_config=ARC, ckpt_path=str(path))
    assert isinstance(interface, ldm_autoencoder.VQModelInterface)
    assert int(interface.quantize.clock) == 7
    assert torch.equal(interface.quantize.embedding.weight, trained.quantize.embedding.weight)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    h = interface.encode(x)
    assert h.shape == (1, 4, 8, 8)
    assert interface.decode(h, force_not_quantize=True).shape == (1, 3, 32, 32)


class TamingStyleLoss(nn.Module):
    """taming's loss signature: no predicted_indices."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, qloss, x, xrec, optimizer_idx, global_step, last_layer=None, cond=None, split="train"):
        self.calls.append((optimizer_idx, global_step, split))
        return qloss, {}


class LdmStyleLoss(TamingStyleLoss):
    """ldm's own loss signature: takes predicted_indices."""

    def forward(self, qloss, x, xrec, optimizer_idx, global_step, last_layer=None, cond=None, split="train",
                predicted_indices=None):
        self.calls.append((optimizer_idx, global_step, split, predicted_indices.shape))
        return qloss, {}


def test_predicted_indices_reach_only_losses_that_take_them():
    model = _model(quantizer_config=ARC)
    model.quantize.clock.fill_(5)
    x, indices = torch.zeros(1, 3, 32, 32), torch.zeros(64, dtype=torch.long)
    model.loss = TamingStyleLoss()
    model._gan_loss(x, x, (torch.tensor(0.0), indices), 0, 3, "train")
    assert model.loss.calls == [(0, 3, "train")]  # the step given is the caller's, not the clock
    model.loss = LdmStyleLoss()
    model._gan_loss(x, x, (torch.tensor(0.0), indices), 1, 3, "val")
    assert model.loss.calls == [(1, 3, "val", (64,))]


def test_names_ldm_uses_without_import_are_provided():
    import ldm.models.autoencoder as ldm_autoencoder

    _model()
    for name in ("LitEma", "np", "version", "LambdaLR"):
        assert hasattr(ldm_autoencoder, name), name
    ema_model = _model(quantizer_config=ARC, use_ema=True)  # LitEma
    assert "quantizeembeddingweight" in dict(ema_model.model_ema.named_buffers())
    scheduled = _model(quantizer_config=ARC, lossconfig={
        "target": "arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator",
        "params": {"disc_start": 0, "perceptual_weight": 0.0, "disc_num_layers": 1, "disc_ndf": 8}},
        scheduler_config={"target": "ldm.lr_scheduler.LambdaLinearScheduler",
                          "params": {"warm_up_steps": [2], "cycle_lengths": [10], "f_start": [0.1],
                                     "f_max": [1.0], "f_min": [1.0]}})
    scheduled.learning_rate = 1e-3
    optimizers, schedulers = scheduled.configure_optimizers()  # LambdaLR
    assert len(optimizers) == 2 and len(schedulers) == 2


def test_taming_loss_target_is_built_offline():
    from arcvq_plugin.taming.losses import VQLPIPSWithDiscriminator

    model = _model(lossconfig={"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                               "params": {"disc_start": 0, "perceptual_weight": 0.0}})
    assert type(model.loss) is VQLPIPSWithDiscriminator


def test_font_fallback_renders_labels():
    from arcvq_plugin.ldm.compat import import_ldm

    ddpm = import_ldm()
    rendered = ddpm.log_txt_as_img((32, 16), ["chelsea", "a much longer label than fits"])
    assert rendered.shape == (2, 3, 16, 32)
    assert float(rendered.min()) < 0.0 <= 1.0 == float(rendered.max())


def test_ddim_sampler_keeps_the_model_device():
    from arcvq_plugin.ldm import DDIMSampler

    class Model:
        device = torch.device("cpu")
        num_timesteps = 10

    sampler = DDIMSampler(Model())
    sampler.register_buffer("betas", torch.ones(3))
    assert sampler.betas.device.type == "cpu"


def test_labelled_sample_images_carry_class_ids():
    from arcvq_plugin.ldm.datasets import LabelledSampleImages

    dataset = LabelledSampleImages(size=16, length=6, photos=["chelsea", "coffee"])
    item = dataset[0]
    assert item["image"].shape == (16, 16, 3)
    assert item["class_label"] in (0, 1) and item["human_label"] == ["chelsea", "coffee"][item["class_label"]]


def test_class_folder_images_label_by_folder(tmp_path):
    from arcvq_plugin.ldm.datasets import ClassFolderImages

    for name in ("n02", "n01"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / name / "a.png")
    dataset = ClassFolderImages(tmp_path, size=8)
    labels = {dataset[i]["human_label"]: dataset[i]["class_label"] for i in range(len(dataset))}
    assert labels == {"n01": 0, "n02": 1} and dataset[0]["image"].shape == (8, 8, 3)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "stray.png")
    with pytest.raises(ValueError, match="class folders"):
        ClassFolderImages(tmp_path, size=8)


def test_paper_configs_validate_and_follow_the_tables():
    from pathlib import Path

    from arcvq_plugin.config import instantiate_from_config, load_configs
    from arcvq_plugin.trainer_cli.config_check import check_config

    configs = Path(__file__).resolve().parents[1] / "configs" / "ldm"
    first = load_configs([str(configs / "arcvq_f8_imagenet.yaml")])
    ldm = load_configs([str(configs / "cin256_arcvq_f8_ldm.yaml")])
    for config in (first, ldm):
        check_config(config)
    fs = first.model.params
    assert (fs.n_embed, fs.embed_dim, fs.ddconfig.ch_mult, first.data.params.batch_size) == (1024, 16, [1, 2, 2, 4], 30)
    arc = fs.quantizer_config.params
    assert (arc.bbnr_alpha, arc.arc_gamma_decay, arc.arc_s, arc.arc_m, arc.arc_top_k) == (1e-5, 1e-4, 10.0, 0.1, 3)
    assert first.model.base_learning_rate == 4.5e-6 and first.lightning.trainer.max_epochs == 15
    unet = ldm.model.params.unet_config.params
    latent_size = ldm.model.params.image_size
    attention_at = sorted(latent_size // factor for factor in unet.attention_resolutions)
    assert (unet.model_channels, unet.num_res_blocks, unet.num_head_channels, attention_at) == (256, 2, 32, [8, 16, 32])
    assert (ldm.model.params.beta_schedule, ldm.data.params.batch_size, ldm.model.base_learning_rate) == ("linear", 64, 1e-5)
    assert ldm.model.params.channels == unet.in_channels == fs.embed_dim and latent_size == 256 // 8
    stage_params = {k: v for k, v in ldm.model.params.first_stage_config.params.items() if k != "ckpt_path"}
    assert stage_params["ddconfig"] == fs.ddconfig and stage_params["n_embed"] == fs.n_embed
    stage = instantiate_from_config(ldm.model.params.first_stage_config)
    first_model = instantiate_from_config(OmegaConf.merge(first.model, {"params": {"lossconfig": IDENTITY}}))
    assert {k: v.shape for k, v in stage.state_dict().items()} == {k: v.shape for k, v in first_model.state_dict().items()}


def test_interface_refuses_to_train_before_any_step():
    """VQModelInterface's encode returns the latent before quantisation (LatentDiffusion's first
    stage): training it is refused with the way out, before the first batch."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from arcvq_plugin import NormBoundCallback

    model = _model("VQModelInterface", quantizer_config=ARC, lossconfig={
        "target": "arcvq_plugin.taming.losses.VQLPIPSWithDiscriminator",
        "params": {"disc_start": 0, "perceptual_weight": 0.0, "disc_num_layers": 1, "disc_ndf": 8}})
    model.learning_rate = 1e-3
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[NormBoundCallback()])
    data = DataLoader([{"image": torch.zeros(32, 32, 3)}] * 2, batch_size=2)
    with pytest.raises(NotImplementedError, match="frozen first stage.*train VQModel"):
        trainer.fit(model, data)
    assert int(model.quantize.clock) == 0
