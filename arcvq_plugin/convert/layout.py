"""Recognise a VQGAN / LDM first-stage checkpoint from its keys and tensor shapes.

taming's ``VQModel`` and ldm's ``VQModel`` share one state-dict layout (``encoder.*``,
``decoder.*``, ``quant_conv``, ``post_quant_conv``, ``quantize.embedding.weight`` and the loss's
``loss.*``); a full LatentDiffusion checkpoint holds the same under ``first_stage_model.``.
Everything the model constructor needs is readable from the shapes:

=====================  ===========================================================
ddconfig entry         read from
=====================  ===========================================================
ch, in_channels        ``encoder.conv_in.weight`` (ch, in_channels, 3, 3)
ch_mult                ``encoder.down.{i}.block.0.conv1.weight`` rows / ch, per level i
num_res_blocks         number of ``encoder.down.0.block.{j}``
attn_resolutions       levels i with ``encoder.down.{i}.attn.*``: resolution // 2**i
attn_type (ldm only)   ``encoder.mid.attn_1``: q/k/v -> vanilla, to_qkv -> linear, absent -> none
z_channels, double_z   ``decoder.conv_in.weight`` columns; ``encoder.conv_out`` rows = z or 2z
out_ch                 ``decoder.conv_out.weight`` rows
resamp_with_conv       ``encoder.down.0.downsample.conv.weight`` present
n_embed, embed_dim     ``quantize.embedding.weight`` (n_embed, embed_dim)
=====================  ===========================================================

``resolution`` is not in the weights (the networks are fully convolutional); it only places the
attention levels, so the caller supplies it (256 for every public checkpoint).
The public layouts (configs of CompVis/taming-transformers 3ba01b2 ``configs/imagenet_vqgan.yaml``
and CompVis/latent-diffusion a506df5 ``models/first_stage_models/*/config.yaml``) are recognised
by their structure, which also gives the model family and the loss settings that are not weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..validation import check_choice, check_int
from .checkpoint_io import ConversionError

__all__ = ["FAMILIES", "KnownLayout", "KNOWN_LAYOUTS", "VQLayout", "detect_layout", "FULL_LDM_PREFIX"]

FAMILIES = ("auto", "taming", "ldm")
FULL_LDM_PREFIX = "first_stage_model."
UPSTREAM_WIDTH = 128

_TAMING_LOSS = {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 250001, "disc_weight": 0.8,
                "codebook_weight": 1.0}


def _ldm_loss(disc_start: int, disc_weight: float) -> dict[str, Any]:
    return {"disc_conditional": False, "disc_in_channels": 3, "disc_start": disc_start,
            "disc_weight": disc_weight, "codebook_weight": 1.0}


@dataclass(frozen=True)
class KnownLayout:
    """A public checkpoint's architecture (base width ``ch`` is 128 in all of them)."""

    name: str
    family: str
    n_embed: int
    embed_dim: int
    z_channels: int
    ch_mult: tuple[int, ...]
    attn_levels: tuple[int, ...]
    attn_type: str
    loss_params: dict[str, Any]
    source: str
    num_res_blocks: int = 2


KNOWN_LAYOUTS: tuple[KnownLayout, ...] = (
    KnownLayout("vqgan_imagenet_f16_1024", "taming", 1024, 256, 256, (1, 1, 2, 2, 4), (4,), "vanilla",
                _TAMING_LOSS, "taming-transformers configs/imagenet_vqgan.yaml"),
    KnownLayout("vqgan_imagenet_f16_16384", "taming", 16384, 256, 256, (1, 1, 2, 2, 4), (4,), "vanilla",
                _TAMING_LOSS, "taming-transformers configs/imagenet_vqgan.yaml (n_embed 16384)"),
    KnownLayout("vq-f4", "ldm", 8192, 3, 3, (1, 2, 4), (), "vanilla", _ldm_loss(0, 0.75),
                "latent-diffusion models/first_stage_models/vq-f4/config.yaml"),
    KnownLayout("vq-f4-noattn", "ldm", 8192, 3, 3, (1, 2, 4), (), "none", _ldm_loss(11, 0.75),
                "latent-diffusion models/first_stage_models/vq-f4-noattn/config.yaml"),
    KnownLayout("vq-f8", "ldm", 16384, 4, 4, (1, 2, 2, 4), (3,), "vanilla", _ldm_loss(1, 0.6),
                "latent-diffusion models/first_stage_models/vq-f8/config.yaml"),
    KnownLayout("vq-f8-n256", "ldm", 256, 4, 4, (1, 2, 2, 4), (3,), "vanilla", _ldm_loss(250001, 0.75),
                "latent-diffusion models/first_stage_models/vq-f8-n256/config.yaml"),
    KnownLayout("vq-f16", "ldm", 16384, 8, 8, (1, 1, 2, 2, 4), (4,), "vanilla", _ldm_loss(250001, 0.75),
                "latent-diffusion models/first_stage_models/vq-f16/config.yaml"),
)


