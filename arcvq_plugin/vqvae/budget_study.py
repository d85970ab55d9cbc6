"""Summary of the schedule budget study: ArcVQ with each schedule against the baselines, per run length.

The study (``scripts/schedule_budget_study.sh``) runs ``arcvq-reproduce`` once per run length,
schedule and seed: the ``paper`` schedule's runs train the rows cosine, bbnr and arcvq, the
others (``relative-lambda``: ``schedule_rescale: arc_weight``; ``relative``: ``both``) the arcvq
row only. Every run with the same seed shares the initialisation seed and the data order, so a
difference is measured per seed (:func:`arcvq_plugin.vqvae.statistics.paired_difference`)::

    python -m arcvq_plugin.vqvae.budget_study /work/runs/budget_study --out docs/figures/budget_study

reads every ``*/results.json`` below the folder (whatever runs exist; a run length is its
``settings.steps``), and writes into ``--out``:

- ``budget_study.md``: per run length and schedule, ArcVQ minus cosine only and minus + BBNR (and
  minus ArcVQ with the paper's schedule; for rescale both, minus rescale arc_weight) for PSNR (dB),
  SSIM and codebook usage (percentage points), each as the mean over seeds with its 95% t-interval
  (``*``: the interval excludes 0);
- ``budget_study_psnr.png``: the PSNR differences against the run length (log x), one line per
  schedule, one panel per baseline;
- ``budget_study.json``: every paired difference (seeds, per-seed values, mean, interval).

Existing outputs are refused (exit 2) unless ``--force``; the files are written together or not at all.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence

from arcvq_plugin.atomic_outputs import AtomicOutputs, OutputError, check_output_path
from arcvq_plugin.extras import require_extra
from arcvq_plugin.markdown import markdown_table
from arcvq_plugin.vqvae.statistics import CONFIDENCE, mean_std, paired_difference

__all__ = ["BASELINES", "METRICS", "SCHEDULE_LABELS", "collect_runs", "differences", "main",
           "save_psnr_figure", "summary_markdown"]

SCHEDULE_LABELS = {"paper": "paper (absolute)",
                   "relative-lambda": "horizon, rescale arc_weight",
                   "relative": "horizon, rescale both"}
"""``arcvq-reproduce --schedule`` value -> how the tables name it (the ArcQuantizer option it uses)."""
BASELINES = {"cosine": "cosine only", "bbnr": "+ BBNR"}
METRICS = {"psnr": ("PSNR (dB)", 1.0, "{:+.2f}"), "ssim": ("SSIM", 1.0, "{:+.4f}"),
           "usage": ("usage (pp)", 100.0, "{:+.1f}")}
"""metric -> (column name, scale of the shown value, format)."""
OUTPUT_NAMES = ("budget_study.md", "budget_study_psnr.png", "budget_study.json")

Values = dict  # {steps: {schedule: {row: {seed: {metric: value}}}}}


def collect_runs(folder: Path) -> Values:
    """Every ``results.json`` below ``folder``, as ``{steps: {schedule: {row: {seed: {metric: value}}}}}``.

    Files without the ablation table (another command's output) are skipped; two files giving the
    same (steps, schedule, row, seed) with different values are a ValueError.
    """
    values: Values = {}
    for path in sorted(Path(folder).glob("**/results.json")):
        results = json.loads(path.read_text())
        settings, table = results.get("settings", {}), results.get("tables", {}).get("ablation")
        if table is None or "steps" not in settings:
            continue
        schedule = settings.get("schedule", "paper")
        for row, entry in table["rows"].items():
            for seed, metrics in entry["seeds"].items():
                slot = values.setdefault(int(settings["steps"]), {}).setdefault(schedule, {}).setdefault(row, {})
                picked = {m: metrics.get(m) for m in METRICS}
                if int(seed) in slot and slot[int(seed)] != picked:
                    raise ValueError(f"{path}: steps {settings['steps']}, schedule {schedule}, row {row}, seed "
                                     f"{seed} was already read with other values")
                slot[int(seed)] = picked
    return values


def _metric(seeds: Mapping[int, Mapping], metric: str) -> dict[int, Optional[float]]:
    return {seed: values.get(metric) for seed, values in seeds.items()}


def differences(values: Values) -> list[dict]:
    """One entry per (steps, schedule) with an arcvq row: ``{"steps", "schedule", "arcvq": {metric:
    mean}, "versus": {baseline: {metric: paired_difference or None}}}``. Baselines are the paper
    runs' cosine and bbnr rows, ``"arcvq-paper"``: ArcVQ with the paper's schedule, and for the
    ``relative`` schedule (rescale both) ``"arcvq-arc_weight"``: ArcVQ with ``relative-lambda``."""
    entries = []
    for steps in sorted(values):
        by_schedule = values[steps]
        references = {name: by_schedule.get("paper", {}).get(name, {}) for name in BASELINES}
        references["arcvq-paper"] = by_schedule.get("paper", {}).get("arcvq", {})
        references["arcvq-arc_weight"] = by_schedule.get("relative-lambda", {}).get("arcvq", {})
        known = [s for s in SCHEDULE_LABELS if s in by_schedule]
        for schedule in known + sorted(set(by_schedule) - set(SCHEDULE_LABELS)):
            arcvq = by_schedule[schedule].get("arcvq")
            if not arcvq:
                continue
            versus = {}
            for name, reference in references.items():
                if name == "arcvq-paper" and schedule == "paper" or name == "arcvq-arc_weight" and (
                        schedule != "relative" or not reference):
                    continue
                versus[name] = {m: paired_difference(_metric(arcvq, m), _metric(reference, m)) for m in METRICS}
            means = {}
            for m in METRICS:
                seen = [v for v in _metric(arcvq, m).values() if v is not None]
                means[m] = mean_std(seen)[0] if seen else None
            entries.append({"steps": steps, "schedule": schedule, "seeds": sorted(arcvq), "arcvq": means,
                            "versus": versus})
    return entries


def _cell(difference: Optional[dict], metric: str) -> str:
    if difference is None:
        return "n/a"
    _, scale, fmt = METRICS[metric]
    text = fmt.format(difference["mean"] * scale)
    if difference["interval"] is None:
        return f"{text} (n={difference['n']})"
    low, high = (fmt.format(v * scale) for v in difference["interval"])
    return f"{text} [{low}, {high}]{'*' if difference['resolved'] else ''}" + (
        f" (n={difference['n']})" if difference["n"] < 3 else "")


def _label(entry: dict) -> str:
    return SCHEDULE_LABELS.get(entry["schedule"], entry["schedule"])


def summary_markdown(entries: Sequence[dict]) -> str:
    """The differences as markdown: one table per baseline, a row per (run length, schedule), then
    ArcVQ's own means."""
    lines = []
    comparisons = [("cosine", "cosine only"), ("bbnr", "+ BBNR"), ("arcvq-paper", "ArcVQ with the paper's schedule"),
                   ("arcvq-arc_weight", "ArcVQ with the horizon, rescale arc_weight")]
    header = ["steps", "ArcVQ schedule", "seeds"]
    for name, label in comparisons:
        rows = []
        for e in entries:
            if name not in e["versus"]:
                continue
            n = max((d["n"] for d in e["versus"][name].values() if d is not None), default=0)
            rows.append([str(e["steps"]), _label(e), str(n), *(_cell(e["versus"][name][m], m) for m in METRICS)])
        if rows:
            lines += [f"ArcVQ minus {label} (mean over seeds [{CONFIDENCE:.0%} t-interval], * resolved):", "",
                      *markdown_table([*header, *(METRICS[m][0] for m in METRICS)], rows,
                                      align="rlr" + "r" * len(METRICS)), ""]
    own = []
    for e in entries:
        means = e["arcvq"]
        own.append([str(e["steps"]), _label(e), str(len(e["seeds"])),
                    f"{means['psnr']:.2f}" if means["psnr"] is not None else "n/a",
                    f"{means['ssim']:.4f}" if means["ssim"] is not None else "n/a",
                    f"{100 * means['usage']:.1f}" if means["usage"] is not None else "n/a"])
    lines += ["ArcVQ's own values (mean over seeds):", "",
              *markdown_table([*header, "PSNR (dB)", "SSIM", "usage (%)"], own, align="rlrrrr")]
    return "\n".join(lines) + "\n"


def save_psnr_figure(entries: Sequence[dict], path: Path) -> None:
    """PSNR(ArcVQ) - PSNR(baseline) against the run length (log x), a line per schedule with its
    interval as error bars, a panel per baseline (cosine only, + BBNR); written to ``path`` (png)."""
    require_extra("train", "matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter, ScalarFormatter

    lengths = sorted({e["steps"] for e in entries})
    schedules = list(dict.fromkeys(e["schedule"] for e in entries))
    figure, axes = plt.subplots(1, len(BASELINES), figsize=(5 * len(BASELINES), 3.6), sharey=True)
    for axis, (name, label) in zip(axes, BASELINES.items()):
        for index, schedule in enumerate(schedules):
            points = [(e["steps"], e["versus"][name]["psnr"]) for e in entries
                      if e["schedule"] == schedule and e["versus"].get(name, {}).get("psnr") is not None]
            if not points:
                continue
            shift = 1.0 + 0.03 * (index - (len(schedules) - 1) / 2)  # side by side, intervals readable
            xs = [s * shift for s, _ in points]
            ys = [d["mean"] for _, d in points]
            errors = [[0.0 if d["interval"] is None else d["mean"] - d["interval"][0] for _, d in points],
                      [0.0 if d["interval"] is None else d["interval"][1] - d["mean"] for _, d in points]]
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=SCHEDULE_LABELS.get(schedule, schedule))
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xticks(lengths)
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("run length (codebook steps)")
        axis.set_title(f"ArcVQ minus {label}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"PSNR difference (dB), {CONFIDENCE:.0%} t-interval")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arcvq_plugin.vqvae.budget_study",
                                     description="Summarise the schedule budget study's arcvq-reproduce runs.")
    parser.add_argument("runs", type=Path, help="folder holding the runs' results.json files (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="folder for budget_study.{md,json} and _psnr.png")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.error(f"runs must be an existing folder, got {str(args.runs)!r}")
    try:
        check_output_path(args.out, "--out", force=args.force, folder=True, names=OUTPUT_NAMES)
    except OutputError as err:
        parser.error(str(err))
    entries = differences(collect_runs(args.runs))
    if not entries:
        parser.error(f"runs: no results.json with an arcvq row below {str(args.runs)!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    with AtomicOutputs({n: args.out / n for n in OUTPUT_NAMES}, force=args.force) as outputs:
        outputs.temp["budget_study.md"].write_text(summary_markdown(entries))
        save_psnr_figure(entries, outputs.temp["budget_study_psnr.png"])
        outputs.temp["budget_study.json"].write_text(json.dumps(entries, indent=1))
        outputs.publish()
    print(f"{len(entries)} (run length, schedule) entries -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
