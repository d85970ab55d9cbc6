"""``arcvq-reproduce --model vqgan``: the taming VQGAN quantiser comparison with learning curves.

For every seed and row it loads ``configs/vqgan_bench/<row>.yaml`` (one taming VQGAN config; the rows
differ only in ``model.params.quantizer_config``), merged with ``reduced_budget.yaml`` for ``--budget
reduced`` (the default), replaces the data block with ``--data DIR`` when given, trains it through
``arcvq_plugin.taming.VQModel`` and the ``gan_training`` loop, and evaluates it on the validation images
at log-spaced steps (``--eval-steps``; default every doubling from 64 plus the last): PSNR, SSIM, LPIPS
and rFID (``arcvq_plugin.evaluation``; each table names the weights and whether they are substitutes),
codebook usage, perplexity, dead codes and code-norm statistics. A row is any ``<name>.yaml`` in the
config folder other than ``reduced_budget.yaml``. Written to ``--out``:

    runs/<row>_seed<seed>.pt      one finished row and seed (metrics, curve, codebook, reconstructions),
                                  written as it finishes; a restarted run reuses those with the same config
    results.json, table.md        the final table, one table per curve step, ArcVQ minus each row per step
    learning_curves.png           every metric against step, per-seed points and the mean per row
    reconstructions.png, figure2_code_norms.png, figure3_pairwise_distances.png
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from arcvq_plugin.atomic_outputs import OutputError, check_output_path, save_torch_atomic, write_text_atomic
from arcvq_plugin.checkpoint_loading import load_checkpoint
from arcvq_plugin.cli_arguments import positive_int
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.devices import resolve_device
from arcvq_plugin.evaluation.codebook import decoder_codebook
from arcvq_plugin.vqgan_bench.data import check_split
from arcvq_plugin.vqgan_bench.training import CurveEvaluation, log_spaced_steps, reconstruct, train_vqgan
from arcvq_plugin.vqvae.budget import BUDGETS
from arcvq_plugin.vqvae.figures import (CodebookSnapshot, save_learning_curves, save_reconstruction_grid,
                                        save_table_figures)
from arcvq_plugin.vqvae.report import ROW_LABELS, build_table, format_curve_differences, format_table
from arcvq_plugin.machine import machine_description
from arcvq_plugin.vqvae.reproduce import seed_argument

__all__ = ["DEFAULT_ROWS", "available_rows", "build_parser", "default_config_dir", "main", "row_config"]

DEFAULT_ROWS = ("vq", "cosine", "bbnr", "arcvq", "cvq", "arcvq_rotation")
BUDGET_FILE = "reduced_budget.yaml"
N_GRID_IMAGES = 8
PROGRESS_EVERY = 50


def default_config_dir() -> Path:
    """``configs/vqgan_bench`` of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "vqgan_bench"


