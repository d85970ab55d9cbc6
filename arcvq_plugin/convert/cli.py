"""``arcvq-convert IN OUT [options]``: command-line front end of :func:`convert_checkpoint`.

Exit status: 0 converted and verified; 2 bad options or an input / output that cannot be
converted (the message says why; nothing is written); 1 a write failed (a full disk, an I/O
error: nothing is written); 130 interrupted (nothing is written).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..checkpoint_loading import TRUST_CHECKPOINT_HELP
from .codebook import CODEBOOK_MODES
from .converter import ARC_WEIGHT_MODES, convert_checkpoint
from .layout import FAMILIES

__all__ = ["build_parser", "main"]

EPILOG = """\
codebook handling:
  keep       (default) the raw codebook; the clock starts at t0 = ceil(log(max norm) / alpha) so that
             R(t0) = exp(alpha t0) covers every code: the decoder sees the same vectors and the first
             norm-bound step moves nothing. The one clock also drives lambda(t) = gamma exp(-delta t):
             lambda(t0) can be ~0 (see --arc-weight). alpha = 0 with norms > 1 is refused.
  unit-ball  codes longer than 1 are scaled onto the unit sphere (BBNR at t = 0), clock t0 = 0:
             directions (so cosine selection) are unchanged, but the decoder receives shorter vectors
             than it was trained on: reconstructions change until fine-tuned (see --images).

Under cosine selection a latent may pick a different code than under L2: when all codes have the same
norm the two agree and the converted model (keep) reconstructs bit for bit like the original.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-convert", description="Convert a pretrained taming VQGAN / LDM VQ checkpoint to ArcVQ "
        "(ArcQuantizer), writing the checkpoint, its yaml and a codebook report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="taming VQModel, ldm first-stage VQModel or full LatentDiffusion checkpoint")
    parser.add_argument("output", help="converted checkpoint to write (never overwritten without --force)")
    parser.add_argument("--config", default=None, help="yaml to write (default: OUTPUT with suffix .yaml)")
    parser.add_argument("--report", default=None, help="JSON report to write (default: OUTPUT with suffix .convert.json)")
    parser.add_argument("--codebook", choices=CODEBOOK_MODES, default="keep", help="codebook handling (default keep)")
    parser.add_argument("--bbnr-alpha", type=float, default=1e-5,
                        help="alpha of R(t)=exp(alpha t), >= 0 (default 1e-5, the paper's ImageNet value)")
    parser.add_argument("--arc-gamma", type=float, default=1.0, help="ArcLoss weight gamma0 >= 0 (default 1.0)")
    parser.add_argument("--arc-gamma-decay", type=float, default=1e-4, help="ArcLoss weight decay delta >= 0 (default 1e-4)")
    parser.add_argument("--arc-weight", choices=ARC_WEIGHT_MODES, default="clock",
                        help="clock: lambda(t0)=gamma0*exp(-delta*t0) as the shared clock says (default); restart: "
                             "write gamma0*exp(delta*t0) as arc_gamma so lambda(t0)=gamma0 (an ArcLoss clock restarted now)")
    parser.add_argument("--family", choices=FAMILIES, default="auto",
                        help="model classes for the yaml: arcvq_plugin.taming or arcvq_plugin.ldm (default auto)")
    parser.add_argument("--resolution", type=int, default=256,
                        help="training image size; places attn_resolutions (default 256, all public models)")
    parser.add_argument("--drop-loss", action="store_true", help="drop loss.* tensors (LPIPS, discriminator)")
    parser.add_argument("--first-stage-only", action="store_true",
                        help="full LDM input: write only the first stage as a standalone ldm VQModel checkpoint")
    parser.add_argument("--images", default=None, help="image folder: token changes L2->cosine and PSNR before/after")
    parser.add_argument("--image-size", type=int, default=256, help="centre-crop size for --images (default 256)")
    parser.add_argument("--max-images", type=int, default=8, help="images used from --images (default 8)")
    parser.add_argument("--near-duplicate-cosine", type=float, default=0.99,
                        help="cosine above which two codes count as near-duplicates (default 0.99)")
    parser.add_argument("--skip-near-duplicates", action="store_true",
                        help="skip the K x K near-duplicate scan (seconds to minutes for K=16384 on a CPU)")
    parser.add_argument("--force", action="store_true", help="replace existing output files")
    parser.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: convert with the parsed options; the report is printed (and written as JSON);
    returns the exit status of the module docstring."""
    args = build_parser().parse_args(argv)
    try:
        convert_checkpoint(
            args.input, args.output, config_path=args.config, report_path=args.report, codebook=args.codebook,
            bbnr_alpha=args.bbnr_alpha, arc_gamma=args.arc_gamma, arc_gamma_decay=args.arc_gamma_decay,
            arc_weight=args.arc_weight, family=args.family, resolution=args.resolution, drop_loss=args.drop_loss,
            first_stage_only=args.first_stage_only, images=args.images, image_size=args.image_size,
            max_images=args.max_images, near_duplicate_cosine=None if args.skip_near_duplicates else args.near_duplicate_cosine, force=args.force,
            trust_checkpoint=args.trust_checkpoint)
    except ValueError as err:  # includes ConversionError, OutputError
        print(f"arcvq-convert: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"arcvq-convert: error: writing the outputs failed ({err}); nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("arcvq-convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
