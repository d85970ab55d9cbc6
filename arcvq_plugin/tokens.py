"""Token grids: images through a trained VQ tokenizer to code indices (for PixelCNN / transformer
priors), and index grids back to images.

A tokenizer is any model with taming's/ldm's first-stage layout: ``encoder``, ``quant_conv``,
``quantize`` (VectorQuantizer2, ArcQuantizer), ``post_quant_conv``, ``decoder``
(``arcvq_plugin.taming.VQModel``, ``arcvq_plugin.ldm.VQModel``/``VQModelInterface``, upstream's);
a ``LatentDiffusion`` stands for its ``first_stage_model``.

    indices = encode_indices(tokenizer, images)      # (B, C, H, W) in [-1, 1] -> (B, h, w) int64
    images  = decode_indices(tokenizer, indices)     # (B, h, w) -> (B, C, H, W), ~[-1, 1]

``decode_indices(encode_indices(x))`` is the tokenizer's reconstruction of x (the decoder applied
to the selected codes).

Files: ``<name>.npy`` holds the grids, shape (N, h, w), in the smallest unsigned integer type
that holds the codebook (uint8 up to 256 codes, uint16 up to 65536, else int64); the JSON sidecar
``<name>.json`` records ``codebook_size`` (K: indices are in [0, K)), ``shape``, ``dtype``,
``format`` and where the tokens came from. Existing files are never overwritten unless
``force=True``; outputs are written atomically (a failure leaves no partial file), and images are
checked against the tokenizer (channels, a size it can take, finite pixels), token files against
their codebook, before anything is encoded, decoded or written.
"""
from __future__ import annotations

import argparse
import sys
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from arcvq_plugin.atomic_outputs import AtomicOutputs, StagedFolder, check_output_path
from arcvq_plugin.checkpoint_loading import TRUST_CHECKPOINT_HELP
from arcvq_plugin.inference import check_images
from arcvq_plugin.validation import check_int, check_optional_int

__all__ = [
    "TOKEN_FORMAT", "codebook_size", "decode_indices", "decode_to_folder", "encode_dataset",
    "encode_indices", "load_token_grids", "main", "save_token_grids", "sidecar_path", "tokenizer_of",
]

TOKEN_FORMAT = "arcvq-token-grids/1"
_TOKENIZER_PARTS = ("encoder", "quant_conv", "quantize", "post_quant_conv", "decoder")


def tokenizer_of(model: nn.Module) -> nn.Module:
    """``model`` itself, or its ``first_stage_model`` (a LatentDiffusion); ValueError if neither
    has the first-stage layout (encoder, quant_conv, quantize, post_quant_conv, decoder)."""
    candidate = getattr(model, "first_stage_model", model)
    missing = [name for name in _TOKENIZER_PARTS if not hasattr(candidate, name)]
    if missing:
        raise ValueError(f"{type(model).__name__} is not a VQ tokenizer: it lacks {missing}")
    return candidate


def codebook_size(tokenizer: nn.Module) -> int:
    """K, the number of distinct indices the tokenizer emits (``re_embed`` when ``remap`` is used)."""
    quantize = tokenizer_of(tokenizer).quantize
    return int(getattr(quantize, "re_embed", quantize.n_e))


