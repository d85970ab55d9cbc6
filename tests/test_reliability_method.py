"""Guarantees of the method that no other test pins down: taming's ``legacy=True`` default, the
chunked ArcQuantizer equal to the dense one, the VQ-VAE's loss and reference network, every shipped
model refusing to train without NormBoundCallback, and the core modules importing top-down."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from arcvq_plugin import ArcQuantizer, NormBoundCallback
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.vqvae import VQVAE

import formulas

PACKAGE = Path(__file__).resolve().parents[1] / "arcvq_plugin"
LDM_TINY = Path(__file__).resolve().parents[1] / "configs" / "ldm" / "tiny_arcvq_f4.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def flat(z: torch.Tensor) -> torch.Tensor:
    return rearrange(z, "b c h w -> (b h w) c")


# ---- legacy=True is the default, as taming's ----------------------------------------------------

def test_legacy_default_puts_beta_on_the_codebook_term_as_taming():
    assert inspect.signature(VectorQuantizer2).parameters["legacy"].default is True
    q = ArcQuantizer(12, 4, beta=0.25, use_arc_loss=False).double().train()  # legacy left at its default
    assert q.legacy is True
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    q(z)[1].backward()  # the VQ loss alone: its value is the same either way, its gradients are not
    z_ref = z.detach().clone().requires_grad_()
    e_ref = q.embedding.weight.detach().clone().requires_grad_()
    _, zq = formulas.select(flat(z_ref), e_ref)
    formulas.vq_loss(flat(z_ref), zq, 0.25, legacy=True).backward()
    torch.testing.assert_close(z.grad, z_ref.grad)  # encoder: the commitment term has weight 1
    torch.testing.assert_close(q.embedding.weight.grad, e_ref.grad)  # codebook: weight beta


# ---- the chunked quantiser is the dense one -----------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 5, 7, 64])
def test_chunked_quantizer_forward_and_backward_equal_the_dense_one(chunk):
    dense = ArcQuantizer(20, 6, arc_gamma=0.8).double().train()
    chunked = ArcQuantizer(20, 6, arc_gamma=0.8, arc_chunk_size=chunk).double().train()
    with torch.no_grad():
        dense.embedding.weight.mul_(torch.rand(20, 1, dtype=torch.float64) + 0.5)
    chunked.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    results = []
    for q in (dense, chunked):
        torch.manual_seed(3)
        encoder = nn.Conv2d(3, 6, 1).double()
        z_q, loss, (_, _, indices) = q(encoder(x))
        (loss + z_q.pow(2).mean()).backward()
        results.append((loss.detach(), z_q.detach(), indices, encoder.weight.grad, q.embedding.weight.grad))
    assert float(results[0][0]) > 0 and float(dense.loss_breakdown["arc"]) > 0
    for name, a, b in zip(("loss", "z_q", "indices", "encoder grad", "codebook grad"), *results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


# ---- the VQ-VAE experiment: loss and network ----------------------------------------------------

@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_vqvae_loss_is_mse_over_data_variance_plus_the_quantizer_loss():
    model = VQVAE(in_channels=1, hidden_channels=8, res_hidden_channels=4, n_embed=8, embed_dim=4,
                  data_variance=0.37)
    images = torch.rand(2, 8, 8, 1) * 2 - 1
    loss = model.training_step({"image": images}, 0)
    x = images.permute(0, 3, 1, 2)
    x_rec, q_loss, _ = model(x)
    expected = ((x_rec - x) ** 2).sum() / x.numel() / 0.37 + q_loss
    torch.testing.assert_close(loss, expected)


def reference_layers(in_channels: int, hidden: int, n_res: int, res_hidden: int, embed_dim: int):
    """The reference VQ-VAE layer by layer, as METHOD.md and the ArcVQ-VAE reference code
    (goals4292/ArcVQ-VAE, ArcVQ-VAE/modules.py: Encoder, _pre_vq_conv, Decoder) describe it.
    Rows: (kind, in, out, kernel, stride, padding); a residual block is its 3x3 then its 1x1 conv."""
    residual = [("conv", hidden, res_hidden, 3, 1, 1), ("conv", res_hidden, hidden, 1, 1, 0)] * n_res
    encoder = [("conv", in_channels, hidden // 2, 4, 2, 1), ("conv", hidden // 2, hidden, 4, 2, 1),
               ("conv", hidden, hidden, 3, 1, 1), *residual]
    pre_vq = [("conv", hidden, embed_dim, 1, 1, 0)]
    decoder = [("conv", embed_dim, hidden, 3, 1, 1), *residual,
               ("convT", hidden, hidden // 2, 4, 2, 1), ("convT", hidden // 2, in_channels, 4, 2, 1)]
    return encoder, pre_vq, decoder


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


def _describe(layer: nn.Module):
    kind = "convT" if isinstance(layer, nn.ConvTranspose2d) else "conv"
    return (kind, layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride[0], layer.padding[0])


def _reference_residual_stack(x, layers, n_res):
    """The reference's blocks ``x + Sequential(ReLU(inplace), conv3x3, ReLU, conv1x1)(x)``: the
    in-place ReLU rewrites x before the sum, so the skip carries relu(x); then a final ReLU."""
    for i in range(n_res):
        a, b = layers[2 * i], layers[2 * i + 1]
        h = F.relu(x)
        x = h + F.conv2d(F.relu(F.conv2d(h, a.weight, a.bias, padding=1)), b.weight, b.bias)
    return F.relu(x)


def _reference_forward(x, encoder, pre_vq, decoder, n_res):
    c1, c2, c3, *res = encoder
    h = F.relu(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1))
    h = F.relu(F.conv2d(h, c2.weight, c2.bias, stride=2, padding=1))
    h = _reference_residual_stack(F.conv2d(h, c3.weight, c3.bias, padding=1), res, n_res)
    z = F.conv2d(h, pre_vq[0].weight, pre_vq[0].bias)
    d1, *rest = decoder
    res, t1, t2 = rest[:-2], rest[-2], rest[-1]
    y = _reference_residual_stack(F.conv2d(z, d1.weight, d1.bias, padding=1), res, n_res)
    y = F.relu(F.conv_transpose2d(y, t1.weight, t1.bias, stride=2, padding=1))
    return z, F.conv_transpose2d(y, t2.weight, t2.bias, stride=2, padding=1)


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_vqvae_network_is_the_reference_layer_by_layer(in_channels, size):
    hidden, n_res, res_hidden, embed_dim = 128, 2, 32, 64  # the paper's MNIST / CIFAR-10 network
    model = VQVAE(in_channels=in_channels, hidden_channels=hidden, n_res_layers=n_res,
                  res_hidden_channels=res_hidden, n_embed=512, embed_dim=embed_dim)
    expected = reference_layers(in_channels, hidden, n_res, res_hidden, embed_dim)
    ours = (_layers(model.encoder), _layers(model.quant_conv), _layers(model.decoder))
    for part, reference, layers in zip(("encoder", "pre_quant", "decoder"), expected, ours):
        assert [_describe(layer) for layer in layers] == reference, part
        for layer, (kind, cin, cout, k, _, _) in zip(layers, reference):
            assert layer.weight.shape == ((cin, cout) if kind == "convT" else (cout, cin)) + (k, k), part
    x = torch.randn(2, in_channels, size, size, generator=torch.Generator().manual_seed(7))
    z_ref, x_rec_ref = _reference_forward(x, *ours, n_res)
    with torch.no_grad():
        z = model.quant_conv(model.encoder(x))
        x_rec = model.decode(z)
    assert z.shape == (2, embed_dim, size // 4, size // 4) and x_rec.shape == x.shape
    torch.testing.assert_close(z, z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_rec, x_rec_ref, rtol=1e-5, atol=1e-6)


# ---- no model trains an ArcQuantizer without the norm bound -----------------------------------

def _tiny_vqvae():
    model = VQVAE(in_channels=1, hidden_channels=8, res_hidden_channels=4, n_embed=8, embed_dim=4,
                  quantizer_config={"target": "arcvq_plugin.ArcQuantizer"})
    data = torch.utils.data.DataLoader([{"image": torch.rand(8, 8, 1) * 2 - 1} for _ in range(4)], batch_size=2)
    return model, {"train_dataloaders": data}


def _tiny_ldm_first_stage():
    config = load_configs([str(LDM_TINY)], ["data.params.train.params.length=4"])
    model = instantiate_from_config(config.model)
    model.learning_rate = 1e-4
    return model, {"datamodule": instantiate_from_config(config.data)}


@pytest.mark.parametrize("build", [_tiny_vqvae, _tiny_ldm_first_stage], ids=["vqvae.VQVAE", "ldm.VQModel"])
def test_every_model_refuses_to_train_an_arcquantizer_without_the_norm_bound(build):
    model, data = build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, logger=False,
                         num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[])
    with pytest.raises(RuntimeError, match=rf"{type(model).__name__} trains an ArcQuantizer but the Trainer has "
                                           r"no NormBoundCallback.*arcvq_plugin\.NormBoundCallback\(\)"):
        trainer.fit(model, **data)
    after = model.state_dict()
    assert int(model.quantize.clock) == 0 and all(torch.equal(before[k], after[k]) for k in before)


def test_vqvae_with_the_callback_advances_the_clock_and_bounds_the_codebook():
    model, data = _tiny_vqvae()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[NormBoundCallback()])
    trainer.fit(model, **data)
    assert int(model.quantize.clock) == 2
    assert float(model.quantize.embedding.weight.detach().norm(dim=1).max()) <= float(model.quantize.radius) * (1 + 1e-6)


# ---- the core modules import top-down -----------------------------------------------------------

def _package_imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            imported.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("arcvq_plugin"):
            imported.add(node.module.removeprefix("arcvq_plugin."))
        elif isinstance(node, ast.Import):
            imported |= {a.name.removeprefix("arcvq_plugin.") for a in node.names if a.name.startswith("arcvq_plugin")}
    return imported


def test_method_modules_import_top_down_without_a_circle():
    assert _package_imports(PACKAGE / "norm_bound.py") == set()  # the bound's arithmetic knows no quantiser
    assert _package_imports(PACKAGE / "losses.py") == {"norm_bound", "validation"}
    assert "norm_bound_callback" not in _package_imports(PACKAGE / "quantizer.py")
    assert "quantizer" in _package_imports(PACKAGE / "norm_bound_callback.py")
    import arcvq_plugin

    from arcvq_plugin.norm_bound_callback import register_norm_bound_hook

    assert arcvq_plugin.register_norm_bound_hook is register_norm_bound_hook
