"""``convert_checkpoint``: a pretrained VQGAN / LDM checkpoint -> an ArcVQ checkpoint + yaml + report.

What changes: the quantiser. ``quantize.embedding.weight`` is kept (``codebook="keep"``) or
clipped onto the unit ball (``codebook="unit-ball"``), the ArcQuantizer's ``quantize.clock``
buffer is added (``t0``, see :mod:`arcvq_plugin.convert.codebook`). Every other tensor is copied
bit for bit (checked), ``loss.*`` dropped only with ``drop_loss=True``.

One clock drives both schedules: starting it at ``t0`` also sets the ArcLoss weight to
``lambda(t0) = arc_gamma * exp(-arc_gamma_decay * t0)``, which for large ``t0`` is ~0 (with the
paper's ImageNet values, a largest norm of 5 gives t0 = 160,944 and lambda = 1e-7).
``arc_weight="restart"`` writes ``arc_gamma * exp(arc_gamma_decay * t0)`` as the yaml's
``arc_gamma`` so that lambda(t0) = arc_gamma and it decays from there: exactly an ArcLoss clock
restarted at conversion time, while the norm bound keeps growing from R(t0).

The files appear only after the result has been reloaded with ``weights_only=True``, built with
the yaml's model class, checked bit for bit and decoded to finite images.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from ..config import instantiate_from_config
from ..schedules import arc_weight as arc_weight_at
from ..schedules import radius as radius_at
from ..atomic_outputs import save_torch
from ..validation import check_choice, check_int, check_real
from .checkpoint_io import AtomicOutputs, ConversionError, SourceCheckpoint, check_finite, read_source_checkpoint
from .codebook import CODEBOOK_MODES, check_codebook_norms, clip_to_unit_ball, clock_start, codebook_statistics, is_inside_bound, row_norms
from .image_check import compare_on_images, load_image_folder, reconstruct
from .layout import FAMILIES, VQLayout, detect_layout
from .model_config import build_vq_model, model_config, quantizer_config, vq_model_node

__all__ = ["ARC_WEIGHT_MODES", "CodebookConversion", "ConversionReport", "LayoutSummary", "TensorCounts",
           "VerificationChecks", "convert_checkpoint", "default_side_paths", "format_report"]

ARC_WEIGHT_MODES = ("clock", "restart")
MAX_RESTART_EXPONENT = 700.0  # exp(700) is finite in float64; beyond, arc_gamma would overflow
WEAK_ARC_WEIGHT = 1e-3


@dataclasses.dataclass
class LayoutSummary:
    """The recognised architecture, as the report states it.

    Attributes:
        name: the known layout the keys and shapes match (e.g. ``"vq-f8-n256"``).
        family: ``"taming"`` or ``"ldm"``: which model classes the yaml targets.
        full_ldm: the input is a whole LatentDiffusion checkpoint (``first_stage_model.*``).
        first_stage_only: only the first stage of a full LDM was written.
        prefix: the key prefix of the VQ model inside the input (``""`` or ``"first_stage_model."``).
        n_embed, embed_dim: codebook size and code dimension.
        ddconfig: the encoder / decoder settings read from the shapes.
        target: the model class of the written yaml.
        notes: remarks on how the layout was recognised.
    """

    name: str
    family: str
    full_ldm: bool
    first_stage_only: bool
    prefix: str
    n_embed: int
    embed_dim: int
    ddconfig: dict[str, Any]
    target: str
    notes: list[str]


@dataclasses.dataclass
class CodebookConversion:
    """How the codebook and the shared clock were set (see the module docstring).

    Attributes:
        codebook_mode: ``"keep"`` or ``"unit-ball"``.
        bbnr_alpha: alpha of the norm bound R(t) = exp(alpha t).
        clock_start: t0, the clock the converted quantiser starts at.
        radius_at_start: R(t0).
        max_norm_after: the largest code norm of the written codebook.
        codes_rescaled: codes the conversion changed (``unit-ball`` shortens codes longer than 1).
        arc_weight_mode: ``"clock"`` or ``"restart"``.
        arc_gamma_requested: the ArcLoss weight gamma0 asked for.
        arc_gamma_written: the ``arc_gamma`` the yaml holds (differs from the request under ``restart``).
        arc_gamma_decay: delta of lambda(t) = arc_gamma exp(-delta t).
        arc_weight_at_start: lambda(t0), the ArcLoss weight of the first fine-tuning step.
    """

    codebook_mode: str
    bbnr_alpha: float
    clock_start: int
    radius_at_start: float
    max_norm_after: float
    codes_rescaled: int
    arc_weight_mode: str
    arc_gamma_requested: float
    arc_gamma_written: float
    arc_gamma_decay: float
    arc_weight_at_start: float


@dataclasses.dataclass
class TensorCounts:
    """What happened to the input's tensors.

    Attributes:
        dropped: tensors left out (``loss.*`` with ``drop_loss``, everything but the first stage
            with ``first_stage_only``).
        dropped_loss: whether ``loss.*`` tensors were dropped.
        copied_bit_for_bit: tensors written unchanged (checked after reloading the written file).
    """

    dropped: int
    dropped_loss: bool
    copied_bit_for_bit: int


@dataclasses.dataclass
class VerificationChecks:
    """The checks made on the written files before they were published (each one must pass).

    Attributes:
        reloaded_weights_only: the written checkpoint reloads with ``weights_only=True``.
        model_class: the model class the yaml builds, with the written weights loaded strictly.
        clock: the built quantiser's clock (equals t0).
        codebook_inside_bound: the norm bound at t0 leaves the codebook unchanged.
        decodes_finite: the built model decodes probe images to finite values.
    """

    reloaded_weights_only: bool
    model_class: str
    clock: int
    codebook_inside_bound: bool
    decodes_finite: bool


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert_checkpoint` did; written as JSON (:meth:`to_dict`) beside the outputs.

    Attributes:
        input, output, config: the input checkpoint, the converted checkpoint and its yaml.
        input_loaded_with_weights_only: False when the input was read with ``--trust-checkpoint``.
        input_unsafe_globals: what the input pickles besides tensors (empty when read tensors-only).
        layout: the recognised architecture.
        codebook: the input codebook's statistics (:func:`arcvq_plugin.convert.codebook_statistics`).
        conversion: how the codebook and the clock were set.
        tensors: tensors dropped and copied.
        verified: the checks made on the written files.
        images: the token / PSNR comparison on an image folder
            (:func:`arcvq_plugin.convert.image_check.compare_on_images`), None without ``images``.
        warnings: what the user should know about the converted model.
    """

    input: str
    output: str
    config: str
    input_loaded_with_weights_only: bool
    input_unsafe_globals: tuple[str, ...]
    layout: LayoutSummary
    codebook: dict[str, Any]
    conversion: CodebookConversion
    tensors: TensorCounts
    verified: VerificationChecks
    images: Optional[dict[str, Any]]
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data, fields in declaration order (the JSON file's content)."""
        return dataclasses.asdict(self)


def default_side_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(yaml, report json) beside ``output``: ``x.ckpt`` -> ``x.yaml``, ``x.convert.json``."""
    output = Path(output)
    return output.with_suffix(".yaml"), output.with_suffix(".convert.json")


def _validate(codebook: str, arc_weight: str, family: str, bbnr_alpha: float, arc_gamma: float,
              arc_gamma_decay: float, near_duplicate_cosine: Optional[float], max_images: int) -> None:
    check_choice("codebook", codebook, CODEBOOK_MODES)
    check_choice("arc_weight", arc_weight, ARC_WEIGHT_MODES)
    check_choice("family", family, FAMILIES)
    for name, value in [("bbnr_alpha", bbnr_alpha), ("arc_gamma", arc_gamma), ("arc_gamma_decay", arc_gamma_decay)]:
        check_real(name, value, minimum=0.0)
    if near_duplicate_cosine is not None:
        check_real("near_duplicate_cosine", near_duplicate_cosine, minimum=-1.0, exclusive=True, maximum=1.0)
    check_int("max_images", max_images, minimum=1)


def _refuse_same_file(source: Path, outputs: list[Path]) -> None:
    if len({p.resolve() for p in outputs}) != len(outputs):
        raise ConversionError(f"output paths must differ, got {[str(p) for p in outputs]}")
    for out in outputs:
        if out.resolve() == source.resolve() or (out.exists() and os.path.samefile(out, source)):
            raise ConversionError(f"{str(out)!r} is the input checkpoint; converting in place is refused")


def _arc_gamma_for(arc_weight: str, arc_gamma: float, decay: float, t0: int) -> float:
    if arc_weight == "clock" or t0 == 0:
        return arc_gamma
    if decay * t0 > MAX_RESTART_EXPONENT:
        raise ConversionError(
            f"arc_weight='restart' needs arc_gamma * exp(arc_gamma_decay * t0) = exp({decay * t0:.0f}), which "
            "overflows; lower --arc-gamma-decay or use --codebook unit-ball (t0 = 0)"
        )
    return arc_gamma * math.exp(decay * t0)


def _quantizer_entries(qcfg: dict[str, Any], codebook: torch.Tensor, t0: int) -> dict[str, torch.Tensor]:
    """The ArcQuantizer's state-dict entries: a fresh instance's, with codebook and clock filled in."""
    template = dict(instantiate_from_config(qcfg).state_dict())
    missing = {"embedding.weight", "clock"} - set(template)
    if missing:
        raise ConversionError(f"{qcfg['target']} has no state-dict entries {sorted(missing)}; cannot carry the codebook")
    template.update({"embedding.weight": codebook, "clock": torch.full_like(template["clock"], t0)})
    return template


def _converted_state_dict(source: dict[str, torch.Tensor], layout: VQLayout, quantizer: dict[str, torch.Tensor], *,
                          drop_loss: bool, first_stage_only: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """New state dict (file order kept, quantiser entries where the codebook was) and the dropped keys."""
    prefix, out, dropped = layout.prefix, {}, []
    for key, tensor in source.items():
        if first_stage_only and not key.startswith(prefix):
            dropped.append(key)
            continue
        if drop_loss and key.startswith(prefix + "loss."):
            dropped.append(key)
            continue
        name = key[len(prefix):] if first_stage_only else key
        head = "" if first_stage_only else prefix
        if key == layout.codebook_key:
            out.update({head + "quantize." + k: v for k, v in quantizer.items()})
        elif key.startswith(prefix + "quantize."):
            raise ConversionError(f"unexpected quantiser entry {key!r}; only quantize.embedding.weight is supported")
        else:
            out[name] = tensor
    return out, dropped


def _vq_part(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _check_copied(source: dict[str, torch.Tensor], written: dict[str, torch.Tensor], layout: VQLayout,
                  first_stage_only: bool) -> int:
    """Every non-quantiser tensor of ``written`` equals its source tensor bit for bit (same dtype); count."""
    copied = 0
    for name, tensor in written.items():
        source_key = layout.prefix + name if first_stage_only else name
        if source_key.startswith(layout.prefix + "quantize."):
            continue
        original = source[source_key]
        if original.dtype != tensor.dtype or not torch.equal(original, tensor):
            raise ConversionError(f"verification failed: {name!r} differs from the input after conversion")
        copied += 1
    return copied


def _probe_images(layout: VQLayout) -> torch.Tensor:
    size = max(32, 2 * layout.downsampling_factor)
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, layout.ddconfig["in_channels"], size, size, generator=generator) * 2 - 1


def _recognise_layout(source: SourceCheckpoint, *, resolution: int, family: str, first_stage_only: bool,
                      images: Optional[str | os.PathLike], image_size: int) -> VQLayout:
    """The input's layout; ConversionError / ValueError when the options do not fit it."""
    layout = detect_layout(source.state_dict, resolution=resolution, family=family)
    if first_stage_only and not layout.is_full_ldm:
        raise ConversionError("first_stage_only applies to full LatentDiffusion checkpoints (first_stage_model.*) only")
    if images is not None and layout.ddconfig["in_channels"] != 3:
        raise ValueError(f"images: the model takes {layout.ddconfig['in_channels']} input channels, not RGB")
    if images is not None and image_size % layout.downsampling_factor:
        raise ValueError(f"image_size must be a multiple of the downsampling factor {layout.downsampling_factor}, "
                         f"got {image_size}")
    return layout


def _convert_codebook(raw_codebook: torch.Tensor, *, codebook: str, bbnr_alpha: float, arc_weight: str,
                      arc_gamma: float, arc_gamma_decay: float) -> tuple[torch.Tensor, CodebookConversion]:
    """The codebook to write and the clock and ArcLoss settings that go with it."""
    if codebook == "keep":
        t0, new_codebook = clock_start(raw_codebook, bbnr_alpha), raw_codebook
    else:
        t0, new_codebook = 0, clip_to_unit_ball(raw_codebook)
    gamma = _arc_gamma_for(arc_weight, arc_gamma, arc_gamma_decay, t0)
    clock = torch.tensor(t0, dtype=torch.int64)
    return new_codebook, CodebookConversion(
        codebook_mode=codebook, bbnr_alpha=bbnr_alpha, clock_start=t0,
        radius_at_start=float(radius_at(bbnr_alpha, clock)),
        max_norm_after=float(row_norms(new_codebook).max()),
        codes_rescaled=int((new_codebook != raw_codebook).any(dim=1).sum()),
        arc_weight_mode=arc_weight, arc_gamma_requested=arc_gamma, arc_gamma_written=gamma,
        arc_gamma_decay=arc_gamma_decay, arc_weight_at_start=float(arc_weight_at(gamma, arc_gamma_decay, clock)),
    )


def _layout_summary(layout: VQLayout, config: dict[str, Any], first_stage_only: bool) -> LayoutSummary:
    """The report's view of ``layout``, with the model class ``config`` builds."""
    return LayoutSummary(name=layout.name, family=layout.family, full_ldm=layout.is_full_ldm,
                         first_stage_only=first_stage_only, prefix=layout.prefix, n_embed=layout.n_embed,
                         embed_dim=layout.embed_dim, ddconfig=layout.ddconfig, target=vq_model_node(config)["target"],
                         notes=layout.notes)


def _yaml_text(config: dict[str, Any], source_path: Path, layout: VQLayout, codebook: str, t0: int,
               in_place_ldm: bool) -> str:
    """The yaml written beside the converted checkpoint: a header saying where it comes from, then ``config``."""
    header = (f"# written by arcvq-convert from {source_path.resolve()}\n# layout {layout.name} ({layout.family}), "
              f"codebook {codebook}, clock starts at {t0}\n")
    if in_place_ldm:
        header += "# an override: merge after your LDM config (--base ldm.yaml this.yaml)\n"
    return header + OmegaConf.to_yaml(OmegaConf.create(config))


def _warnings(stats: dict[str, Any], conversion: CodebookConversion) -> list[str]:
    """What the user should know about the converted model (a weak ArcLoss, changed or degenerate codes)."""
    warnings = []
    if conversion.arc_weight_at_start < WEAK_ARC_WEIGHT * max(conversion.arc_gamma_requested, 1e-30):
        warnings.append(
            f"the clock starts at t0={conversion.clock_start}, so the ArcLoss weight lambda(t0)="
            f"{conversion.arc_weight_at_start:.3g} is effectively off; --arc-weight restart gives it back its "
            "full value (the norm bound still grows from R(t0))"
        )
    if conversion.codebook_mode == "unit-ball" and stats["norm"]["n_above_1"]:
        warnings.append(
            f"{stats['norm']['n_above_1']} codes were shortened onto the unit ball: the decoder now receives "
            "vectors it was not trained on, so reconstructions change until the model is fine-tuned"
        )
    if stats["norm"]["n_degenerate"]:
        warnings.append(f"{stats['norm']['n_degenerate']} codes have (near) zero norm: no direction, cosine selection "
                     "never picks them meaningfully")
    near = stats["near_duplicates"]
    if near is not None and near["pairs"]:
        warnings.append(f"{near['pairs']} code pairs have cosine > {near['cosine_threshold']}: under cosine selection "
                     "such codes split almost the same directions whatever their norms (of exactly parallel codes "
                     "only one is ever selected)")
    return warnings


def convert_checkpoint(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    config_path: Optional[str | os.PathLike] = None,
    report_path: Optional[str | os.PathLike] = None,
    codebook: str = "keep",
    bbnr_alpha: float = 1e-5,
    arc_gamma: float = 1.0,
    arc_gamma_decay: float = 1e-4,
    arc_weight: str = "clock",
    family: str = "auto",
    resolution: int = 256,
    drop_loss: bool = False,
    first_stage_only: bool = False,
    images: Optional[str | os.PathLike] = None,
    image_size: int = 256,
    max_images: int = 8,
    near_duplicate_cosine: Optional[float] = 0.99,
    force: bool = False,
    trust_checkpoint: bool = False,
    log: Callable[[str], None] = print,
) -> ConversionReport:
    """Convert a taming / LDM VQ checkpoint to ArcVQ; write checkpoint, yaml and JSON report.

    Steps: read the input (tensors only unless ``trust_checkpoint``), recognise its layout,
    convert the codebook and set the clock, build the new state dict and yaml, write them to
    temporary files, verify them as a user would load them (reload tensors-only, build the yaml's
    model, decode), compare on ``images``, and publish checkpoint, yaml and report together.

    Args:
        input_path: taming VQModel, ldm first-stage VQModel or full LatentDiffusion checkpoint.
        output_path: the converted checkpoint (``{"state_dict": ..., "arcvq_convert": {...}}``).
        config_path, report_path: default ``default_side_paths(output_path)``.
        codebook: "keep" (default; clock starts at t0 with R(t0) >= max norm) or "unit-ball".
        bbnr_alpha: alpha of R(t) = exp(alpha t), >= 0 (default 1e-5, the paper's ImageNet value).
        arc_gamma, arc_gamma_decay: gamma0 >= 0 (default 1) and delta >= 0 (default 1e-4, ImageNet).
        arc_weight: "clock" (default: lambda(t0) as the shared clock says) or "restart"
            (lambda(t0) = arc_gamma; see module doc).
        family: "auto" (default), "taming" or "ldm": which model classes the yaml targets.
        resolution: training image size, places attention levels (default 256).
        drop_loss: drop ``loss.*`` tensors (LPIPS, discriminator) (default False: kept).
        first_stage_only: for a full LDM checkpoint, write only the first stage, as a standalone
            ``arcvq_plugin.ldm.VQModel`` checkpoint (default False: the whole LDM, converted in place).
        images: folder of images for the token-change / PSNR comparison (default None: skipped).
        image_size: side of the centre crops used from ``images`` (default 256); must be a multiple
            of the downsampling factor.
        max_images: at most this many images from the folder (default 8).
        near_duplicate_cosine: cosine above which two codes count as near-duplicates (default 0.99;
            None skips that K x K scan).
        force: replace existing output files (default False: refuse).
        trust_checkpoint: allow ``weights_only=False`` when the safe load refuses the input.
        log: receives progress and the printed report (default ``print``).

    Returns:
        The report (also written as JSON to ``report_path``).

    Raises:
        ValueError: an option out of range. ConversionError: input unsupported or unreadable,
        outputs exist without ``force``, verification failed (nothing is written then).
    """
    _validate(codebook, arc_weight, family, bbnr_alpha, arc_gamma, arc_gamma_decay, near_duplicate_cosine, max_images)
    source_path, output_path = Path(input_path), Path(output_path)
    default_yaml, default_report = default_side_paths(output_path)
    config_path = Path(config_path) if config_path is not None else default_yaml
    report_path = Path(report_path) if report_path is not None else default_report
    _refuse_same_file(source_path, [output_path, config_path, report_path])
    outputs = AtomicOutputs({"ckpt": output_path, "yaml": config_path, "report": report_path}, force=force)

    source = read_source_checkpoint(source_path, trust_checkpoint=trust_checkpoint)
    if not source.weights_only:
        log(f"note: {source_path} was loaded with weights_only=False (--trust-checkpoint) because it pickles "
            f"{', '.join(source.unsafe_globals) or 'non-tensor objects'}; the output holds tensors and plain data only")
    layout = _recognise_layout(source, resolution=resolution, family=family, first_stage_only=first_stage_only,
                               images=images, image_size=image_size)
    in_place_ldm = layout.is_full_ldm and not first_stage_only
    raw_codebook = source.state_dict[layout.codebook_key]
    check_codebook_norms(raw_codebook, layout.codebook_key)
    check_finite(source.state_dict, source_path)
    batch = None
    if images is not None:
        log(f"reading up to {max_images} images of {images} ...")
        batch = load_image_folder(images, size=image_size, max_images=max_images)
    stats = codebook_statistics(raw_codebook, near_duplicate_cosine=near_duplicate_cosine)
    new_codebook, conversion = _convert_codebook(raw_codebook, codebook=codebook, bbnr_alpha=bbnr_alpha,
                                                 arc_weight=arc_weight, arc_gamma=arc_gamma,
                                                 arc_gamma_decay=arc_gamma_decay)
    t0 = conversion.clock_start
    qcfg = quantizer_config(layout, bbnr_alpha=bbnr_alpha, arc_gamma=conversion.arc_gamma_written,
                            arc_gamma_decay=arc_gamma_decay)
    new_sd, dropped = _converted_state_dict(source.state_dict, layout, _quantizer_entries(qcfg, new_codebook, t0),
                                            drop_loss=drop_loss, first_stage_only=first_stage_only)
    config = model_config(layout, qcfg, ckpt_path=str(output_path.resolve()), in_place_ldm=in_place_ldm)
    source_step = source.top_level.get("global_step")
    metadata = {"source": str(source_path.resolve()), "layout": layout.name, "family": layout.family,
                "codebook_mode": codebook, "clock_start": t0, "bbnr_alpha": bbnr_alpha,
                "source_global_step": source_step if isinstance(source_step, int) else None}

    with outputs:
        save_torch({"state_dict": new_sd, "arcvq_convert": metadata}, outputs.temp["ckpt"])
        outputs.temp["yaml"].write_text(_yaml_text(config, source_path, layout, codebook, t0, in_place_ldm))
        verified, copied, converted = _verify(outputs.temp["ckpt"], outputs.temp["yaml"], source.state_dict, layout,
                                              first_stage_only, in_place_ldm, t0, bbnr_alpha)
        comparison = None
        if batch is not None:
            log(f"comparing reconstructions on {len(batch)} images ...")
            original = build_vq_model(vq_model_node(config), _vq_part(source.state_dict, layout.prefix), arcvq=False)
            comparison = compare_on_images(original, converted, batch)
        report = ConversionReport(
            input=str(source_path), output=str(output_path), config=str(config_path),
            input_loaded_with_weights_only=source.weights_only, input_unsafe_globals=source.unsafe_globals,
            layout=_layout_summary(layout, config, first_stage_only), codebook=stats, conversion=conversion,
            tensors=TensorCounts(dropped=len(dropped), dropped_loss=drop_loss, copied_bit_for_bit=copied),
            verified=verified, images=comparison, warnings=_warnings(stats, conversion),
        )
        outputs.temp["report"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        outputs.publish()
    log(format_report(report))
    return report


def _verify(ckpt: Path, yaml_path: Path, source: dict[str, torch.Tensor], layout: VQLayout, first_stage_only: bool,
            in_place_ldm: bool, t0: int, alpha: float) -> tuple[VerificationChecks, int, torch.nn.Module]:
    """Reload the written files as a user would, build the model, decode; raise ConversionError on any failure.

    Returns the checks made, the number of tensors copied bit for bit and the converted VQ model (eval mode).
    """
    reloaded = read_source_checkpoint(ckpt, trust_checkpoint=False).state_dict
    copied = _check_copied(source, reloaded, layout, first_stage_only)
    node = vq_model_node(OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=True))
    model = build_vq_model(node, _vq_part(reloaded, layout.prefix if in_place_ldm else ""))
    if int(model.quantize.clock) != t0:
        raise ConversionError(f"verification failed: clock {int(model.quantize.clock)} != {t0}")
    inside = is_inside_bound(model.quantize.embedding.weight, t0, alpha)
    if not inside:
        raise ConversionError("verification failed: codebook rows exceed R(t0); the first step would clip them")
    decoded, _ = reconstruct(model, _probe_images(layout))
    if not bool(torch.isfinite(decoded).all()):
        raise ConversionError("verification failed: the converted model decodes to non-finite values")
    checks = VerificationChecks(reloaded_weights_only=True, model_class=node["target"], clock=t0,
                                codebook_inside_bound=inside, decodes_finite=True)
    return checks, copied, model


def format_report(report: ConversionReport) -> str:
    """The report as a few human-readable lines."""
    layout, stats, conversion = report.layout, report.codebook, report.conversion
    norm, near = stats["norm"], stats["near_duplicates"]
    lines = [
        f"converted {report.input} -> {report.output} (+ {report.config})",
        f"layout: {layout.name} ({layout.family}{', full LDM' if layout.full_ldm else ''}), "
        f"codebook {layout.n_embed} x {layout.embed_dim}, model class {layout.target}",
        f"codebook norms: min {norm['min']:.4g}  median {norm['median']:.4g}  mean {norm['mean']:.4g}  "
        f"max {norm['max']:.4g}  (>1: {norm['n_above_1']}, ~0: {norm['n_degenerate']})",
        f"duplicates: {stats['exact_duplicates']} exact; " + (
            "near-duplicates not scanned" if near is None else
            f"{near['pairs']} pairs with cosine > {near['cosine_threshold']} ({near['codes_involved']} codes)"),
        f"codebook {conversion.codebook_mode}: clock starts at t0={conversion.clock_start}, "
        f"R(t0)={conversion.radius_at_start:.4g}, lambda(t0)={conversion.arc_weight_at_start:.4g} "
        f"(arc weight: {conversion.arc_weight_mode})",
        f"tensors: {report.tensors.copied_bit_for_bit} copied bit for bit, {report.tensors.dropped} dropped; "
        "reloaded with weights_only=True, built, decoded finite: ok",
    ]
    if report.images is not None:
        img = report.images
        lines.append(
            f"images: {img['images']}, tokens changing code L2 -> cosine: {img['tokens_changed']}/{img['tokens']} "
            f"({100 * img['fraction_changed']:.2f}%), PSNR {img['psnr_before']:.2f} -> {img['psnr_after']:.2f} dB"
            f"{' (bit-identical)' if img['identical'] else ''}"
        )
    lines += [f"note: {n}" for n in layout.notes]
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)
