"""The paper's small VQ-VAE: network shapes, the reference residual block, quantiser configs, and
one short training run of each MNIST ablation row through its config."""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin import ArcQuantizer
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.quantizer_config import build_quantizer
from arcvq_plugin.vqvae import VQVAE, Decoder, Encoder, ResidualBlock
from arcvq_plugin.vqvae.reproduce import row_config, train_row

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vqvae"
ROWS = ("vq", "cosine", "bbnr", "arcvq")


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_encoder_decoder_shapes(channels, size):
    x = torch.randn(2, channels, size, size)
    h = Encoder(channels, hidden_channels=16, res_hidden_channels=8)(x)
    assert h.shape == (2, 16, size // 4, size // 4)
    assert Decoder(embed_dim=5, hidden_channels=16, res_hidden_channels=8, out_channels=channels)(
        torch.randn(2, 5, size // 4, size // 4)).shape == x.shape


def test_residual_block_matches_reference_inplace_relu():
    """The reference ``x + Sequential(ReLU(True), conv3x3, ReLU(True), conv1x1)(x)`` sums relu(x)."""
    block = ResidualBlock(8, 4)
    reference = nn.Sequential(nn.ReLU(True), block.block[0], nn.ReLU(True), block.block[2])
    x = torch.randn(2, 8, 5, 5)
    x_ref = x.clone()
    expected = x_ref + reference(x_ref)
    assert torch.allclose(block(x), expected, atol=1e-6)


def test_paper_network_size_and_forward():
    model = VQVAE()  # MNIST defaults: hidden 128, 2 res blocks of 32, K=512, D=64
    assert model.quantize.embedding.weight.shape == (512, 64)
    assert isinstance(model.quantize, VectorQuantizer2)
    x = torch.randn(3, 1, 28, 28)
    x_rec, q_loss, (_, _, indices) = model(x)
    assert x_rec.shape == x.shape and q_loss.ndim == 0 and indices.numel() == 3 * 7 * 7
    batch = {"image": x.permute(0, 2, 3, 1)}
    assert torch.equal(model.get_input(batch), x)
    images = model.log_images(batch)
    assert images["reconstructions"].shape == x.shape and float(images["reconstructions"].abs().max()) <= 1.0


def test_quantizer_config_filled_and_checked():
    config = {"target": "arcvq_plugin.ArcQuantizer", "params": {"use_arc_loss": False}}
    quantizer = build_quantizer(config, n_embed=16, embed_dim=4)
    assert isinstance(quantizer, ArcQuantizer) and quantizer.embedding.weight.shape == (16, 4)
    with pytest.raises(ValueError, match="n_e"):
        build_quantizer({"target": "arcvq_plugin.ArcQuantizer", "params": {"n_e": 8}}, n_embed=16, embed_dim=4)


@pytest.mark.parametrize("kwargs,name", [({"data_variance": 0.0}, "data_variance"), ({"n_embed": 0}, "n_embed"),
                                         ({"learning_rate": -1.0}, "learning_rate"), ({"hidden_channels": 7}, "hidden")])
def test_model_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VQVAE(**kwargs)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_rows_differ_only_in_quantizer_and_callbacks(dataset):
    configs = {row: OmegaConf.load(CONFIGS / f"{dataset}_{row}.yaml") for row in ROWS}
    stripped = []
    for config in configs.values():
        config = OmegaConf.to_container(config)
        config["model"]["params"].pop("quantizer_config")
        config["lightning"].pop("callbacks", None)
        stripped.append(config)
    assert all(s == stripped[0] for s in stripped)
    base = configs["arcvq"]
    assert base.data.params.batch_size == 1024 and base.lightning.trainer.max_epochs == 500
    assert base.data.target == "arcvq_plugin.data.device_batches.DeviceDataModule"
    params = base.model.params
    assert (params.hidden_channels, params.n_res_layers, params.res_hidden_channels) == (128, 2, 32)
    assert (params.n_embed, params.embed_dim, base.model.base_learning_rate) == (512, 64, 3e-4)
    q = base.model.params.quantizer_config.params
    assert (q.bbnr_alpha, q.arc_s, q.arc_m, q.arc_top_k, q.arc_gamma, q.arc_gamma_decay) == (3e-4, 10.0, 0.1, 3, 1.0, 5e-4)
    flags = {row: (c.model.params.quantizer_config.params.get("use_bbnr"),
                   c.model.params.quantizer_config.params.get("use_arc_loss")) for row, c in configs.items()}
    assert flags == {"vq": (None, None), "cosine": (False, False), "bbnr": (True, False), "arcvq": (True, True)}
    for row in ("cosine", "bbnr", "arcvq"):
        assert configs[row].lightning.callbacks.norm_bound.target == "arcvq_plugin.NormBoundCallback"
    model = instantiate_from_config(configs["vq"].model)
    assert type(model.quantize) is VectorQuantizer2 and model.encoder.net[0].in_channels == (1 if dataset == "mnist" else 3)


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_fixed_bound_row_differs_from_arcvq_only_in_its_keys(dataset):
    """Appendix D.4's row: the arcvq config with bbnr_alpha = 0 (R(t) = 1), nothing else changed."""
    arcvq = _leaves(OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{dataset}_arcvq.yaml")))
    fixed = _leaves(OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{dataset}_arcvq_fixed_bound.yaml")))
    assert set(arcvq) == set(fixed)
    changed = {key for key in arcvq if arcvq[key] != fixed[key]}
    assert changed == {"model.params.quantizer_config.params.bbnr_alpha"}
    assert fixed["model.params.quantizer_config.params.bbnr_alpha"] == 0.0
    quantizer = instantiate_from_config(OmegaConf.load(CONFIGS / f"{dataset}_arcvq_fixed_bound.yaml").model).quantize
    quantizer.clock.fill_(100_000)
    assert float(quantizer.radius) == 1.0


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_cvq_and_rotation_rows_differ_from_their_reference_only_in_the_quantizer(dataset):
    """cvq: the vq config with CVQ-VAE's quantiser (same beta and legacy); arcvq_rotation: the arcvq
    config plus gradient_estimator: rotation."""
    def load(row):
        return _leaves(OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{dataset}_{row}.yaml")))

    vq, cvq = load("vq"), load("cvq")
    quantizer = "model.params.quantizer_config."
    assert {k: v for k, v in vq.items() if not k.startswith(quantizer)} == \
        {k: v for k, v in cvq.items() if not k.startswith(quantizer)}
    assert cvq[quantizer + "target"] == "arcvq_plugin.baselines.ClusteredQuantizer"
    assert {k: cvq[quantizer + "params." + k] for k in ("beta", "legacy", "distance", "usage_decay")} == \
        {"beta": 0.25, "legacy": False, "distance": "cos", "usage_decay": 0.99}
    assert all(cvq[k] == v for k, v in vq.items() if k.startswith(quantizer + "params."))
    arcvq, rotation = load("arcvq"), load("arcvq_rotation")
    assert {k: v for k, v in rotation.items() if k in arcvq} == arcvq
    assert set(rotation) - set(arcvq) == {quantizer + "params.gradient_estimator"}
    assert rotation[quantizer + "params.gradient_estimator"] == "rotation"


@pytest.mark.parametrize("row", ["cvq", "arcvq_rotation"])
def test_cvq_and_rotation_rows_train_from_their_configs(row, one_thread):
    from arcvq_plugin.baselines import ClusteredQuantizer

    config = row_config(CONFIGS, "mnist", row, epochs=1, batch_size=8, limit_train=16, limit_test=8)
    before = instantiate_from_config(config.model).state_dict()
    trained = train_row(config, seed=0, progress_bar=False, device="cpu")
    quantizer, after = trained.model.quantize, trained.model.state_dict()
    assert not torch.equal(before["quantize.embedding.weight"], after["quantize.embedding.weight"])
    if row == "cvq":  # no clock, no NormBoundCallback needed; two training forwards of 8 images, 7x7 latents
        assert isinstance(quantizer, ClusteredQuantizer) and trained.clipped_fraction is None
        assert float(after["quantize.running_usage"].sum()) == pytest.approx(1 - 0.99 ** 2)
    else:
        assert quantizer.gradient_estimator == "rotation" and int(quantizer.clock) == 2


def test_reduced_budget_is_an_override():
    config = load_configs([str(CONFIGS / "mnist_arcvq.yaml"), str(CONFIGS / "reduced_budget.yaml")])
    assert config.data.params.batch_size == 32 and config.lightning.trainer.max_steps == 250
    # --epochs means epochs: the budget's step limit no longer cuts them short
    assert row_config(CONFIGS, "mnist", "arcvq", epochs=3, batch_size=256).lightning.trainer == {"max_epochs": 3, "max_steps": -1}
    assert row_config(CONFIGS, "mnist", "arcvq", budget="paper").lightning.trainer == {"max_epochs": 500}
    assert config.model == OmegaConf.load(CONFIGS / "mnist_arcvq.yaml").model


@pytest.mark.parametrize("row", ROWS)
def test_each_mnist_row_trains_from_its_config(row, one_thread):
    config = row_config(CONFIGS, "mnist", row, epochs=1, batch_size=8, limit_train=16, limit_test=8)
    torch.manual_seed(0)
    before = instantiate_from_config(config.model).state_dict()
    trained = train_row(config, seed=0, progress_bar=False, device="cpu")
    model, after = trained.model, trained.model.state_dict()
    assert trained.seconds > 0 and trained.cpu_seconds > 0 and model.learning_rate == 3e-4
    assert not torch.equal(before["encoder.net.0.weight"], after["encoder.net.0.weight"])
    assert not torch.equal(before["quantize.embedding.weight"], after["quantize.embedding.weight"])
    if row == "vq":
        assert type(model.quantize) is VectorQuantizer2
        return
    quantizer = model.quantize
    assert int(quantizer.clock) == 2  # 16 images / batch 8: NormBoundCallback advanced the clock per step
    assert (quantizer.use_bbnr, quantizer.use_arc_loss) == {"cosine": (False, False), "bbnr": (True, False),
                                                            "arcvq": (True, True)}[row]
    breakdown = quantizer.loss_breakdown
    assert torch.isfinite(breakdown["vq"]) and (float(breakdown["arc"]) > 0) == (row == "arcvq")
    if quantizer.use_bbnr:
        norms = quantizer.embedding.weight.detach().norm(dim=1)
        assert float(norms.max()) <= float(quantizer.radius) * (1 + 1e-5)
        # the per-step record of the bound ends with the quantizer's own last value
        assert trained.clipped_fraction.shape == (2,)
        assert float(trained.clipped_fraction[-1]) == float(quantizer.clipped_fraction)
    else:
        assert trained.clipped_fraction is None


def test_vqvae_is_an_arcvq_tokens_tokenizer():
    """taming's first-stage layout: arcvq-tokens encodes and decodes a VQVAE like a VQGAN."""
    from arcvq_plugin.tokens import decode_indices, encode_indices, tokenizer_of

    model = VQVAE(hidden_channels=16, res_hidden_channels=8, n_embed=32, embed_dim=4,
                  quantizer_config={"target": "arcvq_plugin.ArcQuantizer"}).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    indices = encode_indices(tokenizer_of(model), x)
    z_q, _, (_, _, codes) = model.encode(x)
    assert indices.shape == (3, 7, 7) and torch.equal(indices.reshape(-1), codes.reshape(-1))
    assert torch.allclose(decode_indices(model, indices), model.decode(z_q), atol=1e-5)  # z_q is straight-through


def test_uint8_batches_convert_exactly_like_the_float_items():
    from arcvq_plugin.data.image_folder import UInt8ImageArray

    pixels = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    dataset = UInt8ImageArray(pixels.numpy())
    model = VQVAE(hidden_channels=16, res_hidden_channels=8)
    from_items = model.get_input({"image": torch.stack([dataset[i]["image"] for i in range(5)])})
    from_uint8 = model.get_input({"image": dataset.pixels})
    assert from_uint8.dtype == torch.float32 and torch.equal(from_uint8, from_items)