@dataclass
class VQLayout:
    """What ``detect_layout`` found.

    Attributes:
        prefix: key prefix of the VQ model ("" or ``"first_stage_model."``).
        family: "taming" or "ldm" (which model classes the yaml targets).
        name: a ``KNOWN_LAYOUTS`` name, or "custom".
        ddconfig: Encoder/Decoder arguments (upstream names).
        n_embed, embed_dim: codebook shape (K, D).
        loss_keys: keys of the loss module (``<prefix>loss.*``), in file order.
        lossconfig: the training loss's target/params (architecture from the ``loss.*`` keys, the
            rest from the known layout's upstream config or taming's defaults).
        colorize_nlabels: from a ``colorize`` buffer, else None.
        notes: human-readable remarks for the report.
    """

    prefix: str
    family: str
    name: str
    ddconfig: dict[str, Any]
    n_embed: int
    embed_dim: int
    loss_keys: list[str]
    lossconfig: dict[str, Any]
    colorize_nlabels: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def is_full_ldm(self) -> bool:
        return self.prefix == FULL_LDM_PREFIX

    @property
    def codebook_key(self) -> str:
        return self.prefix + "quantize.embedding.weight"

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def _find_prefix(keys: list[str]) -> str:
    prefixes = sorted({k[: -len("encoder.conv_in.weight")] for k in keys if k.endswith("encoder.conv_in.weight")})
    if FULL_LDM_PREFIX in prefixes:
        return FULL_LDM_PREFIX
    if "" in prefixes:
        return ""
    if prefixes:
        raise ConversionError(
            f"found an encoder under prefixes {prefixes} but none is a VQ model's top level ('') or a "
            f"LatentDiffusion first stage ('{FULL_LDM_PREFIX}')"
        )
    sample = ", ".join(keys[:6])
    raise ConversionError(
        "not a VQGAN / LDM first-stage checkpoint: no 'encoder.conv_in.weight' "
        f"(nor '{FULL_LDM_PREFIX}encoder.conv_in.weight'); its first keys are: {sample}"
    )


def _refuse_unsupported_quantizers(sd: Mapping[str, torch.Tensor], prefix: str) -> None:
    if prefix + "quantize.embed.weight" in sd or prefix + "quantize.proj.weight" in sd:
        raise ConversionError(
            "this is a GumbelVQ checkpoint (quantize.embed.weight, quantize.proj.*): it selects codes by "
            "logits of a learned projection (Gumbel-softmax), not by nearest neighbour, so there is no "
            "L2 selection for ArcVQ's cosine selection to replace; converting it is not supported"
        )
    if prefix + "quantize.embedding.weight" not in sd:
        conv_out = sd.get(prefix + "encoder.conv_out.weight")
        decoder_in = sd.get(prefix + "decoder.conv_in.weight")
        if conv_out is not None and decoder_in is not None and conv_out.shape[0] == 2 * decoder_in.shape[1]:
            raise ConversionError(
                "this looks like a KL autoencoder (AutoencoderKL: quant_conv maps to mean and log-variance, "
                "no quantize.embedding.weight): it has no codebook to convert"
            )
        raise ConversionError(f"no codebook: '{prefix}quantize.embedding.weight' is missing")
    if prefix + "quantize.used" in sd:
        raise ConversionError(
            "the quantiser was trained with a `remap` file (quantize.used present); converting remapped "
            "codebooks is not supported"
        )


def _require(sd: Mapping[str, torch.Tensor], prefix: str, names: list[str]) -> None:
    missing = [prefix + n for n in names if prefix + n not in sd]
    if missing:
        raise ConversionError(f"wrong architecture: not a taming/ldm VQModel, missing {missing}")


def _levels(sd: Mapping[str, torch.Tensor], prefix: str, pattern: str) -> list[int]:
    regex = re.compile(re.escape(prefix) + pattern)
    return sorted({int(m.group(1)) for k in sd for m in [regex.match(k)] if m})


