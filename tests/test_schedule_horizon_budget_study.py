"""The budget study's summariser on small synthetic results.json files: seed pairing, intervals,
the markdown table, the figure, and its refusals."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from arcvq_plugin.vqvae.budget_study import collect_runs, differences, main, summary_markdown

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(folder: Path, name: str, steps: int, schedule: str, seed: int, rows: dict) -> None:
    """One arcvq-reproduce results.json: ``rows`` maps row -> (psnr, ssim, usage)."""
    table = {"rows": {row: {"label": row, "seeds": {str(seed): {"psnr": p, "ssim": s, "usage": u, "lpips": None}}}
                      for row, (p, s, u) in rows.items()}}
    (folder / name).mkdir(parents=True)
    (folder / name / "results.json").write_text(json.dumps(
        {"settings": {"steps": steps, "schedule": schedule, "seeds": [seed]}, "tables": {"ablation": table}}))


@pytest.fixture
def runs(tmp_path):
    folder = tmp_path / "runs"
    arcvq = {1: 20.0, 2: 21.0, 3: 23.0}
    for seed in (1, 2, 3):
        write_run(folder, f"L250_paper_s{seed}", 250, "paper", seed, {
            "cosine": (19.0, 0.80, 0.30), "bbnr": (19.5 + 0.1 * seed, 0.81, 0.10), "arcvq": (arcvq[seed], 0.85, 0.70)})
        write_run(folder, f"L250_relative-lambda_s{seed}", 250, "relative-lambda", seed, {"arcvq": (arcvq[seed] + 0.5, 0.86, 0.25)})
        write_run(folder, f"L250_relative_s{seed}", 250, "relative", seed,
                  {"arcvq": (arcvq[seed] + 0.5 + 0.1 * seed, 0.86, 0.25)})
    write_run(folder, "L1000_paper_s1", 1000, "paper", 1, {"cosine": (24.0, 0.9, 0.3), "arcvq": (24.4, 0.91, 0.8)})
    write_run(folder, "L1000_relative_s2", 1000, "relative", 2, {"arcvq": (25.0, 0.92, 0.4)})  # no paired seed
    (folder / "unrelated").mkdir()
    (folder / "unrelated" / "results.json").write_text(json.dumps({"settings": {}, "tables": {}}))
    return folder


def test_differences_are_paired_by_seed_with_t_intervals(runs):
    values = collect_runs(runs)
    assert sorted(values) == [250, 1000] and sorted(values[250]) == ["paper", "relative", "relative-lambda"]
    entries = {(e["steps"], e["schedule"]): e for e in differences(values)}
    lam = entries[(250, "relative-lambda")]["versus"]
    d = lam["cosine"]["psnr"]  # ArcVQ (20.5, 21.5, 23.5) - cosine 19: (1.5, 2.5, 4.5)
    assert d["differences"] == pytest.approx([1.5, 2.5, 4.5]) and d["mean"] == pytest.approx(17 / 6)
    std = math.sqrt(sum((x - 17 / 6) ** 2 for x in (1.5, 2.5, 4.5)) / 2)
    half = student_t.ppf(0.975, 2) * std / math.sqrt(3)
    assert d["interval"] == pytest.approx([17 / 6 - half, 17 / 6 + half]) and d["resolved"] is False
    assert lam["bbnr"]["psnr"]["differences"] == pytest.approx([0.9, 1.8, 3.7])
    assert lam["arcvq-paper"]["psnr"]["differences"] == pytest.approx([0.5, 0.5, 0.5])
    assert lam["arcvq-paper"]["psnr"]["resolved"] is True
    assert lam["bbnr"]["usage"]["mean"] == pytest.approx(0.15)
    assert "arcvq-paper" not in entries[(250, "paper")]["versus"]
    # rescale both against rescale arc_weight, paired by seed; only for the relative schedule with such runs
    assert entries[(250, "relative")]["versus"]["arcvq-arc_weight"]["psnr"]["differences"] == pytest.approx(
        [0.1, 0.2, 0.3])
    assert "arcvq-arc_weight" not in lam and "arcvq-arc_weight" not in entries[(1000, "relative")]["versus"]
    assert entries[(1000, "paper")]["versus"]["cosine"]["psnr"]["n"] == 1
    assert entries[(1000, "paper")]["versus"]["bbnr"]["psnr"] is None  # no bbnr run at 1000 steps
    assert entries[(1000, "relative")]["versus"]["cosine"]["psnr"] is None  # seed 2 has no paper run


def test_markdown_table_rows(runs):
    text = summary_markdown(differences(collect_runs(runs)))
    assert "ArcVQ minus cosine only" in text and "ArcVQ minus + BBNR" in text
    assert "ArcVQ minus ArcVQ with the horizon, rescale arc_weight" in text
    assert "| 250 | horizon, rescale both | 3 | +0.20 [" in text
    assert "| 250 | horizon, rescale arc_weight | 3 | +2.83 [" in text
    assert "+15.0 [" in text  # usage in percentage points
    assert "| 1000 | paper (absolute) | 1 | +0.40 (n=1) |" in text


def test_main_writes_table_figure_and_json_then_refuses_to_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "summary"
    assert main([str(runs), "--out", str(out)]) == 0
    assert (out / "budget_study_psnr.png").read_bytes()[:8] == PNG
    assert "ArcVQ minus" in (out / "budget_study.md").read_text()
    assert len(json.loads((out / "budget_study.json").read_text())) == 5
    before = (out / "budget_study.md").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--out", str(out)])
    assert exit_info.value.code == 2 and "exist; not overwriting" in capsys.readouterr().err
    assert (out / "budget_study.md").read_bytes() == before
    assert main([str(runs), "--out", str(out), "--force"]) == 0


def test_missing_or_empty_runs_folder_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "runs must be an existing folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    assert "no results.json with an arcvq row" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_documented_table_is_the_summary_of_the_committed_study():
    """docs/RESULTS.md's marked block and docs/figures/budget_study/budget_study.md are what the
    summariser writes from the committed budget_study.json: no hand-edited figure."""
    docs = Path(__file__).resolve().parents[1] / "docs"
    figures = docs / "figures" / "budget_study"
    text = summary_markdown(json.loads((figures / "budget_study.json").read_text()))
    assert (figures / "budget_study.md").read_text() == text
    results = (docs / "RESULTS.md").read_text()
    block = results.split("<!-- budget-study-table:", 1)[1].split("\n", 1)[1]
    assert block.split("<!-- end of budget-study-table -->", 1)[0].strip() == text.strip()
