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

The run is three steps: :func:`arcvq_plugin.vqvae.plan.make_plan` turns the parsed arguments into
a checked :class:`~arcvq_plugin.vqvae.plan.Plan` (every table's variants with their final configs;
every model built once, so bad values fail before any training), :func:`train` trains and
evaluates each (seed, config) once into a :class:`TrainingOutcome` (checkpoints and clipping logs
written as it goes), and :func:`write_report` writes the tables, figures, table.md and results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import TQDMProgressBar

from arcvq_plugin.atomic_outputs import OutputError, check_output_path, save_torch_atomic, write_text_atomic
from arcvq_plugin.cli_arguments import positive_int
from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.machine import load_average, machine_description
from arcvq_plugin.vqvae.budget import BUDGETS, SCHEDULES
from arcvq_plugin.vqvae.figures import (CodebookSnapshot, save_codebook_figures, save_reconstruction_grid,
                                        save_table_figures)
from arcvq_plugin.vqvae.model import VQVAE
from arcvq_plugin.vqvae.plan import ABLATION_ROWS, DATASETS, ROWS, SEED_LIMIT, Plan, Variant, make_plan, row_config
from arcvq_plugin.vqvae.report import build_table, format_table
from arcvq_plugin.vqvae.sweep import configured_value, parse_sweep
from arcvq_plugin.vqvae.training_trace import BoundTrace, summarize_clipping

__all__ = ["SeedRun", "TrainedRow", "TrainingOutcome", "build_parser", "default_config_dir", "evaluate_model", "main",
           "seed_argument", "train", "train_row", "validate_args", "write_report"]

DEVICES = ("auto", "cpu", "cuda")
MODELS = ("vqvae", "vqgan")
N_GRID_IMAGES = 16
CUDA_PROGRESS_REFRESH = 50  # steps between progress-bar updates on CUDA (each update reads the loss: a host sync)


# ---- the command line ----------------------------------------------------------------------------

def default_config_dir() -> Path:
    """``configs/vqvae`` of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "vqvae"


def seed_argument(text: str) -> int:
    """argparse type of ``--seeds``: an integer in [0, 2**32)."""
    value = int(text)
    if not 0 <= value < SEED_LIMIT:
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


# ---- train: every variant once per seed ---------------------------------------------------------

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


@dataclass(frozen=True)
class SeedRun:
    """One variant trained with one seed and evaluated.

    Attributes:
        metrics: its results.json record (keys: :mod:`arcvq_plugin.vqvae.report`), with
            ``same_run_as`` (the stem that trained) where the same config and seed ran before.
        snapshot: its codebook, code counts and first test reconstructions, for the figures.
        stem: the name of its files (:meth:`Variant.stem`).
        unavailable: metric -> why it could not be computed (requested metrics only).
    """

    metrics: dict[str, Any]
    snapshot: CodebookSnapshot
    stem: str
    unavailable: dict[str, str]


@dataclass
class TrainingOutcome:
    """Every variant of a plan trained once per seed: what the report shows.

    Attributes:
        rows: table name -> variant name -> ``{"label", "sweep", "seeds": {seed: metrics}}``, the
            input of :func:`arcvq_plugin.vqvae.report.build_table`.
        snapshots: table name -> variant name -> the first seed's snapshot, labelled as the variant.
        n_test_images: the test images every run was evaluated on.
        machine: :func:`arcvq_plugin.machine.machine_description` when training started.
        started: ``time.perf_counter()`` when the first training started.
        unavailable: metric -> why it could not be computed, over every run.
    """

    rows: dict[str, dict[str, dict[str, Any]]]
    snapshots: dict[str, dict[str, CodebookSnapshot]]
    n_test_images: int
    machine: dict[str, Any]
    started: float
    unavailable: dict[str, str] = field(default_factory=dict)

    def record(self, table_name: str, variant: Variant, seed: int, run: SeedRun, first_seed: bool) -> None:
        """Add ``run`` (``variant`` trained with ``seed``) to its table's row; keep its snapshot for the first seed."""
        entry = self.rows[table_name].setdefault(variant.name, {"label": variant.label, "sweep": variant.sweep,
                                                                "seeds": {}})
        entry["seeds"][seed] = run.metrics
        self.unavailable.update(run.unavailable)
        if first_seed:
            self.snapshots[table_name][variant.name] = dataclasses.replace(run.snapshot, label=variant.label)


