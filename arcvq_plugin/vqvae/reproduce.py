"""``arcvq-reproduce``: the paper's VQ-VAE quantiser ablation at a CPU budget, end to end.

For every seed and row (vq, cosine, bbnr, arcvq) it loads ``configs/vqvae/<dataset>_<row>.yaml``
merged with ``configs/vqvae/reduced_budget.yaml`` and the command-line budget (``--epochs``,
``--batch-size``, ``--limit-train``/``--limit-test`` as dotlist overrides), trains the model with
Lightning (the config's callbacks, e.g. NormBoundCallback, included), reconstructs the test split
and evaluates it with ``arcvq_plugin.evaluation`` (PSNR/SSIM always; LPIPS and rFID on request,
they are slow on a CPU and need their weights). It prints the paper's table and writes to ``--out``:

    results.json                 settings, machine, every seed's metrics, the seed means
    table.md                     the printed table, with the paper's numbers
    reconstructions.png          test images and each row's reconstruction (first seed)
    codebook_{usage,norms,distances}_<row>.png
                                 codebook figures of each row (first seed): usage histogram, norm
                                 histogram, pairwise-distance heatmap (the paper's Figures 2 and 3)
    checkpoints/<row>_seed<seed>.ckpt   {"state_dict", "config"}

Defaults are the main job (embedded MNIST, 1 epoch, batch 256, seed 1: a few minutes on 2 CPU
cores). Issue 8's benchmark: ``--epochs 3 --seeds 1 2``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from arcvq_plugin.atomic_outputs import OutputError, check_output_path
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.vqvae.figures import CodebookSnapshot, save_codebook_figures, save_reconstruction_grid
from arcvq_plugin.vqvae.model import VQVAE
from arcvq_plugin.vqvae.report import ROW_LABELS, format_table, mean_metrics

__all__ = ["build_parser", "default_config_dir", "evaluate_model", "main", "row_config", "train_row", "validate_args"]

ROWS = tuple(ROW_LABELS)
DATASETS = ("mnist", "cifar10")
N_GRID_IMAGES = 16


def default_config_dir() -> Path:
    """``configs/vqvae`` of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "vqvae"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), got {text}")
    return value


def validate_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the ``--config-dir`` / ``--out`` defaults and refuse, before any work (``parser.error``,
    exit 2), a config folder without the row configs, an ``--out`` inside it, or an ``--out``
    that cannot be written."""
    args.config_dir = args.config_dir or default_config_dir()
    args.out = args.out or Path("outputs") / f"vqvae_{args.dataset}"
    needed = [f"{args.dataset}_{row}.yaml" for row in args.rows] + ["reduced_budget.yaml"]
    missing = [name for name in needed if not (args.config_dir / name).is_file()]
    if missing:
        parser.error(f"--config-dir {args.config_dir} lacks {missing} (it must be the folder holding configs/vqvae/)")
    try:
        check_output_path(args.out, "--out", folder=True, inputs={"--config-dir": args.config_dir})
    except OutputError as err:
        parser.error(str(err))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-reproduce",
        description="Train and evaluate the VQ-VAE quantiser ablation (vanilla VQ, cosine only, "
                    "+ BBNR, ArcVQ) on embedded MNIST at a CPU budget; print the paper's table.")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="mnist (offline, default) or cifar10 (torchvision download)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="ablation rows (default: all four)")
    parser.add_argument("--seeds", nargs="+", type=_seed, default=[1], help="seeds, one training per seed and row (default: 1)")
    parser.add_argument("--epochs", type=_positive_int, default=1, help="training epochs per run (default 1; benchmark 3)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="training batch size (default 256)")
    parser.add_argument("--limit-train", type=_positive_int, default=None, help="train on the first N images only")
    parser.add_argument("--limit-test", type=_positive_int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--lpips", action="store_true", help="also compute LPIPS (VGG; slow on CPU, needs weights)")
    parser.add_argument("--fid", action="store_true", help="also compute rFID (Inception; slow on CPU, needs weights)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/vqvae_<dataset>)")
    parser.add_argument("--config-dir", type=Path, default=None, help="folder of the row configs (default: configs/vqvae)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out (overwrites an earlier run)")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bars")
    return parser


def row_config(config_dir: Path, dataset: str, row: str, epochs: int, batch_size: int,
               limit_train: Optional[int] = None, limit_test: Optional[int] = None) -> DictConfig:
    """The row's config, merged with reduced_budget.yaml and the budget given as dotlist overrides."""
    paths = [config_dir / f"{dataset}_{row}.yaml", config_dir / "reduced_budget.yaml"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"config {path} not found (pass --config-dir, the folder holding configs/vqvae/)")
    dotlist = [f"lightning.trainer.max_epochs={epochs}", f"data.params.batch_size={batch_size}"]
    if limit_train is not None:
        dotlist.append(f"data.params.train.params.limit={limit_train}")
    if limit_test is not None:
        dotlist += [f"data.params.{split}.params.limit={limit_test}" for split in ("validation", "test")]
    return load_configs([str(p) for p in paths], dotlist)