@torch.no_grad()
def encode_indices(tokenizer: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Code indices (B, h, w) int64 of ``images`` (B, C, H, W) in [-1, 1]."""
    tokenizer = tokenizer_of(tokenizer)
    check_images(tokenizer, images)
    latent = tokenizer.quant_conv(tokenizer.encoder(images))
    _, _, (_, _, indices) = tokenizer.quantize(latent)
    return indices.reshape(latent.shape[0], latent.shape[2], latent.shape[3]).long()


@torch.no_grad()
def decode_indices(tokenizer: nn.Module, indices: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) (the decoder's range, ~[-1, 1]) of code indices (B, h, w) in [0, K)."""
    tokenizer = tokenizer_of(tokenizer)
    if indices.ndim != 3:
        raise ValueError(f"indices must be (B, h, w), got shape {tuple(indices.shape)}")
    size = codebook_size(tokenizer)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
        raise ValueError(f"indices must be in [0, {size}), got [{int(indices.min())}, {int(indices.max())}]")
    quantize = tokenizer.quantize
    device = next(tokenizer.parameters()).device
    quant = quantize.get_codebook_entry(indices.reshape(-1).long().to(device), (*indices.shape, quantize.e_dim))
    return tokenizer.decoder(tokenizer.post_quant_conv(quant))


def _images_of(batch: Any, image_key: str) -> torch.Tensor:
    images = batch[image_key] if isinstance(batch, Mapping) else batch
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[..., None]
    return images.permute(0, 3, 1, 2).float()  # taming's examples are (B, H, W, C)


def encode_dataset(tokenizer: nn.Module, dataset: Dataset, *, batch_size: int = 32, image_key: str = "image",
                   limit: Optional[int] = None) -> np.ndarray:
    """Index grids (N, h, w) of a dataset of taming-format examples ``{image_key: (H, W, C) in [-1, 1]}``.

    Args:
        batch_size: images per forward (>= 1).
        limit: encode only the first ``limit`` items (>= 1); None: all.
    Returns the grids in the dtype described in the module doc, in dataset order.
    """
    check_int("batch_size", batch_size, minimum=1)
    limit = check_optional_int("limit", limit, minimum=1)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    tokenizer = tokenizer_of(tokenizer).eval()
    device = next(tokenizer.parameters()).device
    grids = [encode_indices(tokenizer, _images_of(batch, image_key).to(device)).cpu()
             for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    if not grids:
        raise ValueError("the dataset is empty")
    return torch.cat(grids).numpy().astype(_index_dtype(codebook_size(tokenizer)))


def _index_dtype(size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def sidecar_path(npy_path: str | Path) -> Path:
    """``tokens.npy`` -> ``tokens.json``."""
    return Path(npy_path).with_suffix(".json")


def _check_grids(grids: np.ndarray, codebook_size: int, what: str) -> None:
    if grids.ndim != 3 or not np.issubdtype(grids.dtype, np.integer):
        raise ValueError(f"{what} must be an integer array (N, h, w), got {grids.dtype} {grids.shape}")
    if grids.size and (grids.min() < 0 or grids.max() >= codebook_size):
        raise ValueError(f"{what} must hold indices in [0, {codebook_size}) (the codebook size), got "
                         f"[{grids.min()}, {grids.max()}]")


def save_token_grids(path: str | Path, grids: np.ndarray, codebook_size: int,
                     source: Optional[Mapping[str, Any]] = None, force: bool = False) -> Path:
    """Write ``grids`` (N, h, w) to ``path`` (.npy) and the JSON sidecar, both or neither (atomic);
    returns the sidecar path. OutputError when either exists and ``force`` is False."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"path must end in .npy, got {str(path)!r}")
    grids = np.asarray(grids)
    _check_grids(grids, codebook_size, "grids")
    sidecar = sidecar_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": TOKEN_FORMAT, "codebook_size": int(codebook_size), "shape": list(grids.shape),
            "dtype": str(grids.dtype), "source": dict(source or {})}
    with AtomicOutputs({"npy": path, "json": sidecar}, force=force) as files:
        with open(files.temp["npy"], "wb") as handle:
            np.save(handle, grids)
        files.temp["json"].write_text(json.dumps(meta, indent=2) + "\n")
        files.publish()
    return sidecar


def load_token_grids(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(grids (N, h, w), metadata)`` written by :func:`save_token_grids`."""
    path = Path(path)
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        raise FileNotFoundError(f"{sidecar} (the codebook-size sidecar of {path}) is missing")
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError as err:
        raise ValueError(f"{sidecar} is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != TOKEN_FORMAT:
        raise ValueError(f"{sidecar} is not a {TOKEN_FORMAT} sidecar")
    try:
        grids = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"cannot read {path}: not a readable .npy file (truncated or corrupt?): {err}") from err
    if list(grids.shape) != meta["shape"]:
        raise ValueError(f"{path} has shape {grids.shape}, its sidecar says {meta['shape']}")
    _check_grids(grids, int(meta["codebook_size"]), str(path))
    return grids, meta


def decode_to_folder(tokenizer: nn.Module, grids: np.ndarray, out_dir: str | Path, *, batch_size: int = 32,
                     force: bool = False) -> list[Path]:
    """Decode grids (N, h, w) to ``out_dir/000000.png ...`` (RGB uint8); returns the written paths.

    Every index is checked against the tokenizer's codebook first; the images appear in
    ``out_dir`` only once all are written (:class:`arcvq_plugin.atomic_outputs.StagedFolder`).
    """
    check_int("batch_size", batch_size, minimum=1)
    grids = np.asarray(grids)
    tokenizer = tokenizer_of(tokenizer).eval()
    _check_grids(grids, codebook_size(tokenizer), "token grids")
    with StagedFolder(out_dir, [f"{i:06d}.png" for i in range(len(grids))], force=force,
                      what="--out folder") as staged:
        for start in range(0, len(grids), batch_size):
            batch = torch.from_numpy(grids[start:start + batch_size].astype(np.int64))
            images = decode_indices(tokenizer, batch)
            pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for offset, image in enumerate(pixels):
                Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
                    staged.path(f"{start + offset:06d}.png"), format="PNG")
        return staged.publish()


def _dataset_from_config(config_paths: Sequence[str], split: str, dotlist: Sequence[str]) -> Dataset:
    from arcvq_plugin.config import instantiate_from_config, load_configs

    config = load_configs(config_paths, dotlist)
    data_params = config.get("data", {}).get("params", {})
    if split not in data_params or data_params[split] is None:
        raise ValueError(f"the config has no data.params.{split} dataset; splits: "
                         f"{[k for k in ('train', 'validation', 'test') if data_params.get(k) is not None]}")
    return instantiate_from_config(data_params[split])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-tokens",
        description="Export a dataset's VQ token grids (.npy N x h x w + .json sidecar with the codebook "
                    "size) from a trained tokenizer, or decode token grids back to images.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("export", "dataset -> token grids"), ("decode", "token grids -> PNG folder")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", nargs="+", required=True,
                             help="the tokenizer's (or LDM's) training config(s), merged left to right")
        command.add_argument("--ckpt", required=True, help="its checkpoint (Lightning .ckpt or state dict)")
        command.add_argument("--batch_size", type=int, default=32)
        command.add_argument("--device", default="cpu")
        command.add_argument("--trust-checkpoint", action="store_true", help=TRUST_CHECKPOINT_HELP)
        command.add_argument("--force", action="store_true", help="overwrite existing outputs")
        command.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    export = sub.choices["export"]
    export.add_argument("--out", required=True, help="output .npy (the sidecar .json is written next to it)")
    export.add_argument("--split", default="validation", choices=("train", "validation", "test"),
                        help="dataset of the config's data.params to encode (default validation)")
    export.add_argument("--limit", type=int, default=None, help="encode only the first N items")
    export.add_argument("--image_key", default="image")
    decode = sub.choices["decode"]
    decode.add_argument("--tokens", required=True, help=".npy written by export")
    decode.add_argument("--out", required=True, help="folder for the decoded PNGs")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``arcvq-tokens export|decode ...`` (see ``--help``); errors exit with their message."""
    args = _parser().parse_args(argv)
    try:
        check_int("--batch_size", args.batch_size, minimum=1)
        if args.command == "export":
            check_optional_int("--limit", args.limit, minimum=1)
        return _run(args)
    except (FileNotFoundError, ValueError) as err:  # ValueError includes OutputError, CheckpointReadError
        raise SystemExit(f"arcvq-tokens: {err}") from err
    except OSError as err:
        raise SystemExit(f"arcvq-tokens: writing the output failed ({err}); nothing was written") from err


def _run(args: argparse.Namespace) -> int:
    from arcvq_plugin.ldm.checkpoints import load_for_inference

    inputs = {"--ckpt": args.ckpt, **{f"--config {p}": p for p in args.config}}
    if args.command == "export":
        if Path(args.out).suffix != ".npy":
            raise ValueError(f"--out must end in .npy, got {args.out!r}")
        for path in (Path(args.out), sidecar_path(args.out)):
            check_output_path(path, "--out", force=args.force, inputs=inputs)
        tokenizer = tokenizer_of(load_for_inference(args.config, args.ckpt, args.overrides, device=args.device,
                                                    trust_checkpoint=args.trust_checkpoint))
        dataset = _dataset_from_config(args.config, args.split, args.overrides)
        grids = encode_dataset(tokenizer, dataset, batch_size=args.batch_size, image_key=args.image_key,
                               limit=args.limit)
        source = {"config": [os.path.abspath(p) for p in args.config], "checkpoint": os.path.abspath(args.ckpt),
                  "split": args.split, "overrides": list(args.overrides)}
        sidecar = save_token_grids(args.out, grids, codebook_size(tokenizer), source=source, force=args.force)
        print(f"wrote {args.out} {grids.shape} {grids.dtype} and {sidecar} (codebook_size {codebook_size(tokenizer)})")
        return 0
    grids, meta = load_token_grids(args.tokens)
    check_output_path(args.out, "--out folder", force=args.force, folder=True,
                      names=[f"{i:06d}.png" for i in range(len(grids))], inputs={**inputs, "--tokens": args.tokens})
    tokenizer = tokenizer_of(load_for_inference(args.config, args.ckpt, args.overrides, device=args.device,
                                                    trust_checkpoint=args.trust_checkpoint))
    if meta["codebook_size"] != codebook_size(tokenizer):
        raise ValueError(f"{args.tokens} holds indices of a {meta['codebook_size']}-code codebook, "
                         f"the tokenizer has {codebook_size(tokenizer)}")
    paths = decode_to_folder(tokenizer, grids, args.out, batch_size=args.batch_size, force=args.force)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