def _run_metrics(plan: Plan, trained: TrainedRow, real: torch.Tensor, fake: torch.Tensor, indices: torch.Tensor,
                 codebook: torch.Tensor) -> tuple[dict[str, Any], dict[str, str]]:
    """A run's results.json record and the requested metrics that could not be computed (metric -> why).

    ``real``/``fake`` (N, C, H, W) in [0, 1], ``indices`` the selected codes, ``codebook`` (K, D).
    """
    from arcvq_plugin.evaluation import codebook_metrics, reconstruction_metrics

    result = reconstruction_metrics(real, fake, lpips=plan.lpips, fid=plan.fid, device=plan.device)
    requested = {"psnr": True, "ssim": True, "lpips": plan.lpips, "rfid": plan.fid}
    unavailable = {name: why for name, why in (result.get("unavailable") or {}).items() if requested.get(name, True)}
    clipping = summarize_clipping(trained.clipped_fraction)
    metrics = {k: result[k] for k in ("psnr", "ssim", "lpips", "rfid")}
    metrics.update(codebook_metrics(indices, trained.model.n_embed))
    metrics.update(mean_code_norm=float(codebook.double().norm(dim=1).mean()),
                   clipped_last=None if clipping is None else clipping["last"], clipping=clipping,
                   train_seconds=trained.seconds, train_cpu_seconds=trained.cpu_seconds)
    return metrics, unavailable


def _print_run(metrics: Mapping[str, Any]) -> None:
    """One line: PSNR, SSIM, usage, training time and, with a norm bound, how much it clipped."""
    clipping = metrics["clipping"]
    print(f"   PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, usage {100 * metrics['usage']:.1f}%, "
          f"trained in {metrics['train_seconds']:.0f} s"
          + ("" if clipping is None else f", bound clipped {100 * clipping['last']:.1f}% of codes at the last step "
                                         f"({clipping['steps_clipping']}/{clipping['steps']} steps clipped)"), flush=True)


def _save_run_files(out: Path, stem: str, config: DictConfig, trained: TrainedRow) -> None:
    """``checkpoints/<stem>.{ckpt,yaml}`` ({"state_dict", "config"} and the config) and, with a norm
    bound, ``clipping/<stem>.csv`` (the fraction of codes it clipped at each step)."""
    container = OmegaConf.to_container(config, resolve=True)
    save_torch_atomic({"state_dict": trained.model.state_dict(), "config": container},
                      out / "checkpoints" / f"{stem}.ckpt")
    write_text_atomic(out / "checkpoints" / f"{stem}.yaml", OmegaConf.to_yaml(config))
    if trained.clipped_fraction is not None:
        (out / "clipping").mkdir(exist_ok=True)
        write_text_atomic(out / "clipping" / f"{stem}.csv", "step,clipped_fraction\n" + "".join(
            f"{step},{value:.6g}\n" for step, value in enumerate(trained.clipped_fraction.tolist(), 1)))


def _train_and_evaluate(plan: Plan, variant: Variant, seed: int, test_pixels: torch.Tensor) -> SeedRun:
    """Train ``variant`` with ``seed``, evaluate it on ``test_pixels`` (N, H, W, C) uint8, write its files."""
    from arcvq_plugin.evaluation import decoder_codebook

    trained = train_row(variant.config, seed, progress_bar=plan.progress_bar, device=plan.device)
    model = trained.model
    real, fake, indices = evaluate_model(model, test_pixels, plan.eval_batch_size)
    codebook = decoder_codebook(model.quantize)  # SimVQ, FSQ: ``codebook``, not ``embedding.weight``
    metrics, unavailable = _run_metrics(plan, trained, real, fake, indices, codebook)
    _print_run(metrics)
    stem = variant.stem(seed)
    _save_run_files(plan.out, stem, variant.config, trained)
    snapshot = CodebookSnapshot(
        label=variant.label, codebook=codebook, counts=torch.bincount(indices, minlength=model.n_embed),
        reconstructions=fake[:N_GRID_IMAGES], originals=real[:N_GRID_IMAGES],
        radius=float(model.quantize.radius) if getattr(model.quantize, "use_bbnr", False) else None,
        clipped_fraction=trained.clipped_fraction)
    return SeedRun(metrics, snapshot, stem, unavailable)


