"""arcvq-eval on two folders and on trained models given as (config, checkpoint, split)."""
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from arcvq_plugin.compat import install_lightning_shims
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.evaluation import evaluate_folders, load_image_folder, save_image_folder
from arcvq_plugin.evaluation.cli import main as eval_main

REPO = Path(__file__).resolve().parents[1]
NO_PERCEPTUAL = ["--no-lpips", "--no-fid", "--device", "cpu"]


def _write_pair(root: Path, channels: int = 3):
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(4, channels, 16, 16, generator=generator)
    fake = (real + 0.1 * torch.randn(real.shape, generator=generator)).clamp(0, 1)
    save_image_folder(real, root / "real")
    save_image_folder(fake, root / "fake")
    return real, fake


def test_folders_cli_writes_json_and_refuses_overwrite(tmp_path, capsys):
    real, fake = _write_pair(tmp_path, channels=1)
    out = tmp_path / "eval.json"
    args = ["folders", str(tmp_path / "real"), str(tmp_path / "fake"), "--json", str(out), "--ssim-win-size", "7", "--name", "row"]
    assert eval_main(args + NO_PERCEPTUAL) == 0
    result = json.loads(out.read_text())
    direct = evaluate_folders(tmp_path / "real", tmp_path / "fake", lpips=False, fid=False, ssim_win_size=7)
    assert result["psnr"] == pytest.approx(direct["psnr"]) and result["ssim"] == pytest.approx(direct["ssim"])
    assert result["n_images"] == 4 and result["image_shape"] == [3, 16, 16]  # read as RGB like the reference
    assert "| row |" in capsys.readouterr().out
    before = out.read_bytes()
    assert eval_main(args + NO_PERCEPTUAL) == 2  # the JSON exists: refused without --force
    assert out.read_bytes() == before and "--force" in capsys.readouterr().err
    assert eval_main(args + NO_PERCEPTUAL + ["--force"]) == 0


def test_folders_roundtrip_and_name_mismatch(tmp_path):
    real, _ = _write_pair(tmp_path)
    loaded = load_image_folder(tmp_path / "real")
    assert torch.allclose(loaded, torch.round(real * 255) / 255, atol=1e-6)
    with pytest.raises(ValueError, match="not overwriting"):
        save_image_folder(real, tmp_path / "real")
    (tmp_path / "fake" / "000000.png").rename(tmp_path / "fake" / "other.png")
    with pytest.raises(ValueError, match="names differ"):
        evaluate_folders(tmp_path / "real", tmp_path / "fake", lpips=False, fid=False)


def test_model_cli_taming_vqmodel_config_and_checkpoint(tmp_path):
    install_lightning_shims()
    config_path = REPO / "configs" / "taming" / "tiny_arcvq.yaml"
    config = load_configs([str(config_path)])
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, ckpt)
    out = tmp_path / "model.json"
    args = ["model", "--base", str(config_path), "--ckpt", str(ckpt), "--split", "validation", "--max-images", "6",
            "--json", str(out), "--ssim-win-size", "7", "--save-images", str(tmp_path / "images")]
    assert eval_main(args + NO_PERCEPTUAL) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 6 and result["image_shape"] == [3, 32, 32]
    codebook = result["codebook"]
    assert codebook["n_e"] == 32 and codebook["n_tokens"] == 6 * 8 * 8
    assert 0 < codebook["usage"] <= 1 and codebook["dead_codes"] == 32 - codebook["used_codes"]
    # the saved folders reproduce the same PSNR through the folder path
    folders = evaluate_folders(tmp_path / "images" / "real", tmp_path / "images" / "fake", lpips=False, fid=False, ssim_win_size=7)
    assert folders["psnr"] == pytest.approx(result["psnr"], rel=1e-9)


def test_model_cli_checkpoint_with_embedded_config(tmp_path):
    config = OmegaConf.create({
        "model": {"target": "arcvq_plugin.vqvae.VQVAE", "params": {
            "in_channels": 3, "hidden_channels": 16, "n_res_layers": 1, "res_hidden_channels": 8,
            "n_embed": 16, "embed_dim": 4}},
        "data": {"target": "arcvq_plugin.data.module.DataModuleFromConfig", "params": {
            "batch_size": 3, "num_workers": 0,
            "test": {"target": "arcvq_plugin.data.sample_images.SampleImagesValidation", "params": {"size": 16, "length": 5}}}},
    })
    torch.manual_seed(0)
    model = instantiate_from_config(config.model)
    ckpt = tmp_path / "vqvae.ckpt"
    torch.save({"state_dict": model.state_dict(), "config": OmegaConf.to_container(config)}, ckpt)
    out = tmp_path / "vqvae.json"
    assert eval_main(["model", "--ckpt", str(ckpt), "--json", str(out), "--ssim-win-size", "3"] + NO_PERCEPTUAL) == 0
    result = json.loads(out.read_text())
    assert result["n_images"] == 5 and result["codebook"]["n_e"] == 16 and result["codebook"]["n_tokens"] == 5 * 4 * 4
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"encoder.nonexistent": torch.zeros(1)}, "config": OmegaConf.to_container(config)}, bad)
    assert eval_main(["model", "--ckpt", str(bad), "--json", str(tmp_path / "bad.json")] + NO_PERCEPTUAL) == 2