def available_rows(config_dir: Path) -> list[str]:
    """Row names: every ``<name>.yaml`` in ``config_dir`` except the budget overlay."""
    return sorted(p.stem for p in Path(config_dir).glob("*.yaml") if p.name != BUDGET_FILE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arcvq-reproduce --model vqgan",
        description="Train and evaluate taming VQGANs that differ only in their quantiser, with learning curves; "
                    "print the tables with mean +- std over seeds and ArcVQ minus each row with 95%% t-intervals.")
    parser.add_argument("--model", choices=("vqvae", "vqgan"), default="vqgan", help="vqgan (this command)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of images (jpg/jpeg/png/webp, recursive; DIR/train + DIR/validation when "
                             "present, else a file-disjoint split); default: crops of scikit-image's photographs")
    parser.add_argument("--rows", nargs="+", default=None, help=f"rows (default: {' '.join(DEFAULT_ROWS)})")
    parser.add_argument("--seeds", nargs="+", type=seed_argument, default=[1], help="seeds (default 1); 3+ give t-intervals")
    parser.add_argument("--budget", choices=BUDGETS, default="reduced",
                        help="reduced (default: configs/vqgan_bench/reduced_budget.yaml, f4 on 32x32, CPU) or "
                             "paper (the rows as they are: the paper's f8 ImageNet tokenizer; use --device cuda)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="autoencoder optimizer steps per run")
    parser.add_argument("--epochs", type=positive_int, default=None, help="epochs per run (lifts the step limit)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="training batch size")
    parser.add_argument("--eval-steps", nargs="+", type=positive_int, default=None,
                        help="curve steps (default: every doubling from 64, plus the last step)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS (on by default)")
    parser.add_argument("--no-fid", action="store_true", help="skip rFID (on by default)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/vqgan_bench)")
    parser.add_argument("--config-dir", type=Path, default=None, help="folder of the row configs (configs/vqgan_bench)")
    parser.add_argument("--force", action="store_true",
                        help="write into a non-empty --out that is not an earlier run of this command, and retrain "
                             "rows whose results it holds")
    return parser


def row_config(config_dir: Path, row: str, budget: str = "reduced", data: Optional[Path] = None,
               max_steps: Optional[int] = None, epochs: Optional[int] = None,
               batch_size: Optional[int] = None) -> DictConfig:
    """The row's config merged with the budget overlay, ``--data`` and the step/batch overrides."""
    paths = [Path(config_dir) / f"{row}.yaml"] + ([Path(config_dir) / BUDGET_FILE] if budget == "reduced" else [])
    dotlist = []
    if batch_size is not None:
        dotlist.append(f"data.params.batch_size={batch_size}")
    if max_steps is not None:
        dotlist.append(f"lightning.trainer.max_steps={max_steps}")
    if epochs is not None:
        dotlist += [f"lightning.trainer.max_epochs={epochs}", f"lightning.trainer.max_steps={max_steps or -1}"]
    config = load_configs([str(p) for p in paths], dotlist)
    if data is not None:
        size = int(config.model.params.ddconfig.resolution)
        for split in ("train", "validation"):
            config.data.params[split] = OmegaConf.create(
                {"target": "arcvq_plugin.vqgan_bench.data.FolderImages",
                 "params": {"root": str(data), "split": split, "size": size}})
    if int(config.lightning.trainer.get("max_steps", -1)) < 1:  # epochs given: steps from the data
        n_train = len(instantiate_from_config(config.data.params.train))
        per_epoch = -(-n_train // int(config.data.params.batch_size))
        config.lightning.trainer.max_steps = per_epoch * int(config.lightning.trainer.max_epochs)
    return config


def _fingerprint(config: DictConfig, seed: int, steps: Sequence[int], lpips: bool, fid: bool) -> str:
    text = json.dumps([OmegaConf.to_yaml(config), seed, list(steps), lpips, fid])
    return hashlib.sha256(text.encode()).hexdigest()


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.config_dir = args.config_dir or default_config_dir()
    args.out = args.out or Path("outputs") / "vqgan_bench"
    known = available_rows(args.config_dir)
    args.rows = list(dict.fromkeys(args.rows or DEFAULT_ROWS))
    unknown = [r for r in args.rows if r not in known]
    if unknown:
        parser.error(f"--rows must be among {known} (the configs in {args.config_dir}), got {unknown}")
    if args.budget == "reduced" and not (args.config_dir / BUDGET_FILE).is_file():
        parser.error(f"--config-dir {args.config_dir} lacks {BUDGET_FILE}")
    try:
        check_output_path(args.out, "--out", folder=True, inputs={"--config-dir": args.config_dir,
                                                                  **({"--data": args.data} if args.data else {})})
    except OutputError as err:
        parser.error(str(err))


def _code_norm_stats(codebook: torch.Tensor) -> dict:
    norms = codebook.double().norm(dim=1)
    return {"mean_code_norm": float(norms.mean()), "std_code_norm": float(norms.std()) if norms.numel() > 1 else 0.0,
            "min_code_norm": float(norms.min()), "max_code_norm": float(norms.max())}


def _evaluator(pixels: torch.Tensor, lpips: bool, fid: bool, device: torch.device, provenance: dict):
    """``(model, step) -> metrics`` on the validation pixels; ``provenance`` collects the metric weights."""
    from arcvq_plugin.evaluation import codebook_metrics, reconstruction_metrics

    def metrics_of(model, step: int) -> dict:
        real, fake, indices = reconstruct(model, pixels)
        result = reconstruction_metrics(real, fake, lpips=lpips, fid=fid, device=device)
        provenance.update(weights=result["weights"], substitute_weights=result["substitute_weights"],
                          unavailable={k: v for k, v in result["unavailable"].items() if v != "not requested"})
        metrics = {k: result[k] for k in ("psnr", "ssim", "lpips", "rfid")}
        metrics.update(codebook_metrics(indices, model.quantize.n_e))
        metrics.update(_code_norm_stats(decoder_codebook(model.quantize)))
        return metrics
    return metrics_of


def _progress(row: str, seed: int, total: int):
    """``(report, heartbeat)`` for :class:`CurveEvaluation`: one line per curve point with its metrics,
    and one every ``PROGRESS_EVERY`` steps in between with the last point's PSNR."""
    last: dict = {}

    def report(point) -> None:
        m = point.metrics
        last.update(step=point.step, psnr=m["psnr"])
        extra = "".join(f", {name} {m[key]:.4g}" for key, name in (("lpips", "LPIPS"), ("rfid", "rFID"))
                        if m.get(key) is not None)
        print(f"[vqgan] {row} seed {seed}: step {point.step}/{total}, {point.seconds:.0f} s, PSNR {m['psnr']:.2f}, "
              f"SSIM {m['ssim']:.4f}{extra}, usage {100 * m['usage']:.1f}%", flush=True)

    def heartbeat(step: int, seconds: float) -> None:
        since = f", PSNR {last['psnr']:.2f} at step {last['step']}" if last else ""
        print(f"[vqgan] {row} seed {seed}: step {step}/{total}, {seconds:.0f} s{since}", flush=True)
    return report, heartbeat


def _run_row(row: str, seed: int, config: DictConfig, steps: list[int], pixels: torch.Tensor, args,
             device: torch.device, provenance: dict) -> dict:
    total = int(config.lightning.trainer.max_steps)
    print(f"\n== [vqgan] row {row}, seed {seed}: {total} steps, batch {config.data.params.batch_size}, "
          f"curve at {steps}, {device} ==", flush=True)
    report, heartbeat = _progress(row, seed, total)
    curve = CurveEvaluation(steps, _evaluator(pixels, not args.no_lpips, not args.no_fid, device, provenance),
                            report, heartbeat, PROGRESS_EVERY)
    trained = train_vqgan(config, seed, curve, device)
    model = trained.model
    real, fake, indices = reconstruct(model, pixels)
    model.train()
    curve_points = [{"step": p.step, "seconds": p.seconds, **p.metrics} for p in trained.curve]
    final = dict(curve_points[-1]) if curve_points else {}
    final.update(train_seconds=trained.seconds)
    return {"row": row, "seed": seed, "metrics": final, "curve": curve_points,
            "codebook": decoder_codebook(model.quantize),
            "counts": torch.bincount(indices, minlength=model.quantize.n_e),
            "reconstructions": fake[:N_GRID_IMAGES], "originals": real[:N_GRID_IMAGES],
            "radius": float(model.quantize.radius) if getattr(model.quantize, "use_bbnr", False) else None,
            "state_dict": model.state_dict()}


def _evaluator_line(provenance: dict) -> str:
    weights = provenance.get("weights") or {}
    parts = [f"{name}: {desc}" for name, desc in weights.items()]
    kind = "SUBSTITUTE weights (rebuilt offline, compare only with numbers made the same way)" \
        if provenance.get("substitute_weights") else "genuine weights"
    unavailable = provenance.get("unavailable") or {}
    text = (f"Evaluators: PSNR/SSIM scikit-image; LPIPS lpips VGG; rFID torch-fidelity Inception; {kind}"
            + (f" ({'; '.join(parts)})" if parts else ""))
    if unavailable:
        text += ". Unavailable: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items())
    return text + "."


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    out = args.out
    if out.exists() and any(out.iterdir()) and not (out / "runs").is_dir() and not args.force:
        print(f"arcvq-reproduce: {out} is not empty and holds no earlier VQGAN comparison; pass --force or "
              "choose another --out", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
        configs = {row: row_config(args.config_dir, row, args.budget, args.data, args.max_steps, args.epochs,
                                   args.batch_size) for row in args.rows}
        first = configs[args.rows[0]]
        if args.data is not None:
            check_split(args.data, int(first.data.params.batch_size), int(first.model.params.ddconfig.resolution))
        for config in configs.values():
            instantiate_from_config(config.model)  # bad values fail here, before any training
        total = int(first.lightning.trainer.max_steps)
        steps = sorted(set(s for s in (args.eval_steps or log_spaced_steps(total)) if s <= total) | {total})
        validation = instantiate_from_config(first.data.params.validation)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"arcvq-reproduce: {err}", file=sys.stderr)
        return 2
    pixels = torch.stack([torch.as_tensor(validation[i]["image"]) for i in range(len(validation))])
    pixels = ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    seeds = list(dict.fromkeys(args.seeds))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    load_start, start, provenance = os.getloadavg(), time.perf_counter(), {}
    results: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for row in args.rows:
            key = _fingerprint(configs[row], seed, steps, not args.no_lpips, not args.no_fid)
            path = out / "runs" / f"{row}_seed{seed}.pt"
            if path.is_file() and not args.force:
                saved = load_checkpoint(path).content
                if saved.get("fingerprint") == key:
                    print(f"[vqgan] {row} seed {seed}: reusing {path}", flush=True)
                    results[(row, seed)] = saved
                    provenance.update(saved.get("provenance") or {})
                    continue
            result = _run_row(row, seed, configs[row], steps, pixels.to(device), args, device, provenance)
            result.update(fingerprint=key, provenance=dict(provenance))
            save_torch_atomic(result, path)
            results[(row, seed)] = result
    text, payload = _report(args, configs, seeds, steps, results, provenance, pixels, device)
    payload["machine"] = machine_description(device)
    payload["machine"].update(load_average_start=list(load_start), load_average_end=list(os.getloadavg()),
                              wall_seconds=time.perf_counter() - start)
    print("\n" + text)
    write_text_atomic(out / "table.md", text)
    write_text_atomic(out / "results.json", json.dumps(payload, indent=2, default=float))
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and the figures in {out}")
    return 0


VQGAN_LABELS = {"vq": "VQGAN (VectorQuantizer2)", "arcvq": "ArcVQ-VQGAN"}


def _label(row: str) -> str:
    """The table label of ``row``: the VQ-VAE ablation's, except the two rows named after the model."""
    return VQGAN_LABELS.get(row, ROW_LABELS.get(row, row))


def _report(args, configs, seeds, steps, results, provenance, pixels, device) -> tuple[str, dict]:
    first = configs[args.rows[0]]
    reference = "arcvq" if "arcvq" in args.rows else args.rows[0]
    data = str(args.data) if args.data else "scikit-image photographs (embedded)"
    title = (f"VQGAN comparison, {data}: budget {args.budget} ({steps[-1]} steps, batch "
             f"{first.data.params.batch_size}, {first.model.params.ddconfig.resolution} px), seeds {seeds}, "
             f"{pixels.shape[0]} validation images, {device}")
    evaluators = _evaluator_line(provenance)

    def table_at(name: str, step: Optional[int]) -> dict:
        rows = {}
        for row in args.rows:
            per_seed = {}
            for seed in seeds:
                result = results[(row, seed)]
                point = result["metrics"] if step is None else next(p for p in result["curve"] if p["step"] == step)
                per_seed[seed] = point
            rows[row] = {"label": _label(row), "sweep": None, "seeds": per_seed}
        return build_table(name, title if step is None else f"{title}, at step {step}", reference, rows)

    final = table_at("vqgan", None)
    curve_tables = {step: table_at(f"vqgan_step_{step}", step) for step in steps}
    text = format_table(final, "vqgan", [evaluators]) + "\n" + format_curve_differences(curve_tables)
    out = args.out
    snapshots = {row: CodebookSnapshot(label=_label(row), codebook=results[(row, seeds[0])]["codebook"],
                                       counts=results[(row, seeds[0])]["counts"],
                                       reconstructions=results[(row, seeds[0])]["reconstructions"],
                                       radius=results[(row, seeds[0])]["radius"]) for row in args.rows}
    figures = {k: str(v) for k, v in save_table_figures(snapshots, out).items()}
    figures["reconstructions"] = str(save_reconstruction_grid(results[(args.rows[0], seeds[0])]["originals"],
                                                              snapshots, out / "reconstructions.png"))
    curves = {_label(row): {seed: results[(row, seed)]["curve"] for seed in seeds} for row in args.rows}
    figures["learning_curves"] = str(save_learning_curves(curves, ("psnr", "ssim", "lpips", "rfid", "usage"),
                                                          out / "learning_curves.png"))
    payload = {"command": ["arcvq-reproduce", "--model", "vqgan", *[a for a in (sys.argv[1:]) if a != "--model"]],
               "settings": {"model": "vqgan", "data": data, "rows": args.rows, "seeds": seeds, "budget": args.budget,
                            "steps": steps[-1], "eval_steps": steps, "lpips": not args.no_lpips,
                            "fid": not args.no_fid, "device": str(device), "evaluators": evaluators},
               "tables": {"vqgan": final, **{f"step_{s}": t for s, t in curve_tables.items()}},
               "curves": {row: {seed: results[(row, seed)]["curve"] for seed in seeds} for row in args.rows},
               "evaluation": provenance, "figures": figures}
    return text, payload