def _attn_type(sd: Mapping[str, torch.Tensor], prefix: str) -> str:
    mid = prefix + "encoder.mid.attn_1."
    if mid + "q.weight" in sd:
        return "vanilla"
    if mid + "to_qkv.weight" in sd:
        return "linear"
    if any(k.startswith(mid) for k in sd):
        raise ConversionError(f"unknown attention block at {mid}*")
    return "none"


def _ddconfig(sd: Mapping[str, torch.Tensor], p: str, resolution: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    conv_in = sd[p + "encoder.conv_in.weight"]
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = _levels(sd, p, r"encoder\.down\.(\d+)\.")
    if levels != list(range(len(levels))) or not levels:
        raise ConversionError(f"wrong architecture: encoder levels {levels} are not 0..n-1")
    ch_mult = []
    for i in levels:
        key = f"{p}encoder.down.{i}.block.0.conv1.weight"
        _require(sd, "", [key])
        width = int(sd[key].shape[0])
        if width % ch:
            raise ConversionError(f"wrong architecture: {key} has {width} channels, not a multiple of ch={ch}")
        ch_mult.append(width // ch)
    num_res_blocks = len(_levels(sd, p, r"encoder\.down\.0\.block\.(\d+)\."))
    attn_levels = tuple(i for i in levels if any(k.startswith(f"{p}encoder.down.{i}.attn.") for k in sd))
    if len(levels) > 1 and resolution % 2 ** (len(levels) - 1):
        raise ConversionError(f"resolution {resolution} is not divisible by the downsampling factor")
    z_channels = int(sd[p + "decoder.conv_in.weight"].shape[1])
    enc_out = int(sd[p + "encoder.conv_out.weight"].shape[0])
    if enc_out not in (z_channels, 2 * z_channels):
        raise ConversionError(
            f"wrong architecture: encoder.conv_out has {enc_out} channels, decoder.conv_in takes {z_channels}"
        )
    ddconfig: dict[str, Any] = {
        "double_z": enc_out == 2 * z_channels,
        "z_channels": z_channels,
        "resolution": resolution,
        "in_channels": in_channels,
        "out_ch": int(sd[p + "decoder.conv_out.weight"].shape[0]),
        "ch": ch,
        "ch_mult": ch_mult,
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": [resolution // 2**i for i in attn_levels],
        "dropout": 0.0,
    }
    if len(levels) > 1 and f"{p}encoder.down.0.downsample.conv.weight" not in sd:
        ddconfig["resamp_with_conv"] = False
    return ddconfig, attn_levels


def _discriminator(sd: Mapping[str, torch.Tensor], p: str) -> dict[str, Any]:
    """NLayerDiscriminator's constructor arguments from ``loss.discriminator.main.{i}`` (conv at i=3n+2 last)."""
    indices = _levels(sd, p, r"loss\.discriminator\.main\.(\d+)\.")
    if not indices:
        return {}
    first = sd[f"{p}loss.discriminator.main.0.weight"]
    params: dict[str, Any] = {"disc_in_channels": int(first.shape[1]), "disc_ndf": int(first.shape[0]),
                              "disc_num_layers": (indices[-1] - 2) // 3}
    if any(k.startswith(f"{p}loss.discriminator.main.") and k.endswith(".loc") for k in sd):
        params["use_actnorm"] = True
    return params


def _match(ddconfig: dict[str, Any], attn_levels: tuple[int, ...], attn_type: str, n_embed: int,
           embed_dim: int) -> KnownLayout | None:
    for known in KNOWN_LAYOUTS:
        if (known.n_embed, known.embed_dim, known.z_channels, known.ch_mult, known.attn_levels, known.attn_type,
                known.num_res_blocks) == (n_embed, embed_dim, ddconfig["z_channels"], tuple(ddconfig["ch_mult"]),
                                          attn_levels, attn_type, ddconfig["num_res_blocks"]):
            return known
    return None


def detect_layout(state_dict: Mapping[str, torch.Tensor], *, resolution: int = 256, family: str = "auto") -> VQLayout:
    """Recognise the VQ model inside ``state_dict``.

    Args:
        state_dict: the checkpoint's tensors.
        resolution: training image size, only used to express attention levels as
            ``attn_resolutions`` (default 256, as in every public config); >= 1.
        family: "auto" (default: the known layout's family; "ldm" when only ldm can build the
            architecture or the checkpoint is a full LDM; "taming" otherwise), "taming" or "ldm".

    Raises:
        ConversionError: Gumbel quantiser, KL autoencoder, remapped codebook, wrong or
            inconsistent architecture.
    """
    check_choice("family", family, FAMILIES)
    resolution = check_int("resolution", resolution, minimum=1)  # a plain int: it goes into the model config
    keys = list(state_dict)
    prefix = _find_prefix(keys)
    _refuse_unsupported_quantizers(state_dict, prefix)
    _require(state_dict, prefix, ["encoder.conv_out.weight", "decoder.conv_in.weight", "decoder.conv_out.weight",
                                  "quant_conv.weight", "post_quant_conv.weight"])
    codebook = state_dict[prefix + "quantize.embedding.weight"]
    if codebook.ndim != 2 or not codebook.is_floating_point():
        raise ConversionError(f"codebook {prefix}quantize.embedding.weight has shape {tuple(codebook.shape)} "
                              f"and dtype {codebook.dtype}; expected a float (n_embed, embed_dim) matrix")
    n_embed, embed_dim = (int(s) for s in codebook.shape)
    ddconfig, attn_levels = _ddconfig(state_dict, prefix, resolution)
    quant_conv, post_quant_conv = state_dict[prefix + "quant_conv.weight"], state_dict[prefix + "post_quant_conv.weight"]
    z = ddconfig["z_channels"] * (2 if ddconfig["double_z"] else 1)
    if tuple(quant_conv.shape[:2]) != (embed_dim, z) or tuple(post_quant_conv.shape[:2]) != (ddconfig["z_channels"], embed_dim):
        raise ConversionError(
            f"wrong architecture: codebook dim {embed_dim}, quant_conv {tuple(quant_conv.shape)}, post_quant_conv "
            f"{tuple(post_quant_conv.shape)} and z_channels {ddconfig['z_channels']} do not fit together"
        )
    attn_type = _attn_type(state_dict, prefix)
    known = _match(ddconfig, attn_levels, attn_type, n_embed, embed_dim)
    notes: list[str] = []
    if attn_type != "vanilla":
        ddconfig["attn_type"] = attn_type
    if family == "auto":
        if known is not None:
            family = known.family
        elif attn_type != "vanilla" or prefix == FULL_LDM_PREFIX:
            family = "ldm"
        else:
            family = "taming"
            notes.append("unknown layout: taming's VQModel chosen (pass --family ldm for latent-diffusion's)")
    if family == "taming" and attn_type != "vanilla":
        raise ConversionError(f"attention type {attn_type!r} exists only in latent-diffusion's model; use --family ldm")
    if prefix == FULL_LDM_PREFIX and family != "ldm":
        raise ConversionError("a full LatentDiffusion checkpoint's first stage converts to the ldm family only")
    if known is not None and prefix != FULL_LDM_PREFIX:
        notes.append(f"loss settings that are not weights (disc_start, disc_weight) from {known.source}")
    if known is not None and ddconfig["ch"] != UPSTREAM_WIDTH:
        notes.append(f"key layout of {known.name} with base width ch={ddconfig['ch']} (upstream {UPSTREAM_WIDTH})")
    loss_keys = [k for k in keys if k.startswith(prefix + "loss.")]
    disc = _discriminator(state_dict, prefix)
    loss_params = dict(known.loss_params) if known is not None else {
        "disc_conditional": False, "disc_in_channels": 3, "disc_start": 0, "codebook_weight": 1.0}
    loss_params.update(disc)
    if disc.get("disc_ndf") == 64:
        loss_params.pop("disc_ndf")
    if disc.get("disc_num_layers") == 3:
        loss_params.pop("disc_num_layers")
    lossconfig = {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator", "params": loss_params}
    if known is None and prefix != FULL_LDM_PREFIX:
        notes.append("loss settings that are not weights (disc_start, weights) are taming defaults with "
                     "disc_start 0: check them before training")
    colorize = state_dict.get(prefix + "colorize")
    return VQLayout(
        prefix=prefix, family=family, name=known.name if known is not None else "custom", ddconfig=ddconfig,
        n_embed=n_embed, embed_dim=embed_dim, loss_keys=loss_keys, lossconfig=lossconfig,
        colorize_nlabels=int(colorize.shape[1]) if colorize is not None else None, notes=notes,
    )
