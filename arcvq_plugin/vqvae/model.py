"""The paper's small VQ-VAE (MNIST / CIFAR-10) as a LightningModule with a configurable quantiser.

    x (B, C, H, W) in [-1, 1] --Encoder--> (B, hidden, H/4, W/4) --quant_conv (1x1)--> z (B, D, H/4, W/4)
      --quantizer--> z_q --Decoder--> x_rec (B, C, H, W)
    loss = mse(x_rec, x) / data_variance + quantizer loss

The parts carry taming's first-stage names (``encoder``, ``quant_conv``, ``quantize``,
``post_quant_conv`` (an identity here: the reference network has no such layer), ``decoder``), so
``arcvq-tokens`` exports and decodes token grids of a trained VQVAE like any taming tokenizer.

The quantiser comes from ``quantizer_config`` (taming's ``target``/``params``); the rows of the
paper's ablation are configs (configs/vqvae/). Any quantiser with taming's VectorQuantizer2
interface works: ``forward(z) -> (z_q, loss, (perplexity, min_encodings, indices))``. ArcQuantizer
adds ArcLoss to that loss in training mode, and its clock / norm bound advance only through
``arcvq_plugin.NormBoundCallback``: training refuses to start without it in the Trainer's callbacks.

Training refuses a batch whose input or loss holds NaN or inf before it updates anything
(``check_finite``, :mod:`arcvq_plugin.finite_training`), and a checkpoint whose quantiser state
holds NaN or inf (Lightning's ``ckpt_path``).

Batches are taming examples: ``batch[image_key]`` is (B, H, W, C), float in [-1, 1] or uint8 pixels
(``arcvq_plugin.data.device_batches``), which are converted on the device with ``x / 127.5 - 1``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from arcvq_plugin.data.image_folder import uint8_to_signed_unit
from arcvq_plugin.finite_training import refuse_non_finite
from arcvq_plugin.norm_bound_callback import require_norm_bound_callback
from arcvq_plugin.quantizer_config import build_quantizer
from arcvq_plugin.quantizer_contract import check_finite_state
from arcvq_plugin.validation import check_bool, check_int, check_real
from arcvq_plugin.vqvae.networks import Decoder, Encoder

__all__ = ["VQVAE"]

DEFAULT_QUANTIZER = {"target": "taming.modules.vqvae.quantize.VectorQuantizer2", "params": {"beta": 0.25}}


class VQVAE(pl.LightningModule):
    """The van den Oord VQ-VAE of the ArcVQ paper's MNIST / CIFAR-10 experiments.

    Args:
        in_channels: image channels (1 MNIST, 3 CIFAR-10).
        hidden_channels: encoder/decoder width (128; must be even).
        n_res_layers: residual blocks in each residual stack (2).
        res_hidden_channels: width inside a residual block (32).
        n_embed: codebook size K (512).
        embed_dim: code dimension D (64).
        data_variance: pixel variance of the training set in the model's [-1, 1] scale; the
            reconstruction MSE is divided by it (MNIST 0.3797). > 0.
        learning_rate: Adam learning rate (3e-4). Trainers set ``model.learning_rate`` from the
            config's ``model.base_learning_rate`` (arcvq-train; use ``--scale_lr false`` for the
            paper's absolute 3e-4), which overrides this.
        quantizer_config: ``target``/``params`` of the quantiser; None = taming's VectorQuantizer2.
        image_key: batch key of the images (``"image"``).
        monitor: metric name for checkpoint callbacks (e.g. ``"val/rec_loss"``), stored as taming does.
        channels_last: keep weights and activations in channels-last (NHWC) memory (default True):
            the same function, 10-15% faster on the CPU (oneDNN) and on GPUs with tensor cores.
        check_finite: refuse a training batch whose input or loss holds NaN or inf, before the
            optimizer step (default True; a device-to-host sync per batch, two for float pixels).
    """

    def __init__(self, in_channels: int = 1, hidden_channels: int = 128, n_res_layers: int = 2,
                 res_hidden_channels: int = 32, n_embed: int = 512, embed_dim: int = 64,
                 data_variance: float = 1.0, learning_rate: float = 3e-4,
                 quantizer_config: Mapping | None = None, image_key: str = "image", monitor: str | None = None,
                 channels_last: bool = True, check_finite: bool = True):
        super().__init__()
        check_bool("check_finite", check_finite)
        check_int("n_embed", n_embed, minimum=1)
        check_int("embed_dim", embed_dim, minimum=1)
        check_real("data_variance", data_variance, minimum=0.0, exclusive=True)
        check_real("learning_rate", learning_rate, minimum=0.0, exclusive=True)
        self.save_hyperparameters()
        self.encoder = Encoder(in_channels, hidden_channels, n_res_layers, res_hidden_channels)
        self.quant_conv = nn.Conv2d(hidden_channels, embed_dim, kernel_size=1)
        self.quantize = build_quantizer(DEFAULT_QUANTIZER if quantizer_config is None else quantizer_config,
                                        n_embed, embed_dim)
        self.post_quant_conv = nn.Identity()
        self.decoder = Decoder(embed_dim, hidden_channels, n_res_layers, res_hidden_channels, in_channels)
        self.n_embed = n_embed
        self.data_variance = float(data_variance)
        self.learning_rate = float(learning_rate)
        self.image_key = image_key
        self.check_finite = check_finite
        if monitor is not None:
            self.monitor = monitor
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, Any, torch.Tensor]]:
        """(B, C, H, W) -> (z_q (B, D, H/4, W/4), quantiser loss, (perplexity, encodings, indices))."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, 4h, 4w) reconstruction in the data scale ([-1, 1], unclamped)."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[Any, Any, torch.Tensor]]:
        """(B, C, H, W) -> (reconstruction (B, C, H, W), quantiser loss, quantiser info)."""
        z_q, q_loss, info = self.encode(x)
        return self.decode(z_q), q_loss, info

    def get_input(self, batch: Mapping) -> torch.Tensor:
        """taming example batch (B, H, W, C), float in [-1, 1] or uint8 -> float (B, C, H, W) in [-1, 1],
        in the model's memory format (channels-last by default)."""
        x = batch[self.image_key]
        if x.ndim == 3:
            x = x[..., None]
        if x.dtype == torch.uint8:
            x = uint8_to_signed_unit(x)
        return x.permute(0, 3, 1, 2).float().contiguous(memory_format=self.memory_format)

    def _losses(self, batch: Mapping, batch_idx: Optional[int] = None) -> dict[str, torch.Tensor]:
        """The losses of ``batch``; with ``batch_idx`` (training) the input and the loss are checked
        first (``check_finite``)."""
        checked = batch_idx is not None and self.check_finite
        if checked:  # uint8 pixels need no check (and no sync)
            refuse_non_finite(batch[self.image_key], f"the input batch {self.image_key!r}", batch_idx=batch_idx,
                              epoch=self.current_epoch, step=self.global_step)
        x = self.get_input(batch)
        x_rec, q_loss, _ = self(x)
        rec_loss = F.mse_loss(x_rec, x) / self.data_variance
        loss = rec_loss + q_loss
        if checked:
            refuse_non_finite(loss, "the loss", batch_idx=batch_idx, epoch=self.current_epoch,
                              step=self.global_step)
        return {"loss": loss, "rec_loss": rec_loss, "quant_loss": q_loss}

    def on_train_start(self) -> None:
        require_norm_bound_callback(self.trainer, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose quantiser state holds NaN or inf, whatever the quantiser
        (``QuantizerStateError`` naming the key), before Lightning loads it."""
        check_finite_state(checkpoint.get("state_dict", {}), "quantize.")

    def training_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch, batch_idx)
        self.log("train/rec_loss", losses["rec_loss"], prog_bar=True)
        self.log("train/quant_loss", losses["quant_loss"])
        self.log("train/loss", losses["loss"])
        for name, value in getattr(self.quantize, "loss_breakdown", {}).items():
            self.log(f"train/quantizer/{name}", value, prog_bar=name == "usage")
        return losses["loss"]

    def validation_step(self, batch: Mapping, batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self.log("val/rec_loss", losses["rec_loss"], prog_bar=True, sync_dist=True)
        self.log("val/quant_loss", losses["quant_loss"], sync_dist=True)
        self.log("val/loss", losses["loss"], sync_dist=True)
        return losses["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch: Mapping, **kwargs: Any) -> dict[str, torch.Tensor]:
        """taming's image-logger hook: ``inputs`` and ``reconstructions`` (B, C, H, W) in [-1, 1]."""
        x = self.get_input(batch).to(self.device)
        x_rec, _, _ = self(x)
        return {"inputs": x, "reconstructions": x_rec.clamp(-1.0, 1.0)}
