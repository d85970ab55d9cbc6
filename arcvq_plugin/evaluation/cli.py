"""``arcvq-eval``: the paper's evaluation table for two image folders or a trained tokenizer.

    arcvq-eval folders REAL_DIR FAKE_DIR --json results.json
    arcvq-eval model --base config.yaml --ckpt model.ckpt --split test --json results.json [--set key=value ...]

Prints PSNR | SSIM | LPIPS | rFID (and codebook usage %, perplexity, dead codes for a model) as a
Markdown table and writes the full result as JSON. LPIPS and rFID are reported unavailable, with
the command that builds offline weights, when their weights are not cached.

Outputs are checked before any work (an existing file without ``--force``, a folder that cannot be
written, an output inside an input folder) and written atomically. Exit status: 0 done, 2 bad
input (the message says which and why; nothing is written), 1 a write failed (nothing is written).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from arcvq_plugin.cli_arguments import positive_int
from arcvq_plugin.atomic_outputs import AtomicOutputs, check_output_path
from arcvq_plugin.checkpoint_loading import TRUST_CHECKPOINT_HELP, load_checkpoint
from arcvq_plugin.evaluation.codebook import codebook_metrics
from arcvq_plugin.evaluation.folders import evaluate_folders, save_image_folder
from arcvq_plugin.evaluation.model_eval import (
    build_config,
    data_folders,
    find_codebook_size,
    load_model,
    reconstruct,
    split_loader,
)
from arcvq_plugin.evaluation.reconstruction import default_device, reconstruction_metrics
from arcvq_plugin.evaluation.table import format_table

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcvq-eval", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", type=Path, default=Path("arcvq_eval.json"), help="result file (default: arcvq_eval.json)")
    common.add_argument("--force", action="store_true", help="overwrite the --json file / saved images if they exist")
    common.add_argument("--name", default=None, help="row label in the printed table")
    common.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    common.add_argument("--no-fid", action="store_true", help="skip rFID")
    common.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    common.add_argument("--batch-size", type=positive_int, default=50, help="images per LPIPS/FID forward (default 50)")
    common.add_argument("--no-quantize", action="store_true", help="score the float images, without the 8-bit PNG rounding")
    common.add_argument("--ssim-win-size", type=int, default=11, help="SSIM window (odd, default 11 as the reference)")
    common.add_argument("--allow-download", action="store_true", help="let lpips/torch-fidelity download missing original weights")
    sub = parser.add_subparsers(dest="mode", required=True)

    folders = sub.add_parser("folders", parents=[common], help="compare two folders of images paired by file name")
    folders.add_argument("real", type=Path, help="folder of original images")
    folders.add_argument("fake", type=Path, help="folder of reconstructions (same file names)")

    model = sub.add_parser("model", parents=[common], help="reconstruct a dataset split with a trained model")
    model.add_argument("--base", nargs="*", default=[], help="config yaml(s), merged left to right (default: the checkpoint's own 'config')")
    model.add_argument("--ckpt", required=True, type=Path, help="checkpoint (Lightning .ckpt or a dict with 'state_dict')")
    model.add_argument("--split", default="test", choices=["train", "validation", "test"], help="dataset split (default test)")
    model.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    model.add_argument("--value-range", type=float, nargs=2, default=(-1.0, 1.0), metavar=("LOW", "HIGH"),
                       help="pixel range of the model's input/output (default -1 1, taming's)")
    model.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    model.add_argument("--keep-loss", action="store_true", help="build model.params.lossconfig too (default: replaced by nn.Identity)")
    model.add_argument("--save-images", type=Path, default=None, help="also write real/ and fake/ PNG folders here")
    model.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override, repeatable (e.g. --set data.params.batch_size=64)")
    return parser


def _metric_kwargs(args: argparse.Namespace) -> dict:
    return {
        "lpips": not args.no_lpips,
        "fid": not args.no_fid,
        "device": default_device(args.device),
        "batch_size": args.batch_size,
        "quantize": not args.no_quantize,
        "ssim_win_size": args.ssim_win_size,
        "allow_download": args.allow_download,
    }


def _evaluate_model(args: argparse.Namespace) -> dict:
    checkpoint = load_checkpoint(args.ckpt, args.trust_checkpoint).content
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{args.ckpt} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    config = build_config(args.base, checkpoint, args.overrides)
    inputs = {"--ckpt": args.ckpt, **{f"data folder {p}": p for p in data_folders(config)}}
    check_output_path(args.json, "--json", force=args.force, inputs=inputs)
    if args.save_images is not None:
        check_output_path(args.save_images, "--save-images", folder=True, inputs=inputs)
    model = load_model(config, checkpoint, keep_loss=args.keep_loss, source=f"checkpoint {args.ckpt}")
    device = default_device(args.device)
    real, fake, indices = reconstruct(
        model, split_loader(config, args.split), device=device, max_images=args.max_images, value_range=tuple(args.value_range)
    )
    if args.save_images is not None:
        save_image_folder(real, args.save_images / "real", overwrite=args.force)
        save_image_folder(fake, args.save_images / "fake", overwrite=args.force)
    result = reconstruction_metrics(real, fake, **_metric_kwargs(args))
    n_e = find_codebook_size(model)
    if indices is not None and n_e is not None:
        result["codebook"] = codebook_metrics(indices, n_e)
    else:
        result["unavailable"]["codebook"] = "the model returned no code indices (info[2]) or has no quantiser with n_e"
    result.update({"checkpoint": str(args.ckpt), "config": [str(p) for p in args.base], "split": args.split})
    return result


def _json_safe(value):
    """inf/nan (e.g. PSNR of identical images) as strings, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_json(path: Path, result: dict, force: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicOutputs({"json": path}, force=force) as files:
        files.temp["json"].write_text(json.dumps(_json_safe(result), indent=2, sort_keys=True) + "\n")
        files.publish()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point (``arcvq-eval``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode == "folders":
            check_output_path(args.json, "--json", force=args.force, inputs={"REAL": args.real, "FAKE": args.fake})
            result = evaluate_folders(args.real, args.fake, **_metric_kwargs(args))
            default_name = args.fake.name
        else:
            check_output_path(args.json, "--json", force=args.force, inputs={"--ckpt": args.ckpt})
            result = _evaluate_model(args)
            default_name = args.ckpt.stem
        print(format_table({args.name or default_name: result}))
        _write_json(args.json, result, args.force)
    except ValueError as err:  # includes OutputError, CheckpointReadError, CheckpointMismatch
        print(f"arcvq-eval: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"arcvq-eval: error: writing the results failed ({err}); nothing was written", file=sys.stderr)
        return 1
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
