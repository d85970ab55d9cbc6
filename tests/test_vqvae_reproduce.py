"""arcvq-reproduce end to end on tiny budgets: tables with seed statistics, sweeps, the relative
schedule, the --device/--budget path, checkpoints that arcvq-tokens reads, figures, refusals."""
import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.schedules import arc_weight, radius
from arcvq_plugin.vqvae.reproduce import build_parser, main

TINY = ["--limit-train", "96", "--limit-test", "24", "--batch-size", "32", "--max-steps", "2", "--no-progress-bar"]


def _png(path):
    with Image.open(path) as image:
        return image.format == "PNG" and min(image.size) > 50


def _quantizer_state(out, stem):
    return torch.load(out / "checkpoints" / f"{stem}.ckpt", weights_only=True)["state_dict"]


def test_reproduce_end_to_end_then_refuses_to_overwrite(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    argv = ["--rows", "vq", "arcvq", "--seeds", "1", "2", "--device", "cpu", "--out", str(out), *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| VQ-VAE | 1 |" in printed and "| ArcVQ-VAE | 2 |" in printed and "28.01" in printed  # paper beside
    assert "| ArcVQ-VAE | 2 |" in printed and " ± " in printed  # mean +- std over the two seeds

    results = json.loads((out / "results.json").read_text())
    settings = results["settings"]
    assert settings["n_test_images"] == 24 and settings["rows"] == ["vq", "arcvq"] and settings["steps"] == 2
    assert settings["budget"] == "reduced" and settings["paper_steps"] == 29_500 and settings["device"] == "cpu"
    table = results["tables"]["ablation"]
    assert table["reference"] == "arcvq" and set(table["differences"]) == {"vq"}
    for row in ("vq", "arcvq"):
        seeds = table["rows"][row]["seeds"]
        for seed in ("1", "2"):
            metrics = seeds[seed]
            assert 0.0 < metrics["psnr"] < 100.0 and -1.0 <= metrics["ssim"] <= 1.0
            assert 0.0 < metrics["usage"] <= 1.0 and metrics["dead_codes"] == 512 - metrics["used_codes"]
        assert table["rows"][row]["mean"]["psnr"] == pytest.approx((seeds["1"]["psnr"] + seeds["2"]["psnr"]) / 2)
    psnr = table["differences"]["vq"]["psnr"]
    by_seed = [table["rows"]["arcvq"]["seeds"][s]["psnr"] - table["rows"]["vq"]["seeds"][s]["psnr"] for s in ("1", "2")]
    assert psnr["differences"] == pytest.approx(by_seed) and "fewer than 3 seeds" in psnr["note"]
    assert table["rows"]["arcvq"]["seeds"]["1"]["clipping"]["steps"] == 2
    log = (out / "clipping" / "arcvq_seed2.csv").read_text().splitlines()
    assert log[0] == "step,clipped_fraction" and [line.split(",")[0] for line in log[1:]] == ["1", "2"]
    assert float(log[-1].split(",")[1]) == pytest.approx(table["rows"]["arcvq"]["seeds"]["2"]["clipped_last"], abs=1e-6)
    assert not (out / "clipping" / "vq_seed1.csv").exists()
    assert table["rows"]["vq"]["seeds"]["1"]["clipping"] is None
    assert (out / "table.md").read_text() in printed

    figures = results["figures"]
    per_row = {f"{kind}_{row}" for kind in ("usage", "norms", "distances") for row in ("vq", "arcvq")}
    assert set(figures) == {"reconstructions", "figure2_code_norms", "figure3_pairwise_distances",
                            "bound_clipping"} | per_row
    assert all(_png(path) for path in figures.values())

    # the checkpoints arcvq-reproduce writes are arcvq-tokens tokenizers (config + weights)
    from arcvq_plugin.tokens import load_token_grids, main as tokens_main

    stem = out / "checkpoints" / "arcvq_seed1"
    tokens = tmp_path / "tokens" / "test.npy"
    assert tokens_main(["export", "--config", f"{stem}.yaml", "--ckpt", f"{stem}.ckpt", "--split", "test",
                        "--out", str(tokens), "--batch_size", "12"]) == 0
    grids, meta = load_token_grids(tokens)
    assert grids.shape == (24, 7, 7) and meta["codebook_size"] == 512

    before = (out / "results.json").read_bytes()
    assert main(argv) == 2  # an earlier run is not overwritten without --force
    assert (out / "results.json").read_bytes() == before


def test_sweeps_of_two_values_on_the_paper_budget_write_both_rows(tmp_path, capsys, one_thread):
    out = tmp_path / "sweep"
    assert main(["--sweep", "arc_top_k=1,3", "--sweep", "arc_m=0.1,1.0", "--budget", "paper", "--device", "cpu",
                 "--out", str(out), "--limit-train", "64", "--limit-test", "16", "--max-steps", "2",
                 "--no-progress-bar"]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["batch_size"] == 1024 and results["settings"]["steps"] == 2  # the paper's batch
    top_k, margin = results["tables"]["sweep_arc_top_k"], results["tables"]["sweep_arc_m"]
    assert list(top_k["rows"]) == ["arcvq.arc_top_k=1", "arcvq.arc_top_k=3"]
    assert top_k["reference"] == "arcvq.arc_top_k=3" and margin["reference"] == "arcvq.arc_m=0.1"  # the config's value
    for k in (1, 3):
        config = OmegaConf.load(out / "checkpoints" / f"arcvq.arc_top_k_{k}_seed1.yaml")
        assert config.model.params.quantizer_config.params.arc_top_k == k
        assert int(_quantizer_state(out, f"arcvq.arc_top_k_{k}_seed1")["quantize.clock"]) == 2
    # arc_m = 0.1 is the arcvq config itself, already trained as arc_top_k = 3: reused, not retrained
    reused = margin["rows"]["arcvq.arc_m=0.1"]["seeds"]["1"]
    assert reused["same_run_as"] == "arcvq.arc_top_k_3_seed1" and reused["psnr"] == top_k["rows"]["arcvq.arc_top_k=3"]["seeds"]["1"]["psnr"]
    assert not (out / "checkpoints" / "arcvq.arc_m_0.1_seed1.ckpt").exists()
    assert OmegaConf.load(out / "checkpoints" / "arcvq.arc_m_1.0_seed1.yaml").model.params.quantizer_config.params.arc_m == 1.0
    assert "Table 4" in printed and "28.07" in printed and "27.93" not in printed  # MNIST numbers, not CIFAR-10's
    for suffix in ("_sweep_arc_top_k", "_sweep_arc_m"):
        assert _png(out / f"figure2_code_norms{suffix}.png") and _png(out / f"figure3_pairwise_distances{suffix}.png")


def test_relative_schedule_ends_at_the_papers_lambda_and_radius(tmp_path, capsys, one_thread):
    out = tmp_path / "relative"
    assert main(["--rows", "arcvq", "--schedule", "relative", "--device", "cpu", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "schedule relative (DEVIATION from the paper)" in printed and "a deviation from the paper" in printed
    params = OmegaConf.load(out / "checkpoints" / "arcvq_seed1.yaml").model.params.quantizer_config.params
    assert (params.schedule_horizon, params.schedule_reference_horizon, params.schedule_rescale) == (2, 29_500, "both")
    state = _quantizer_state(out, "arcvq_seed1")
    clock = state["quantize.clock"]
    assert int(clock) == 2  # T = 2 steps: lambda(T), R(T) are the paper's at 29,500 steps
    torch.testing.assert_close(state["quantize.effective_rates"], torch.tensor([3e-4 * 29_500 / 2, 5e-4 * 29_500 / 2]))
    paper_end = torch.tensor(29_500)
    assert float(arc_weight(1.0, 5e-4 * 29_500 / 2, clock)) == pytest.approx(float(arc_weight(1.0, 5e-4, paper_end)), rel=1e-5)
    assert float(radius(3e-4 * 29_500 / 2, clock)) == pytest.approx(float(radius(3e-4, paper_end)), rel=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["--sweep", "nope=1,2"], "nope"),
    (["--sweep", "arc_m=5"], "arc_m"),
    (["--device", "cuda"], "--device cuda"),
])
def test_bad_requests_fail_before_any_training(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    assert main([*argv, "--out", str(out), *TINY]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--rows", "nope"], ["--batch-size", "-1"], ["--budget", "huge"],
                                  ["--schedule", "fast"], ["--sweep", "arc_top_k"], ["--sweep", "arc_top_k=1,1"]])
def test_reproduce_rejects_bad_options(argv):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_cvq_and_rotation_rows_are_offered_beside_the_papers_table_1():
    from arcvq_plugin.vqvae.report import PAPER_RESULTS, ROW_LABELS, paper_lines

    args = build_parser().parse_args(["--rows", "vq", "cvq", "arcvq", "arcvq_rotation"])
    assert args.rows == ["vq", "cvq", "arcvq", "arcvq_rotation"]
    assert PAPER_RESULTS["mnist"]["cvq"] == {"psnr": 27.87, "ssim": 0.9833, "lpips": 0.0222, "rfid": 1.80}
    assert PAPER_RESULTS["cifar10"]["cvq"] == {"psnr": 24.72, "ssim": 0.8978, "lpips": 0.1883, "rfid": 24.73}
    table = {"name": "ablation", "rows": {row: {"label": ROW_LABELS[row]} for row in ("cvq", "arcvq_rotation")}}
    lines = paper_lines(table, "mnist")
    assert "| CVQ-VAE | 27.87 | 0.9833 | 0.0222 | 1.80 |" in lines
    assert "| ArcVQ-VAE, rotation trick | n/a | n/a | n/a | n/a |" in lines