def train_row(config: DictConfig, seed: int, progress_bar: bool = True) -> tuple[VQVAE, float]:
    """Seed everything, build model, data and callbacks from ``config``, fit; (model, seconds).

    The learning rate is ``model.base_learning_rate`` unscaled (the paper's Adam 3e-4).
    """
    pl.seed_everything(seed, workers=True)
    model = instantiate_from_config(config.model)
    model.learning_rate = float(config.model.base_learning_rate)  # as arcvq-train --scale_lr false
    datamodule = instantiate_from_config(config.data)
    callbacks = [instantiate_from_config(c) for c in (config.get("lightning", {}).get("callbacks") or {}).values()]
    trainer = pl.Trainer(max_epochs=int(config.lightning.trainer.max_epochs), accelerator="auto", devices=1,
                         logger=False, enable_checkpointing=False, callbacks=callbacks, limit_val_batches=0,
                         num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=progress_bar)
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return model, time.perf_counter() - start


@torch.no_grad()
def evaluate_model(model: VQVAE, dataset: Dataset, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruct ``dataset`` in eval mode.

    Returns ``(real, fake, indices)``: real/fake (N, C, H, W) float in [0, 1] (``(x + 1) / 2``,
    clamped), indices (N * H/4 * W/4,) int64 selected codes.
    """
    model.eval()
    real, fake, indices = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = model.get_input(batch).to(model.device)
        z_q, _, (_, _, codes) = model.encode(x)
        x_rec = model.decode(z_q)
        real.append(((x + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        fake.append(((x_rec + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        indices.append(codes.reshape(-1).cpu())
    return torch.cat(real), torch.cat(fake), torch.cat(indices)


def machine_description() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pl.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    from arcvq_plugin.evaluation import codebook_metrics, reconstruction_metrics

    config_dir, out = args.config_dir, args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"arcvq-reproduce: {out} is not empty (an earlier run?); pass --force to overwrite "
              "its results or choose another --out", file=sys.stderr)
        return 2
    rows, seeds = list(dict.fromkeys(args.rows)), list(dict.fromkeys(args.seeds))
    configs = {row: row_config(config_dir, args.dataset, row, args.epochs, args.batch_size,
                               args.limit_train, args.limit_test) for row in rows}
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    test_set = instantiate_from_config(configs[rows[0]].data.params.test)

    results, unavailable, snapshots, grid = {}, {}, {}, None
    requested = {"psnr": True, "ssim": True, "lpips": args.lpips, "rfid": args.fid}
    for seed in seeds:
        for i, row in enumerate(rows):
            print(f"\n== [{args.dataset}] seed {seed}, row {i + 1}/{len(rows)}: {ROW_LABELS[row]} "
                  f"({args.epochs} epoch(s), batch {args.batch_size}) ==", flush=True)
            model, seconds = train_row(configs[row], seed, progress_bar=not args.no_progress_bar)
            real, fake, indices = evaluate_model(model, test_set)
            metrics = reconstruction_metrics(real, fake, lpips=args.lpips, fid=args.fid)
            reasons = metrics.pop("unavailable", None) or {}
            unavailable.update({name: why for name, why in reasons.items() if requested.get(name, True)})
            metrics.update(codebook_metrics(indices, model.n_embed))
            metrics["train_seconds"] = seconds
            results.setdefault(row, {"seeds": {}})["seeds"][seed] = metrics
            print(f"   PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
                  f"usage {100 * metrics['usage']:.1f}%, trained in {seconds:.0f} s", flush=True)
            torch.save({"state_dict": model.state_dict(), "config": OmegaConf.to_container(configs[row], resolve=True)},
                       out / "checkpoints" / f"{row}_seed{seed}.ckpt")
            if seed == seeds[0]:
                grid = real[:N_GRID_IMAGES] if grid is None else grid
                snapshots[row] = CodebookSnapshot(
                    label=ROW_LABELS[row], codebook=model.quantize.embedding.weight.detach().cpu(),
                    counts=torch.bincount(indices, minlength=model.n_embed), reconstructions=fake[:N_GRID_IMAGES],
                    radius=float(model.quantize.radius) if getattr(model.quantize, "use_bbnr", False) else None)
    for result in results.values():
        result["mean"] = mean_metrics(list(result["seeds"].values()))

    n_test = len(test_set)
    title = (f"{args.dataset}: {args.epochs} epoch(s), batch {args.batch_size}, seeds {seeds}, "
             f"{n_test} test images" + (f", first {args.limit_train} training images" if args.limit_train else ""))
    table = format_table(results, args.dataset, next(iter(snapshots.values())).counts.numel(), title)
    skipped = [name for name, flag in (("LPIPS", args.lpips), ("rFID", args.fid)) if not flag]
    if skipped:
        table += f"\n{' and '.join(skipped)} not computed (--lpips / --fid: slow on a CPU, need their weights).\n"
    if unavailable:
        table += "\nUnavailable metrics:\n" + "".join(f"- {name}: {why}\n" for name, why in unavailable.items())
    print("\n" + table)
    (out / "table.md").write_text(table)
    figures = {"reconstructions": str(save_reconstruction_grid(grid, snapshots, out / "reconstructions.png"))}
    figures.update({k: str(v) for k, v in save_codebook_figures(snapshots, out).items()})
    payload = {"command": ["arcvq-reproduce", *(sys.argv[1:] if argv is None else argv)],
               "settings": {"dataset": args.dataset, "rows": rows, "seeds": seeds, "epochs": args.epochs,
                            "batch_size": args.batch_size, "limit_train": args.limit_train,
                            "n_test_images": n_test, "lpips": args.lpips, "fid": args.fid},
               "machine": machine_description(), "rows": results, "unavailable": unavailable, "figures": figures}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and figures {', '.join(figures.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
