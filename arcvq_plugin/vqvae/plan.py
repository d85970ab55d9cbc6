"""The plan of one ``arcvq-reproduce`` run: every table's variants with their final configs, checked.

:func:`make_plan` turns the parsed command line into a :class:`Plan`. For each table (the ablation
of the rows, or one table per ``--sweep`` with each row at each value) and each row it merges
``configs/vqvae/<dataset>_<row>.yaml`` with the budget's files and the command-line overrides
(:func:`row_config`), counts the run's and the paper's optimizer steps, sets the ArcQuantizer
options of ``--schedule`` and builds the model once, so that a bad value fails before any training.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.devices import resolve_device
from arcvq_plugin.validation import check_bool, check_choice, check_int, check_optional_int
from arcvq_plugin.vqvae.budget import (BUDGETS, SCHEDULES, budget_config_paths, is_arc_quantizer, run_steps,
                                       schedule_end, schedule_overrides)
from arcvq_plugin.vqvae.report import ROW_LABELS
from arcvq_plugin.vqvae.sweep import Sweep, sweep_override, variant_name

__all__ = ["ABLATION_ROWS", "DATASETS", "ROWS", "SEED_LIMIT", "Plan", "Variant", "make_plan", "row_config"]

ROWS = tuple(ROW_LABELS)
ABLATION_ROWS = ("vq", "cosine", "bbnr", "arcvq")
DATASETS = ("mnist", "cifar10")
SEED_LIMIT = 2 ** 32  # seeds are integers in [0, SEED_LIMIT), what numpy and Lightning accept
CUDA_FINITENESS_NOTE = ("On CUDA the per-batch finiteness checks of the model and the ArcQuantizer (host syncs) "
                        "are off (check_finite: false); the codebook's finiteness is checked once per epoch instead.")


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


@dataclass(frozen=True)
class Variant:
    """One row of one table: a row config, possibly at one value of a sweep.

    Attributes:
        name: the row (``arcvq``), or ``<row>.<key>=<value>`` in a sweep.
        label: the row as the tables print it (``ArcVQ-VAE``, ``ArcVQ-VAE, arc_top_k=8``).
        config: the final config: row yaml + budget + overrides + the schedule's options.
        sweep: ``{"key", "value"}`` of a sweep's variant; None in the ablation.
    """

    name: str
    label: str
    config: DictConfig
    sweep: Optional[dict[str, Any]] = None

    @property
    def slug(self) -> str:
        """``name`` as a file name: every run of characters other than letters, digits and ``_.-`` is ``_``."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)

    def stem(self, seed: int) -> str:
        """The file name of its training with ``seed``: ``checkpoints/<stem>.ckpt``, ``clipping/<stem>.csv``."""
        return f"{self.slug}_seed{seed}"


