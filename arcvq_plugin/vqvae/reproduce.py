"""``arcvq-reproduce``: the paper's VQ-VAE quantiser ablation and its appendix tables, end to end.

For every seed and row it loads ``configs/vqvae/<dataset>_<row>.yaml`` merged with the budget
(``--budget reduced``: ``reduced_budget.yaml``; ``--budget paper``: the configs as they are) and
the command-line overrides (``--epochs``, ``--batch-size``, ``--max-steps``, ``--limit-train`` /
``--limit-test``, ``--sweep``, ``--schedule``), trains the model with Lightning (the config's
callbacks, e.g. NormBoundCallback, included) with the whole dataset as one uint8 tensor on the
device (``arcvq_plugin.data.device_batches``), reconstructs the test split in batches on the
device and evaluates it with ``arcvq_plugin.evaluation`` (PSNR/SSIM always; LPIPS and rFID on
request). Rows trained with the same seed share the initialisation seed and the data order, so
differences between rows are paired by seed (``statistics``).

Tables: without ``--sweep`` one table of the ``--rows`` (default vq, cosine, bbnr, arcvq; also
``arcvq_fixed_bound``, Appendix D.4; ``cvq``, the CVQ-VAE baseline of Table 1; ``arcvq_rotation``,
ArcVQ with the rotation trick; ``simvq``, ``ibq``, ``fsq``, baselines of ``arcvq_plugin.baselines``);
each ``--sweep key=v1,v2,...`` gives one table of the ``--rows`` (default arcvq) at each value.
Every table shows every seed, mean +- std per row, the reference row (ArcVQ-VAE, or the sweep's
default value) minus every other row with a 95% t-interval over seeds, and the paper's numbers.
Written to ``--out``:

    results.json                    settings, machine, every table (seeds, summaries, differences)
    table.md                        the printed tables
    reconstructions.png             test images and each row's reconstruction (first seed)
    figure2_code_norms<_table>.png  every row's code-norm histogram side by side (paper Figure 2)
    figure3_pairwise_distances<_table>.png   every row's distance matrix side by side (Figure 3)
    bound_clipping<_table>.png      fraction of codes the norm bound clipped at each step
    codebook_{usage,norms,distances}_<row>.png   per-row codebook figures (first seed)
    checkpoints/<row>_seed<seed>.{ckpt,yaml}     {"state_dict", "config"} and the merged config
                                    (``arcvq-tokens export --config <yaml> --ckpt <ckpt>`` reads them)
    clipping/<row>_seed<seed>.csv   per step: the fraction of codes the norm bound clipped (BBNR rows)

Defaults are the main job: embedded MNIST, the reduced budget, seed 1, the four rows, on the
device ``auto`` picks (CUDA when torch sees a GPU, else the CPU).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

from arcvq_plugin.cli_arguments import positive_int
from arcvq_plugin.atomic_outputs import OutputError, check_output_path, save_torch_atomic, write_text_atomic
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.devices import resolve_device
from arcvq_plugin.machine import load_average, machine_description
from arcvq_plugin.vqvae.budget import (BUDGETS, SCHEDULES, budget_config_paths, is_arc_quantizer, run_steps,
                                       schedule_end, schedule_overrides)
from arcvq_plugin.vqvae.figures import (CodebookSnapshot, save_codebook_figures, save_reconstruction_grid,
                                        save_table_figures)
from arcvq_plugin.vqvae.model import VQVAE
from arcvq_plugin.vqvae.report import ROW_LABELS, build_table, format_table
from arcvq_plugin.vqvae.sweep import Sweep, configured_value, parse_sweep, sweep_override, variant_name
from arcvq_plugin.vqvae.training_trace import BoundTrace, summarize_clipping

__all__ = ["TrainedRow", "build_parser", "default_config_dir", "evaluate_model", "main", "row_config",
           "seed_argument", "train_row", "validate_args"]

ROWS = tuple(ROW_LABELS)
ABLATION_ROWS = ("vq", "cosine", "bbnr", "arcvq")
DATASETS = ("mnist", "cifar10")
DEVICES = ("auto", "cpu", "cuda")
MODELS = ("vqvae", "vqgan")
N_GRID_IMAGES = 16
CUDA_PROGRESS_REFRESH = 50  # steps between progress-bar updates on CUDA (each update reads the loss: a host sync)


def default_config_dir() -> Path:
    """``configs/vqvae`` of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "vqvae"


