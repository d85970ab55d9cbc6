"""arcvq-reproduce --model vqgan: rows, seeds, curve points, tables, results.json, data split, bad folders,
identical architectures across rows, and curve evaluation leaving the trained weights bit-identical."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.vqgan_bench import cli
from arcvq_plugin.vqgan_bench.data import check_split, split_paths
from arcvq_plugin.vqgan_bench.training import CurveEvaluation, log_spaced_steps, train_vqgan
from arcvq_plugin.vqvae.reproduce import main as reproduce_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vqgan_bench"
TINY_OVERLAY = """
model:
  params:
    n_embed: 64
    ddconfig: {resolution: 16, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: []}
    lossconfig:
      params: {disc_start: 2, disc_num_layers: 1, disc_ndf: 8, perceptual_weight: 0.0}
data:
  params:
    batch_size: 4
    num_workers: 0
    train: {params: {size: 16, length: 16}}
    validation: {params: {size: 16, length: 8}}
lightning:
  trainer: {max_epochs: 100, max_steps: 6}
"""


@pytest.fixture()
def tiny_configs(tmp_path: Path) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    for path in CONFIGS.glob("*.yaml"):
        if path.name != cli.BUDGET_FILE:
            shutil.copy(path, folder / path.name)
    (folder / cli.BUDGET_FILE).write_text(TINY_OVERLAY)
    return folder


def _png_folder(root: Path, n: int, size: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / f"group{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size + i % 3, 3), dtype=np.uint8)).save(sub / f"img{i}.png")
    return root


def test_rows_differ_only_in_quantizer_config_and_share_the_architecture():
    rows = cli.available_rows(CONFIGS)
    assert set(cli.DEFAULT_ROWS) <= set(rows)
    shapes = {}
    for row in rows:
        config = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{row}.yaml"))
        config["model"]["params"].pop("quantizer_config", None)
        base = OmegaConf.to_container(OmegaConf.load(CONFIGS / "vq.yaml"))
        assert config == base, row
        model = instantiate_from_config(cli.row_config(CONFIGS, row).model)
        shapes[row] = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("quantize.")}
    assert all(s == shapes["vq"] for s in shapes.values())


def test_split_is_file_disjoint_and_deterministic(tmp_path: Path):
    root = _png_folder(tmp_path / "images", 30)
    split = split_paths(root)
    assert split["validation"] and split["train"]
    assert not set(split["train"]) & set(split["validation"])
    assert sorted(split["train"] + split["validation"]) == sorted(root.rglob("*.png"))
    assert split_paths(root) == split
    (root / "train").mkdir()
    (root / "validation").mkdir()
    _png_folder(root / "train", 2, seed=1)
    _png_folder(root / "validation", 2, seed=2)
    explicit = split_paths(root)
    assert all("train" in p.parts for p in explicit["train"]) and len(explicit["validation"]) == 2


@pytest.mark.parametrize("case", ["empty", "not_image", "too_few", "missing"])
def test_bad_folders_refused_before_training(tmp_path: Path, tiny_configs: Path, case: str, monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    if case == "not_image":
        _png_folder(root, 12)
        (root / "broken.png").write_bytes(b"not a png")
    elif case == "too_few":
        _png_folder(root, 3)
    elif case == "missing":
        root = tmp_path / "absent"
    monkeypatch.setattr(cli, "train_vqgan", lambda *a, **k: pytest.fail("trained on a bad folder"))
    code = cli.main(["--data", str(root), "--rows", "vq", "--config-dir", str(tiny_configs),
                     "--out", str(tmp_path / "out"), "--no-fid", "--no-lpips", "--device", "cpu"])
    assert code == 2
    assert "--data" in capsys.readouterr().err


def test_curve_evaluation_leaves_training_bit_identical(tiny_configs: Path):
    config = cli.row_config(tiny_configs, "arcvq")
    config.model.params.ddconfig.dropout = 0.5  # training draws from torch's generator at every step
    pixels = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    from arcvq_plugin.vqgan_bench.training import reconstruct

    def metrics_of(model, step):
        torch.rand(3)  # evaluation that draws random numbers must not shift training's generators
        _, fake, _ = reconstruct(model, pixels)
        return {"mean": float(fake.mean())}

    curve = CurveEvaluation([1, 2, 4, 6], metrics_of)
    with_curve = train_vqgan(config.copy(), seed=3, curve=curve).model.state_dict()
    without = train_vqgan(config.copy(), seed=3).model.state_dict()
    assert [p.step for p in curve.points] == [1, 2, 4, 6]
    assert with_curve.keys() == without.keys()
    for key in with_curve:
        assert torch.equal(with_curve[key], without[key]), key


def test_log_spaced_steps():
    assert log_spaced_steps(1000) == [64, 128, 256, 512, 1000]
    assert log_spaced_steps(64) == [64]
    assert log_spaced_steps(10) == [10]


def test_end_to_end_on_a_png_folder(tmp_path: Path, tiny_configs: Path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "PROGRESS_EVERY", 5)  # a heartbeat line at step 5, between curve steps 4 and 6
    data = _png_folder(tmp_path / "pngs", 24)
    out = tmp_path / "out"
    argv = ["--model", "vqgan", "--data", str(data), "--rows", "vq", "arcvq", "--seeds", "1", "2",
            "--eval-steps", "2", "4", "--config-dir", str(tiny_configs), "--out", str(out), "--device", "cpu",
            "--no-fid"]
    assert reproduce_main(argv) == 0
    printed = capsys.readouterr().out
    assert "[vqgan] arcvq seed 2: step 4/6" in printed
    assert "[vqgan] vq seed 1: step 5/6, " in printed and " at step 4" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["eval_steps"] == [2, 4, 6]
    assert set(results["tables"]) == {"vqgan", "step_2", "step_4", "step_6"}
    final = results["tables"]["vqgan"]
    assert final["reference"] == "arcvq" and set(final["rows"]) == {"vq", "arcvq"}
    assert set(final["rows"]["vq"]["seeds"]) == {"1", "2"}
    for row in ("vq", "arcvq"):
        for seed in ("1", "2"):
            curve = results["curves"][row][seed]
            assert [p["step"] for p in curve] == [2, 4, 6]
            for key in ("psnr", "ssim", "lpips", "rfid", "usage", "perplexity", "dead_codes", "mean_code_norm"):
                assert key in curve[-1]
    assert final["differences"]["vq"]["psnr"]["n"] == 2
    assert final["differences"]["vq"]["psnr"]["interval"] is not None
    table = (out / "table.md").read_text()
    assert "minus each row at every evaluated step" in table and "Evaluators:" in table
    assert "ArcVQ-VQGAN minus" in table and "| VQGAN (VectorQuantizer2) |" in table
    for name in ("learning_curves.png", "reconstructions.png", "figure2_code_norms.png",
                 "figure3_pairwise_distances.png", "runs/vq_seed1.pt", "runs/arcvq_seed2.pt"):
        assert (out / name).is_file(), name
    # a restarted run reuses every finished row and seed
    assert reproduce_main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 4


@pytest.mark.parametrize("row", cli.available_rows(CONFIGS))
def test_every_row_trains_through_the_discriminator_start_and_evaluates(tiny_configs: Path, row: str):
    config = cli.row_config(tiny_configs, row, max_steps=3)  # the discriminator starts after step 2
    if row == "fsq":
        config.model.params.quantizer_config.params.levels = [4, 4, 4]  # the tiny overlay's 64 codes
    pixels = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    metrics_of = cli._evaluator(pixels, lpips=False, fid=False, device=torch.device("cpu"), provenance={})
    curve = CurveEvaluation([3], metrics_of)
    trained = train_vqgan(config, seed=0, curve=curve)
    assert trained.model.optimizer_steps == 3
    metrics = curve.points[0].metrics
    assert np.isfinite([metrics["psnr"], metrics["ssim"], metrics["mean_code_norm"]]).all()
    assert 0 < metrics["usage"] <= 1
    assert all(torch.isfinite(p).all() for p in trained.model.parameters())


def test_paper_budget_runs_the_f8_imagenet_tokenizer_config_on_a_folder(tmp_path: Path, capsys):
    """--budget paper: the rows as they are (f8, 256 px, K=1024, D=16) on --data, a step on the CPU."""
    data = _png_folder(tmp_path / "pngs", 12, size=40)
    out = tmp_path / "out"
    argv = ["--model", "vqgan", "--budget", "paper", "--data", str(data), "--rows", "arcvq", "--max-steps", "1",
            "--batch-size", "1", "--out", str(out), "--device", "cpu", "--no-fid", "--no-lpips"]
    assert reproduce_main(argv) == 0
    assert "[vqgan] arcvq seed 1: step 1/1" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["budget"] == "paper" and results["settings"]["steps"] == 1
    assert "256 px" in results["tables"]["vqgan"]["title"]
    saved = torch.load(out / "runs" / "arcvq_seed1.pt", weights_only=True)
    assert saved["codebook"].shape == (1024, 16)
    assert saved["reconstructions"].shape[-2:] == (256, 256)


def test_unknown_rows_and_a_foreign_out_folder_are_refused(tmp_path: Path, tiny_configs: Path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "train_vqgan", lambda *a, **k: pytest.fail("trained despite a bad argument"))
    base = ["--config-dir", str(tiny_configs), "--device", "cpu", "--no-fid", "--no-lpips"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--rows", "vq", "nope", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--rows must be among" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file")
    assert cli.main([*base, "--rows", "vq", "--out", str(foreign)]) == 2
    assert "holds no earlier VQGAN comparison" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