def _check_distinct(name: str, values: Sequence[Any]) -> None:
    """ValueError naming ``name`` unless ``values`` holds at least one value, none twice."""
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must hold at least one value, each once, got {list(values)}")


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one ``arcvq-reproduce`` run trains, evaluates and writes; checked when built, before any work.

    Attributes (default, where there is one, in brackets; the command line's defaults):
        dataset: ``mnist`` or ``cifar10`` [mnist].
        rows: the rows, distinct, in order (:data:`ROWS`) [vq, cosine, bbnr, arcvq; with sweeps arcvq].
        seeds: distinct integers in [0, 2**32), one training per seed and variant [(1,)].
        budget: ``reduced`` or ``paper`` [reduced].
        schedule: ``paper``, ``relative`` or ``relative-lambda`` [paper].
        sweeps: the ``--sweep`` parameters, a table each [(): one table, the ablation].
        limit_train: train on the first N >= 1 images only [None: all].
        eval_batch_size: test images per forward, >= 1 [1000].
        lpips, fid: also compute LPIPS / rFID [False].
        progress_bar: show Lightning's progress bars [True].
        command: the command line, as results.json records it [("arcvq-reproduce",)].
        device: where the models train and are evaluated.
        config_dir: the folder of the row configs (``configs/vqvae``).
        out: the output folder.
        tables: table name (``ablation``, ``sweep_<key>``) -> its variants, at least one each.
        steps: optimizer steps of each training (>= 1); paper_steps: the paper's for the same row.
        schedule_notes: lines stating the ArcVQ schedule (and, on CUDA, the finiteness checks) [()].
    """

    dataset: str = "mnist"
    rows: tuple[str, ...] = ABLATION_ROWS
    seeds: tuple[int, ...] = (1,)
    budget: str = "reduced"
    schedule: str = "paper"
    sweeps: tuple[Sweep, ...] = ()
    limit_train: Optional[int] = None
    eval_batch_size: int = 1000
    lpips: bool = False
    fid: bool = False
    progress_bar: bool = True
    command: tuple[str, ...] = ("arcvq-reproduce",)
    device: torch.device
    config_dir: Path
    out: Path
    tables: Mapping[str, tuple[Variant, ...]]
    steps: int
    paper_steps: int
    schedule_notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("budget", self.budget, BUDGETS)
        check_choice("schedule", self.schedule, SCHEDULES)
        _check_distinct("rows", self.rows)
        for row in self.rows:
            check_choice("rows", row, ROWS)
        _check_distinct("seeds", self.seeds)
        for seed in self.seeds:
            if check_int("seeds", seed, minimum=0) >= SEED_LIMIT:
                raise ValueError(f"seeds must be integers in [0, 2**32), got {seed!r}")
        check_optional_int("limit_train", self.limit_train, minimum=1)
        check_int("eval_batch_size", self.eval_batch_size, minimum=1)
        for name in ("lpips", "fid", "progress_bar"):
            check_bool(name, getattr(self, name))
        check_int("steps", self.steps, minimum=1)
        check_int("paper_steps", self.paper_steps, minimum=1)
        if not self.tables or not all(self.tables.values()):
            raise ValueError(f"tables must hold at least one table, each with a variant, got {list(self.tables)}")

    @property
    def variants(self) -> tuple[tuple[str, Variant], ...]:
        """Every (table name, variant), in the order they train."""
        return tuple((name, variant) for name, variants in self.tables.items() for variant in variants)

    @property
    def first_config(self) -> DictConfig:
        """The first variant's config: its test split is every run's, its batch size the one reported."""
        return self.variants[0][1].config

    @property
    def batch_size(self) -> int:
        """The training batch size of the first variant, as the tables and results.json report it."""
        return int(self.first_config.data.params.batch_size)


@dataclass(frozen=True)
class _PlannedVariant:
    """A variant with what its schedule note needs: the paper's config of its row and both step counts."""

    variant: Variant
    paper_config: DictConfig
    steps: int
    paper_steps: int


def _dataset_length(node: DictConfig, cache: dict[str, int]) -> int:
    """Images of the dataset ``node`` builds, built once per distinct node (``cache``: its yaml -> length)."""
    key = OmegaConf.to_yaml(node)
    if key not in cache:
        cache[key] = len(instantiate_from_config(node))
    return cache[key]


def _run_steps(config: DictConfig, lengths: dict[str, int], step_limit: bool = True) -> int:
    """Optimizer steps of a training with ``config`` (its ``max_steps`` counted when ``step_limit``)."""
    max_steps = config.lightning.trainer.get("max_steps") if step_limit else None
    return run_steps(_dataset_length(config.data.params.train, lengths), int(config.data.params.batch_size),
                     int(config.lightning.trainer.max_epochs), None if max_steps in (None, -1) else int(max_steps))


def _configure_for_run(config: DictConfig, schedule: str, steps: int, paper_steps: int, device: torch.device) -> None:
    """Set in ``config`` the ArcQuantizer options of ``schedule`` and, on CUDA, turn the per-batch
    finiteness checks (host syncs) off; ``BoundTrace`` checks the codebook once per epoch instead."""
    if device.type == "cuda":
        OmegaConf.update(config, "model.params.check_finite", False)
    quantizer = config.model.params.get("quantizer_config")
    if not is_arc_quantizer(quantizer):
        return
    reference = int(quantizer.params.get("schedule_reference_horizon") or paper_steps)
    for param, value in schedule_overrides(schedule, steps, reference).items():
        OmegaConf.update(config, f"model.params.quantizer_config.params.{param}", value)
    if device.type == "cuda":
        OmegaConf.update(config, "model.params.quantizer_config.params.check_finite", False)


def _plan_variant(args: argparse.Namespace, device: torch.device, row: str, key: Optional[str], value: Any,
                  lengths: dict[str, int]) -> _PlannedVariant:
    """``row`` (at ``key=value`` of a sweep; key None: the ablation's row) with its final config; the model
    is built once here, so bad values fail before any training."""
    paper_config = row_config(args.config_dir, args.dataset, row, budget="paper")
    extra = [] if key is None else [sweep_override(key, value, paper_config.model)]
    config = row_config(args.config_dir, args.dataset, row, epochs=args.epochs, batch_size=args.batch_size,
                        limit_train=args.limit_train, limit_test=args.limit_test, budget=args.budget,
                        max_steps=args.max_steps, extra=extra)
    steps, paper_steps = _run_steps(config, lengths), _run_steps(paper_config, lengths, step_limit=False)
    _configure_for_run(config, args.schedule, steps, paper_steps, device)
    instantiate_from_config(config.model)
    if key is None:
        variant = Variant(row, ROW_LABELS[row], config)
    else:
        variant = Variant(variant_name(row, key, value), f"{ROW_LABELS[row]}, {key}={value}", config,
                          {"key": key, "value": value})
    return _PlannedVariant(variant, paper_config, steps, paper_steps)


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


def _plan_notes(planned: Sequence[_PlannedVariant], schedule: str, device: torch.device) -> tuple[str, ...]:
    """The schedule notes of the ablation's ArcVQ-VAE row, else of the first ArcQuantizer variant; on
    CUDA also the note that the per-batch finiteness checks are off."""
    arc = [p for p in planned if is_arc_quantizer(p.variant.config.model.params.get("quantizer_config"))]
    shown = next((p for p in arc if p.variant.name == "arcvq" and p.variant.sweep is None), arc[0] if arc else None)
    notes = [] if shown is None else _schedule_notes(schedule, shown.paper_steps / shown.steps, shown.steps,
                                                     shown.paper_steps, shown.variant.config, shown.paper_config)
    return tuple(notes + ([CUDA_FINITENESS_NOTE] if device.type == "cuda" else []))


def make_plan(args: argparse.Namespace, command: Sequence[str]) -> Plan:
    """The :class:`Plan` of the parsed arguments (after :func:`arcvq_plugin.vqvae.reproduce.validate_args`).

    One table of the rows without ``--sweep``, else one table per sweep with each row at each
    value. Raises ValueError, TypeError or FileNotFoundError naming what is wrong, before any training.
    """
    device = resolve_device(args.device)
    sweeps = tuple(args.sweep)
    rows = tuple(dict.fromkeys(args.rows or (("arcvq",) if sweeps else ABLATION_ROWS)))
    requests = {"ablation": [(row, None, None) for row in rows]} if not sweeps else \
        {s.name: [(row, s.key, value) for row in rows for value in s.values] for s in sweeps}
    lengths: dict[str, int] = {}
    tables = {name: [_plan_variant(args, device, row, key, value, lengths) for row, key, value in entries]
              for name, entries in requests.items()}
    planned = [p for entries in tables.values() for p in entries]
    return Plan(dataset=args.dataset, rows=rows, seeds=tuple(dict.fromkeys(args.seeds)), budget=args.budget,
                schedule=args.schedule, sweeps=sweeps, limit_train=args.limit_train,
                eval_batch_size=args.eval_batch_size, lpips=args.lpips, fid=args.fid,
                progress_bar=not args.no_progress_bar, command=tuple(command), device=device,
                config_dir=args.config_dir, out=args.out,
                tables={name: tuple(p.variant for p in entries) for name, entries in tables.items()},
                steps=planned[-1].steps, paper_steps=planned[-1].paper_steps,
                schedule_notes=_plan_notes(planned, args.schedule, device))