def _run_once(plan: Plan, variant: Variant, seed: int, position: str, test_pixels: torch.Tensor,
              runs: dict[tuple[str, int], SeedRun]) -> SeedRun:
    """``variant`` trained with ``seed``, or the earlier run in ``runs`` of the same config and seed
    (e.g. arc_top_k=3 and arc_m=0.1 are both the arcvq config) marked ``same_run_as``."""
    key = (OmegaConf.to_yaml(variant.config), seed)
    heading = f"\n== [{plan.dataset}] seed {seed}, {position}: {variant.label}"
    if key in runs:
        earlier = runs[key]
        print(f"{heading}: the same config as {earlier.stem}, not trained again ==", flush=True)
        return dataclasses.replace(earlier, metrics={**earlier.metrics, "same_run_as": earlier.stem})
    print(f"{heading} ({plan.steps} steps, batch {variant.config.data.params.batch_size}, {plan.device}) ==",
          flush=True)
    runs[key] = _train_and_evaluate(plan, variant, seed, test_pixels)
    return runs[key]


def train(plan: Plan) -> TrainingOutcome:
    """Train and evaluate every variant of ``plan`` once per seed, on ``plan.device``, the whole test
    split (of the first variant's config) on the device; writes each run's checkpoint and clipping log."""
    machine = machine_description(plan.device)
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    (plan.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    test_pixels = instantiate_from_config(plan.first_config.data.params.test).pixels.to(plan.device)
    outcome = TrainingOutcome(rows={name: {} for name in plan.tables}, snapshots={name: {} for name in plan.tables},
                              n_test_images=test_pixels.shape[0], machine=machine, started=time.perf_counter())
    runs: dict[tuple[str, int], SeedRun] = {}
    variants = plan.variants
    for seed in plan.seeds:
        for position, (table_name, variant) in enumerate(variants, 1):
            run = _run_once(plan, variant, seed, f"row {position}/{len(variants)}", test_pixels, runs)
            outcome.record(table_name, variant, seed, run, first_seed=seed == plan.seeds[0])
    return outcome


# ---- report: tables, figures, table.md, results.json ---------------------------------------------

def _reference(plan: Plan, table_name: str, variants: Sequence[Variant]) -> str:
    """ArcVQ-VAE in the ablation; in a sweep, the ArcVQ-VAE (else first) row at its config's own value."""
    names = [v.name for v in variants]
    if table_name == "ablation":
        return "arcvq" if "arcvq" in names else names[0]
    ordered = sorted(variants, key=lambda v: not v.name.startswith("arcvq."))
    for variant in ordered:
        base = row_config(plan.config_dir, plan.dataset, variant.name.split(".", 1)[0], budget="paper")
        if configured_value(variant.sweep["key"], base.model) == variant.sweep["value"]:
            return variant.name
    return ordered[0].name


def _title(plan: Plan, table_name: str, variants: Sequence[Variant], n_test_images: int) -> str:
    """A table's heading: dataset, ablation or sweep, budget, schedule, seeds, test images, device."""
    what = "ablation" if table_name == "ablation" else f"sweep of {variants[0].sweep['key']}"
    budget = (f"budget {plan.budget} ({plan.steps} steps per row, batch {plan.batch_size}; "
              f"the paper: {plan.paper_steps} steps, batch 1024)")
    schedule = "" if plan.schedule == "paper" else f", schedule {plan.schedule} (DEVIATION from the paper)"
    return (f"{plan.dataset} {what}: {budget}{schedule}, seeds {list(plan.seeds)}, {n_test_images} test images, "
            f"{plan.device}" + (f", first {plan.limit_train} training images" if plan.limit_train else ""))


def _report_text(plan: Plan, tables: Mapping[str, Mapping], unavailable: Mapping[str, str]) -> str:
    """table.md: every table, then which metrics were not computed and which were unavailable."""
    text = "\n".join(format_table(table, plan.dataset, plan.schedule_notes) for table in tables.values())
    skipped = [name for name, flag in (("LPIPS", plan.lpips), ("rFID", plan.fid)) if not flag]
    if skipped:
        text += f"\n{' and '.join(skipped)} not computed (--lpips / --fid: slow on a CPU, need their weights).\n"
    if unavailable:
        text += "\nUnavailable metrics:\n" + "".join(f"- {name}: {why}\n" for name, why in unavailable.items())
    return text


def _save_figures(plan: Plan, snapshots: Mapping[str, Mapping[str, CodebookSnapshot]]) -> dict[str, str]:
    """Every table's panels and per-row codebook figures, then the reconstruction grid; figure -> path."""
    notes = [] if plan.schedule == "paper" else [f"schedule {plan.schedule} (deviation)"]
    figures: dict[str, Path] = {}
    for table_name, variants in plan.tables.items():
        suffix = "" if table_name == "ablation" else f"_{table_name}"
        figures.update(save_table_figures(snapshots[table_name], plan.out, suffix, notes))
        figures.update(save_codebook_figures({v.slug: snapshots[table_name][v.name] for v in variants}, plan.out))
    every_row = {name: s for table_snapshots in snapshots.values() for name, s in table_snapshots.items()}
    originals = next(iter(every_row.values())).originals
    figures["reconstructions"] = save_reconstruction_grid(originals, every_row, plan.out / "reconstructions.png")
    return {name: str(path) for name, path in figures.items()}


def _settings(plan: Plan, n_test_images: int) -> dict[str, Any]:
    """results.json's ``settings``."""
    return {"dataset": plan.dataset, "rows": list(plan.rows), "seeds": list(plan.seeds), "budget": plan.budget,
            "schedule": plan.schedule, "schedule_notes": list(plan.schedule_notes), "steps": plan.steps,
            "paper_steps": plan.paper_steps, "batch_size": plan.batch_size,
            "sweeps": {s.key: list(s.values) for s in plan.sweeps}, "limit_train": plan.limit_train,
            "n_test_images": n_test_images, "lpips": plan.lpips, "fid": plan.fid, "device": str(plan.device)}


def write_report(plan: Plan, outcome: TrainingOutcome) -> None:
    """Print the tables and write into ``plan.out`` table.md, the figures and results.json (settings,
    machine, every table with its seeds, summaries and differences, unavailable metrics, figures)."""
    tables = {name: build_table(name, _title(plan, name, variants, outcome.n_test_images),
                                _reference(plan, name, variants), outcome.rows[name])
              for name, variants in plan.tables.items()}
    text = _report_text(plan, tables, outcome.unavailable)
    figures = _save_figures(plan, outcome.snapshots)
    print("\n" + text)
    write_text_atomic(plan.out / "table.md", text)
    machine = {**outcome.machine, "load_average_end": load_average(),
               "wall_seconds": time.perf_counter() - outcome.started}
    payload = {"command": list(plan.command), "settings": _settings(plan, outcome.n_test_images), "machine": machine,
               "tables": tables, "unavailable": outcome.unavailable, "figures": figures}
    write_text_atomic(plan.out / "results.json", json.dumps(payload, indent=2, default=float))
    print(f"wrote {plan.out / 'results.json'}, {plan.out / 'table.md'} and {len(figures)} figures in {plan.out}")


# ---- main ----------------------------------------------------------------------------------------

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
    """``arcvq-reproduce``: plan, train, report. Returns 0, or 2 when the request is refused (before any work)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if _requested_model(arguments) == "vqgan":
        from arcvq_plugin.vqgan_bench.cli import main as vqgan_main
        return vqgan_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    validate_args(parser, args)
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        print(f"arcvq-reproduce: {args.out} is not empty (an earlier run?); pass --force to overwrite "
              "its results or choose another --out", file=sys.stderr)
        return 2
    try:
        plan = make_plan(args, ["arcvq-reproduce", *arguments])
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"arcvq-reproduce: {err}", file=sys.stderr)
        return 2
    write_report(plan, train(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
