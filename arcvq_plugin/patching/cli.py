"""``arcvq-patch {check,apply,revert} PATH [--force] [--patches DIR]``.

Exit status: 0 done (or nothing to do), 1 refused (the message says why; also a clone that cannot
be written, or a write that failed and was rolled back), 2 bad usage or PATH is not a supported clone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .operations import PatchRefused, apply_series, check_clone, revert_series
from .series import find_series, load_all_series

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-patch",
        description="Patch a clone of CompVis/taming-transformers (3ba01b2) or CompVis/latent-diffusion "
                    "(a506df5) for torch 2.x / pytorch-lightning 2.x and ArcVQ quantizer_config.")
    parser.add_argument("command", choices=("check", "apply", "revert"),
                        help="check: report what apply would do; apply: all patches or none; "
                             "revert: restore the patched files byte for byte")
    parser.add_argument("path", type=Path, help="the clone's root folder")
    parser.add_argument("--force", action="store_true",
                        help="apply despite uncommitted changes or an unknown commit (only if every "
                             "patch still applies); revert despite edits made after apply")
    parser.add_argument("--patches", type=Path, default=None,
                        help="folder holding the series folders (default: patches/ of this source tree)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    clone = args.path
    if not clone.is_dir():
        print(f"arcvq-patch: {clone} is not a folder", file=sys.stderr)
        return 2
    try:
        series = find_series(clone, load_all_series(args.patches))
    except ValueError as err:
        print(f"arcvq-patch: {err}", file=sys.stderr)
        return 2
    try:
        if args.command == "check":
            state, reasons = check_clone(clone, series)
            print("\n".join(state.describe()))
            if state.patched:
                print("patched: `apply` is a no-op" + ("; `revert` restores the originals"
                                                       if state.record is not None else ""))
                return 0
            if reasons:
                print("apply would refuse: " + "; ".join(reasons), file=sys.stderr)
                return 1
            print(f"apply would patch {', '.join(series.paths)}")
            return 0
        action = apply_series if args.command == "apply" else revert_series
        print(action(clone, series, force=args.force))
        return 0
    except PatchRefused as err:
        print(f"arcvq-patch: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"arcvq-patch: writing into {clone} failed ({err}); every file was restored and nothing "
              "was changed", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
