"""DDIM sampling from a trained LatentDiffusion: an image grid and a folder of PNGs (for FID).

    arcvq-sample-ldm --config logs/<run>/configs/<stamp>-project.yaml --ckpt logs/<run>/checkpoints/last.ckpt \\
        --out samples/ --steps 250 --eta 1.0 --scale 1.4 --classes 0 1 2 --n_per_class 4

Writes ``<out>/grid.png`` (one row per class, for class-conditional models) and
``<out>/images/<index>_class<label>.png`` (every sample, the folder FID tools read). Existing
outputs are never overwritten without ``--force``, and the files appear only once all are written
(nothing half-written after an error or a full disk).

Guidance (ldm's convention): eps = eps(uncond) + scale * (eps(cond) - eps(uncond)); scale 1 is
plain conditional sampling (no unconditional pass); scale != 1 needs a model trained with an
``unconditional_class`` (``arcvq_plugin.ldm.LatentDiffusion``). The paper samples ImageNet with
250 DDIM steps; its figures use scale 1.4.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image

from arcvq_plugin.atomic_outputs import OutputError, StagedFolder, check_output_path
from arcvq_plugin.checkpoint_loading import TRUST_CHECKPOINT_HELP
from arcvq_plugin.validation import check_int, check_real

from .checkpoints import load_for_inference

__all__ = ["main", "sample_images", "save_samples"]


@torch.no_grad()
def sample_images(model: torch.nn.Module, *, class_labels: Optional[Sequence[int]] = None, num_samples: int = 0,
                  steps: int = 250, eta: float = 1.0, scale: float = 1.0, batch_size: int = 16,
                  quantize_denoised: bool = False, seed: int = 0) -> torch.Tensor:
    """Samples (N, C, H, W) in [0, 1], decoded by the model's first stage, with its EMA weights.

    Args:
        model: a trained :class:`arcvq_plugin.ldm.LatentDiffusion` in eval mode (its ``sample_log``
            runs ldm's DDIM sampler on the model's device).
        class_labels: one class id per sample for a class-conditional model (N = their count);
            must be None for an unconditional model, which draws ``num_samples``.
        steps: DDIM steps in [1, model.num_timesteps]. eta: DDIM noise, finite and >= 0 (0 deterministic).
        scale: classifier-free guidance scale, finite and > 0 (1 = no guidance).
        batch_size: samples per DDIM run (>= 1).
        quantize_denoised: snap each step's x0 prediction to the codebook (ldm's ``quantize_x0``).
        seed: seeds torch's generator before sampling.
    """
    from .diffusion import LatentDiffusion

    if not isinstance(model, LatentDiffusion):
        raise ValueError(f"model must be an arcvq_plugin.ldm.LatentDiffusion, got {type(model).__name__} "
                         "(load ldm configs with the override model.target=arcvq_plugin.ldm.LatentDiffusion)")
    conditional = getattr(model, "cond_stage_key", None) == "class_label" and model.cond_stage_model is not None
    check_int("steps", steps, minimum=1, maximum=model.num_timesteps)
    check_real("eta", eta, minimum=0.0)
    check_real("scale", scale, minimum=0.0, exclusive=True)
    check_int("batch_size", batch_size, minimum=1)
    if conditional:
        if not class_labels:
            raise ValueError("a class-conditional model needs class_labels (one per sample)")
        n_classes = model.cond_stage_model.embedding.num_embeddings
        bad = [c for c in class_labels if not 0 <= int(c) < n_classes]
        if bad:
            raise ValueError(f"class_labels must be in [0, {n_classes}), got {bad}")
        if scale != 1.0 and getattr(model, "unconditional_class", None) is None:
            raise ValueError("classifier-free guidance (scale != 1) needs a model trained with an "
                             "unconditional_class (arcvq_plugin.ldm.LatentDiffusion)")
        labels = torch.as_tensor([int(c) for c in class_labels], dtype=torch.long)
    else:
        if class_labels:
            raise ValueError("this model is not class-conditional: pass num_samples, not class_labels")
        if scale != 1.0:
            raise ValueError("classifier-free guidance (scale != 1) needs a class-conditional model")
        check_int("num_samples", num_samples, minimum=1)
        labels = None
    total = len(labels) if labels is not None else num_samples
    torch.manual_seed(seed)
    outputs = []
    with model.ema_scope():
        for start in range(0, total, batch_size):
            n = min(batch_size, total - start)
            cond = uncond = None
            if labels is not None:
                batch_labels = labels[start:start + n].to(model.device)
                cond = model.get_learned_conditioning({model.cond_stage_key: batch_labels})
                if scale != 1.0:
                    uncond = model.unconditional_conditioning(n)
            latents, _ = model.sample_log(cond, n, ddim=True, ddim_steps=steps, eta=eta,
                                          unconditional_guidance_scale=scale, unconditional_conditioning=uncond,
                                          quantize_denoised=quantize_denoised)
            images = model.decode_first_stage(latents)
            outputs.append(((images.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(outputs)


def save_samples(images: torch.Tensor, out_dir: str | Path, *, labels: Optional[Sequence[int]] = None,
                 nrow: int = 8, force: bool = False) -> tuple[Path, list[Path]]:
    """Write ``out_dir/grid.png`` (``nrow`` images per row) and ``out_dir/images/*.png``.

    ``images``: (N, C, H, W) in [0, 1]. Returns (grid path, image paths). OutputError when any
    output exists and ``force`` is False; the files appear only once all are written.
    """
    check_int("nrow", nrow, minimum=1)
    out_dir = Path(out_dir)
    names = ["images/" + f"{i:06d}" + (f"_class{int(labels[i])}" if labels is not None else "") + ".png"
             for i in range(len(images))]
    pixels = (images * 255).round().to(torch.uint8)
    with StagedFolder(out_dir, ["grid.png", *names], force=force, what="--out") as staged:
        grid = torchvision.utils.make_grid(pixels, nrow=nrow, padding=2)
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(staged.path("grid.png"), format="PNG")
        for name, image in zip(names, pixels.permute(0, 2, 3, 1).numpy()):
            Image.fromarray(np.ascontiguousarray(image.squeeze(-1) if image.shape[-1] == 1 else image)).save(
                staged.path(name), format="PNG")
        grid_path, *paths = staged.publish()
    return grid_path, paths


def _refuse_existing_outputs(out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    check_output_path(out_dir, "--out", folder=True)
    taken = (out_dir / "grid.png").exists() or any((out_dir / "images").glob("*.png"))
    if taken:
        raise OutputError(f"--out {str(out_dir)!r} already holds samples (grid.png or images/*.png); not "
                          "overwriting them (pass --force to replace)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcvq-sample-ldm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="+", required=True, help="the LDM's training config(s), merged in order")
    parser.add_argument("--ckpt", required=True, help="the LDM checkpoint (holds the first stage too)")
    parser.add_argument("--out", required=True, help="output folder (grid.png and images/)")
    parser.add_argument("--steps", type=int, default=250, help="DDIM steps (paper: 250)")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta (0: deterministic)")
    parser.add_argument("--scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    parser.add_argument("--classes", type=int, nargs="*", default=None,
                        help="class ids (class-conditional models; default: every class but the unconditional one)")
    parser.add_argument("--n_per_class", type=int, default=1, help="samples per class")
    parser.add_argument("--num_samples", type=int, default=16, help="samples of an unconditional model")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--quantize_denoised", action="store_true", help="snap x0 predictions to the codebook")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``arcvq-sample-ldm`` (see ``--help``); errors exit with their message."""
    args = _parser().parse_args(argv)
    try:
        for name in ("n_per_class", "steps", "batch_size", "num_samples"):
            check_int(f"--{name}", getattr(args, name), minimum=1)
        if args.force:
            check_output_path(args.out, "--out", folder=True)
        else:
            _refuse_existing_outputs(args.out)
        model = load_for_inference(args.config, args.ckpt, args.overrides, device=args.device,
                                   trust_checkpoint=args.trust_checkpoint)
        labels = None
        if getattr(model, "cond_stage_key", None) == "class_label":
            classes = args.classes
            if classes is None:
                n_classes = model.cond_stage_model.embedding.num_embeddings
                classes = [c for c in range(n_classes) if c != getattr(model, "unconditional_class", None)]
            labels = [c for c in classes for _ in range(args.n_per_class)]
        images = sample_images(model, class_labels=labels, num_samples=args.num_samples, steps=args.steps,
                               eta=args.eta, scale=args.scale, batch_size=args.batch_size,
                               quantize_denoised=args.quantize_denoised, seed=args.seed)
        nrow = args.n_per_class if labels is not None else max(1, int(len(images) ** 0.5))
        grid, paths = save_samples(images, args.out, labels=labels, nrow=nrow, force=args.force)
    except ValueError as err:  # includes OutputError, CheckpointReadError, CheckpointMismatch
        raise SystemExit(f"arcvq-sample-ldm: {err}") from err
    except OSError as err:
        raise SystemExit(f"arcvq-sample-ldm: writing the samples failed ({err}); nothing was written") from err
    print(f"wrote {grid} and {len(paths)} images to {Path(args.out) / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