def seed_argument(text: str) -> int:
    """argparse type of ``--seeds``: an integer in [0, 2**32)."""
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
    needed = [f"{args.dataset}_{row}.yaml" for row in (args.rows or ABLATION_ROWS)]
    needed += ["reduced_budget.yaml"] if args.budget == "reduced" else []
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
        description="Train and evaluate the VQ-VAE quantiser ablation (vanilla VQ, cosine only, + BBNR, ArcVQ; "
                    "optionally ArcVQ with a fixed bound, CVQ-VAE, ArcVQ with the rotation trick) and the paper's "
                    "sensitivity sweeps; print the tables "
                    "with mean +- std over seeds, paired differences with 95%% t-intervals and the paper's numbers.")
    parser.add_argument("--model", choices=MODELS, default="vqvae",
                        help="vqvae (default: this ablation) or vqgan (the taming VQGAN comparison with learning "
                             "curves: arcvq-reproduce --model vqgan --help)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="mnist (offline, default) or cifar10 (torchvision download)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=None,
                        help=f"rows (default: {' '.join(ABLATION_ROWS)}; with --sweep: arcvq)")
    parser.add_argument("--seeds", nargs="+", type=seed_argument, default=[1],
                        help="seeds, one training per seed and row (default: 1); 3 or more give 95%% t-intervals")
    parser.add_argument("--budget", choices=BUDGETS, default="reduced",
                        help="reduced (default: configs/vqvae/reduced_budget.yaml, the CPU setting) or paper "
                             "(batch 1024, 500 epochs: 29,500 steps per MNIST row)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto (default: cuda when torch sees a GPU, else cpu), cpu or cuda")
    parser.add_argument("--schedule", choices=SCHEDULES, default="paper",
                        help="paper (default); relative: ArcQuantizer schedule_horizon = run steps with "
                             "schedule_rescale both (ArcLoss decay delta and BBNR growth alpha times paper steps / "
                             "run steps, so lambda(t) and R(t) have the paper's shape over the run); relative-lambda: "
                             "schedule_rescale arc_weight (delta only). Not the paper's setting: labelled in every table")
    parser.add_argument("--sweep", type=parse_sweep, action="append", default=[], metavar="KEY=V1,V2,...",
                        help="one table per sweep of a model or quantiser parameter, e.g. arc_top_k=1,3,8, "
                             "arc_m=0.1,0.5,1.0, arc_s=5,10,20, embed_dim=4,8,16 (repeatable)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs per run (default: the budget's; lifts the budget's step limit)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="training batch size (default: the budget's)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop each training after N optimizer steps")
    parser.add_argument("--limit-train", type=positive_int, default=None, help="train on the first N images only")
    parser.add_argument("--limit-test", type=positive_int, default=None, help="evaluate on the first N test images only")
    parser.add_argument("--eval-batch-size", type=positive_int, default=1000, help="test images per forward (default 1000)")
    parser.add_argument("--lpips", action="store_true", help="also compute LPIPS (VGG; slow on CPU, needs weights)")
    parser.add_argument("--fid", action="store_true", help="also compute rFID (Inception; slow on CPU, needs weights)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/vqvae_<dataset>)")
    parser.add_argument("--config-dir", type=Path, default=None, help="folder of the row configs (default: configs/vqvae)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out (overwrites an earlier run)")
    parser.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bars")
    return parser


def row_config(config_dir: Path, dataset: str, row: str, epochs: Optional[int] = None,
               batch_size: Optional[int] = None, limit_train: Optional[int] = None, limit_test: Optional[int] = None,
               budget: str = "reduced", max_steps: Optional[int] = None, extra: Sequence[str] = ()) -> DictConfig:
    """The row's config merged with the budget's files, then the budget options and ``extra`` as dotlist overrides.

    ``epochs`` replaces the budget's epochs and lifts its step limit (unless ``max_steps`` is given).
    """
    paths = [Path(config_dir) / f"{dataset}_{row}.yaml", *budget_config_paths(config_dir, budget)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"config {path} not found (pass --config-dir, the folder holding configs/vqvae/)")
    dotlist = []
    if epochs is not None:  # epochs rule: the budget's step limit is lifted unless max_steps is given too
        dotlist += [f"lightning.trainer.max_epochs={epochs}", f"lightning.trainer.max_steps={max_steps or -1}"]
    if batch_size is not None:
        dotlist.append(f"data.params.batch_size={batch_size}")
    if max_steps is not None:
        dotlist.append(f"lightning.trainer.max_steps={max_steps}")
    if limit_train is not None:
        dotlist.append(f"data.params.train.params.limit={limit_train}")
    if limit_test is not None:
        dotlist += [f"data.params.{split}.params.limit={limit_test}" for split in ("validation", "test")]
    return load_configs([str(p) for p in paths], [*dotlist, *extra])


@dataclass
class TrainedRow:
    """A trained model and what its training recorded."""

    model: VQVAE
    seconds: float
    cpu_seconds: float
    clipped_fraction: Optional[torch.Tensor]  # (steps,) or None without BBNR


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def train_row(config: DictConfig, seed: int, progress_bar: bool = True, device: str | torch.device = "cpu") -> TrainedRow:
    """Seed everything, build model, data and callbacks from ``config``, fit on ``device``.

    The learning rate is ``model.base_learning_rate`` unscaled (the paper's Adam 3e-4). The
    trainer stops after ``lightning.trainer.max_epochs`` epochs or ``max_steps`` steps.
    """
    device = torch.device(device)
    pl.seed_everything(seed, workers=True)
    model = instantiate_from_config(config.model)
    model.learning_rate = float(config.model.base_learning_rate)  # as arcvq-train --scale_lr false
    datamodule = instantiate_from_config(config.data)
    callbacks = [instantiate_from_config(c) for c in (config.get("lightning", {}).get("callbacks") or {}).values()]
    trace = BoundTrace()
    callbacks.append(trace)
    if progress_bar and device.type == "cuda":
        callbacks.append(TQDMProgressBar(refresh_rate=CUDA_PROGRESS_REFRESH))
    trainer_config = config.lightning.trainer
    trainer = pl.Trainer(max_epochs=int(trainer_config.max_epochs), max_steps=int(trainer_config.get("max_steps", -1)),
                         accelerator=_accelerator(device), devices=1, logger=False, enable_checkpointing=False,
                         callbacks=callbacks, limit_val_batches=0, num_sanity_val_steps=0,
                         enable_model_summary=False, enable_progress_bar=progress_bar)
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=datamodule)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.to(device)  # Lightning's teardown moved it to the CPU
    return TrainedRow(model, seconds, cpu_seconds, trace.clipped_fraction)


@torch.no_grad()
def evaluate_model(model: VQVAE, pixels: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruct uint8 images ``pixels`` (N, H, W, C) in eval mode, in batches on their device.

    Returns ``(real, fake, indices)`` on the CPU: real/fake (N, C, H, W) float in [0, 1]
    (``(x + 1) / 2``, clamped), indices (N * H/4 * W/4,) int64 selected codes.
    """
    model.eval()
    real, fake, indices = [], [], []
    for start in range(0, pixels.shape[0], batch_size):
        x = model.get_input({model.image_key: pixels[start:start + batch_size]})
        z_q, _, (_, _, codes) = model.encode(x)
        x_rec = model.decode(z_q)
        real.append(((x + 1.0) / 2.0).clamp(0.0, 1.0))
        fake.append(((x_rec + 1.0) / 2.0).clamp(0.0, 1.0))
        indices.append(codes.reshape(-1))
    return torch.cat(real).cpu(), torch.cat(fake).cpu(), torch.cat(indices).cpu()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclass
class Variant:
    """One row of one table: a row config, possibly at one value of a sweep."""

    name: str
    label: str
    config: DictConfig
    sweep: Optional[dict] = None


def _dataset_length(node: DictConfig, cache: dict) -> int:
    key = OmegaConf.to_yaml(node)
    if key not in cache:
        cache[key] = len(instantiate_from_config(node))
    return cache[key]


def _schedule_notes(schedule: str, factor: float, steps: int, paper_steps: int, config: DictConfig,
                    paper_config: DictConfig) -> list[str]:
    """Lines stating the ArcVQ schedule of the run (lambda and R at its last step, against the paper's);
    a schedule other than the paper's says that it is a deviation."""
    params, paper = config.model.params.quantizer_config.params, paper_config.model.params.quantizer_config.params
    (weight, bound), (paper_weight, paper_bound) = schedule_end(params, steps), schedule_end(paper, paper_steps)
    end = (f"at the run's last step ({steps}) lambda = {weight:.3g} and R = {bound:.4g}; the paper's schedule "
           f"ends ({paper_steps} steps) at lambda = {paper_weight:.3g} and R = {paper_bound:.4g}")
    if schedule == "paper":
        return [f"Schedule: the paper's (delta {float(params.arc_gamma_decay):.3g}, alpha {float(params.bbnr_alpha):.3g}), "
                f"the recommended setting (docs/TRAINING.md, \"Schedules that fit the run\"); {end}."]
    scaled = "delta and alpha" if schedule == "relative" else "delta only"
    return [f"**Schedule: {schedule}, a deviation from the paper**: {scaled} multiplied by {factor:.4g} "
            f"(paper steps / run steps: ArcQuantizer schedule_horizon {steps}, schedule_reference_horizon "
            f"{params.schedule_reference_horizon}, schedule_rescale {params.schedule_rescale}); {end}."]


def _plan(args: argparse.Namespace, config_dir: Path, device: torch.device, sweeps: Sequence[Sweep]) -> dict:
    """Every table's variants with their final configs, the step counts and the schedule notes."""
    rows = list(dict.fromkeys(args.rows or (["arcvq"] if sweeps else list(ABLATION_ROWS))))
    lengths: dict = {}
    budget = dict(epochs=args.epochs, batch_size=args.batch_size, limit_train=args.limit_train,
                  limit_test=args.limit_test, budget=args.budget, max_steps=args.max_steps)
    specs = [("ablation", [(row, None, None) for row in rows])] if not sweeps else \
        [(s.name, [(row, s.key, v) for row in rows for v in s.values]) for s in sweeps]
    tables, notes = {}, []
    steps = paper_steps = None
    for table_name, entries in specs:
        variants = []
        for row, key, value in entries:
            base = row_config(config_dir, args.dataset, row, budget="paper")
            extra = [] if key is None else [sweep_override(key, value, base.model)]
            config = row_config(config_dir, args.dataset, row, extra=extra, **budget)
            n_run = _dataset_length(config.data.params.train, lengths)
            n_paper = _dataset_length(base.data.params.train, lengths)
            batch, epochs = int(config.data.params.batch_size), int(config.lightning.trainer.max_epochs)
            max_steps = config.lightning.trainer.get("max_steps")
            steps = run_steps(n_run, batch, epochs, None if max_steps in (None, -1) else int(max_steps))
            paper_steps = run_steps(n_paper, int(base.data.params.batch_size), int(base.lightning.trainer.max_epochs))
            if device.type == "cuda":  # the model's per-batch finiteness check is a host sync too
                OmegaConf.update(config, "model.params.check_finite", False)
            quantizer = config.model.params.get("quantizer_config")
            if is_arc_quantizer(quantizer):
                reference = int(quantizer.params.get("schedule_reference_horizon") or paper_steps)
                for param, value in schedule_overrides(args.schedule, steps, reference).items():
                    OmegaConf.update(config, f"model.params.quantizer_config.params.{param}", value)
                if device.type == "cuda":  # its per-forward finiteness check is a host sync; BoundTrace checks per epoch
                    OmegaConf.update(config, "model.params.quantizer_config.params.check_finite", False)
                if not notes or (row == "arcvq" and key is None):
                    notes = _schedule_notes(args.schedule, paper_steps / steps, steps, paper_steps, config, base)
            instantiate_from_config(config.model)  # bad values fail here, before any training
            name = row if key is None else variant_name(row, key, value)
            label = ROW_LABELS[row] if key is None else f"{ROW_LABELS[row]}, {key}={value}"
            variants.append(Variant(name, label, config, None if key is None else {"key": key, "value": value}))
        tables[table_name] = variants
    if device.type == "cuda":
        notes = [*notes, "On CUDA the per-batch finiteness checks of the model and the ArcQuantizer (host syncs) "
                         "are off (check_finite: false); the codebook's finiteness is checked once per epoch instead."]
    return {"rows": rows, "tables": tables, "steps": steps, "paper_steps": paper_steps, "notes": notes}


def _reference(table_name: str, variants: Sequence[Variant], config_dir: Path, dataset: str) -> str:
    """ArcVQ-VAE in the ablation; in a sweep, the ArcVQ-VAE (else first) row at its config's own value."""
    names = [v.name for v in variants]
    if table_name == "ablation":
        return "arcvq" if "arcvq" in names else names[0]
    ordered = sorted(variants, key=lambda v: not v.name.startswith("arcvq."))
    for variant in ordered:
        base = row_config(config_dir, dataset, variant.name.split(".", 1)[0], budget="paper")
        if configured_value(variant.sweep["key"], base.model) == variant.sweep["value"]:
            return variant.name
    return ordered[0].name


def _train_and_evaluate(variant: Variant, seed: int, args: argparse.Namespace, device: torch.device,
                        test_pixels: torch.Tensor, out: Path, unavailable: dict) -> tuple[dict, CodebookSnapshot]:
    """Train one row for one seed, evaluate it on the test pixels, write its checkpoint and clipping log."""
    from arcvq_plugin.evaluation import codebook_metrics, decoder_codebook, reconstruction_metrics

    trained = train_row(variant.config, seed, progress_bar=not args.no_progress_bar, device=device)
    model = trained.model
    real, fake, indices = evaluate_model(model, test_pixels, args.eval_batch_size)
    result = reconstruction_metrics(real, fake, lpips=args.lpips, fid=args.fid, device=device)
    requested = {"psnr": True, "ssim": True, "lpips": args.lpips, "rfid": args.fid}
    unavailable.update({name: why for name, why in (result.get("unavailable") or {}).items() if requested.get(name, True)})
    metrics = {k: result[k] for k in ("psnr", "ssim", "lpips", "rfid")}
    metrics.update(codebook_metrics(indices, model.n_embed))
    codebook = decoder_codebook(model.quantize)  # SimVQ, FSQ: ``codebook``, not ``embedding.weight``
    clipping = summarize_clipping(trained.clipped_fraction)
    metrics.update(mean_code_norm=float(codebook.double().norm(dim=1).mean()),
                   clipped_last=None if clipping is None else clipping["last"], clipping=clipping,
                   train_seconds=trained.seconds, train_cpu_seconds=trained.cpu_seconds)
    print(f"   PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, usage {100 * metrics['usage']:.1f}%, "
          f"trained in {trained.seconds:.0f} s"
          + ("" if clipping is None else f", bound clipped {100 * clipping['last']:.1f}% of codes at the last step "
                                         f"({clipping['steps_clipping']}/{clipping['steps']} steps clipped)"), flush=True)
    stem = f"{_slug(variant.name)}_seed{seed}"
    container = OmegaConf.to_container(variant.config, resolve=True)
    save_torch_atomic({"state_dict": model.state_dict(), "config": container}, out / "checkpoints" / f"{stem}.ckpt")
    write_text_atomic(out / "checkpoints" / f"{stem}.yaml", OmegaConf.to_yaml(variant.config))
    if trained.clipped_fraction is not None:  # the per-step log of the norm bound
        (out / "clipping").mkdir(exist_ok=True)
        write_text_atomic(out / "clipping" / f"{stem}.csv", "step,clipped_fraction\n" + "".join(
            f"{step},{value:.6g}\n" for step, value in enumerate(trained.clipped_fraction.tolist(), 1)))
    snapshot = CodebookSnapshot(
        label=variant.label, codebook=codebook, counts=torch.bincount(indices, minlength=model.n_embed),
        reconstructions=fake[:N_GRID_IMAGES], originals=real[:N_GRID_IMAGES],
        radius=float(model.quantize.radius) if getattr(model.quantize, "use_bbnr", False) else None,
        clipped_fraction=trained.clipped_fraction)
    return metrics, snapshot


def _requested_model(argv: Sequence[str]) -> str:
    """The ``--model`` of ``argv`` (``--model X`` or ``--model=X``), default ``vqvae``."""
    model = "vqvae"
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            model = argv[i + 1]
        elif arg.startswith("--model="):
            model = arg.split("=", 1)[1]
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    if _requested_model(sys.argv[1:] if argv is None else list(argv)) == "vqgan":
        from arcvq_plugin.vqgan_bench.cli import main as vqgan_main
        return vqgan_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    config_dir, out = args.config_dir, args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"arcvq-reproduce: {out} is not empty (an earlier run?); pass --force to overwrite "
              "its results or choose another --out", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        plan = _plan(args, config_dir, device, args.sweep)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"arcvq-reproduce: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seeds = list(dict.fromkeys(args.seeds))
    machine = machine_description(device)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    first = next(iter(plan["tables"].values()))[0].config
    test_set = instantiate_from_config(first.data.params.test)
    test_pixels = test_set.pixels.to(device)

    per_table: dict[str, dict] = {name: {} for name in plan["tables"]}
    unavailable, snapshots, grid = {}, {name: {} for name in plan["tables"]}, None
    total = sum(len(v) for v in plan["tables"].values())
    start = time.perf_counter()
    trained_once: dict[tuple[str, int], tuple[dict, CodebookSnapshot, str]] = {}
    for seed in seeds:
        done = 0
        for table_name, variants in plan["tables"].items():
            for variant in variants:
                done += 1
                key = (OmegaConf.to_yaml(variant.config), seed)
                if key in trained_once:  # e.g. arc_top_k=3 and arc_m=0.1 are both the arcvq config
                    metrics, snapshot, stem = trained_once[key]
                    print(f"\n== [{args.dataset}] seed {seed}, row {done}/{total}: {variant.label}: the same "
                          f"config as {stem}, not trained again ==", flush=True)
                    metrics = {**metrics, "same_run_as": stem}
                else:
                    print(f"\n== [{args.dataset}] seed {seed}, row {done}/{total}: {variant.label} ({plan['steps']} "
                          f"steps, batch {variant.config.data.params.batch_size}, {device}) ==", flush=True)
                    metrics, snapshot = _train_and_evaluate(variant, seed, args, device, test_pixels, out, unavailable)
                    stem = f"{_slug(variant.name)}_seed{seed}"
                    trained_once[key] = (metrics, snapshot, stem)
                per_table[table_name].setdefault(variant.name, {"label": variant.label, "sweep": variant.sweep,
                                                                "seeds": {}})["seeds"][seed] = metrics
                if seed == seeds[0]:
                    grid = snapshot.originals if grid is None else grid
                    snapshots[table_name][variant.name] = dataclasses.replace(snapshot, label=variant.label)

    n_test = test_pixels.shape[0]
    budget_text = (f"budget {args.budget} ({plan['steps']} steps per row, batch "
                   f"{first.data.params.batch_size}; the paper: {plan['paper_steps']} steps, batch 1024)")
    tables, texts, figures = {}, [], {}
    for table_name, variants in plan["tables"].items():
        what = "ablation" if table_name == "ablation" else f"sweep of {variants[0].sweep['key']}"
        schedule = "" if args.schedule == "paper" else f", schedule {args.schedule} (DEVIATION from the paper)"
        title = (f"{args.dataset} {what}: {budget_text}{schedule}, seeds {seeds}, {n_test} test images, {device}"
                 + (f", first {args.limit_train} training images" if args.limit_train else ""))
        reference = _reference(table_name, variants, config_dir, args.dataset)
        tables[table_name] = build_table(table_name, title, reference, per_table[table_name])
        texts.append(format_table(tables[table_name], args.dataset, plan["notes"]))
        suffix = "" if table_name == "ablation" else f"_{table_name}"
        row_snaps = {_slug(name): snap for name, snap in snapshots[table_name].items()}
        figures.update({k: str(v) for k, v in save_table_figures(snapshots[table_name], out, suffix,
                                                                 [] if args.schedule == "paper" else [f"schedule {args.schedule} (deviation)"]).items()})
        figures.update({k: str(v) for k, v in save_codebook_figures(row_snaps, out).items()})
    text = "\n".join(texts)
    skipped = [name for name, flag in (("LPIPS", args.lpips), ("rFID", args.fid)) if not flag]
    if skipped:
        text += f"\n{' and '.join(skipped)} not computed (--lpips / --fid: slow on a CPU, need their weights).\n"
    if unavailable:
        text += "\nUnavailable metrics:\n" + "".join(f"- {name}: {why}\n" for name, why in unavailable.items())
    print("\n" + text)
    write_text_atomic(out / "table.md", text)
    all_snaps = {name: snap for snaps in snapshots.values() for name, snap in snaps.items()}
    figures["reconstructions"] = str(save_reconstruction_grid(grid, all_snaps, out / "reconstructions.png"))
    machine.update(load_average_end=load_average(), wall_seconds=time.perf_counter() - start)
    payload = {"command": ["arcvq-reproduce", *(sys.argv[1:] if argv is None else argv)],
               "settings": {"dataset": args.dataset, "rows": plan["rows"], "seeds": seeds, "budget": args.budget,
                            "schedule": args.schedule, "schedule_notes": plan["notes"], "steps": plan["steps"],
                            "paper_steps": plan["paper_steps"], "batch_size": int(first.data.params.batch_size),
                            "sweeps": {s.key: list(s.values) for s in args.sweep}, "limit_train": args.limit_train,
                            "n_test_images": n_test, "lpips": args.lpips, "fid": args.fid, "device": str(device)},
               "machine": machine, "tables": tables, "unavailable": unavailable, "figures": figures}
    write_text_atomic(out / "results.json", json.dumps(payload, indent=2, default=float))
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and {len(figures)} figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
