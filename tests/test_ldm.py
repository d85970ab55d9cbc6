"""latent-diffusion on an ArcVQ tokenizer, end to end on the CPU: the tiny first stage and a tiny
class-conditional LDM trained through ``arcvq-train``, DDIM sampling, token export and decoding."""
from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.main import main as arcvq_train
from arcvq_plugin.quantizer import ArcQuantizer
from arcvq_plugin.checkpoint_loading import load_state_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ldm"
TINY_FIRST_STAGE = str(CONFIGS / "tiny_arcvq_f4.yaml")
TINY_LDM = str(CONFIGS / "tiny_cin_ldm.yaml")
# Two training batches of 4 and one validation batch.
SMALL_DATA = ["data.params.train.params.length=8", "data.params.validation.params.length=4"]


def _run(logdir: Path, name: str) -> tuple[Path, str, str]:
    (run,) = glob.glob(str(logdir / f"*_{name}"))
    (config,) = glob.glob(str(Path(run) / "configs" / "*-project.yaml"))
    return Path(run), config, str(Path(run) / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny ArcVQ first stage, then the tiny LDM on its checkpoint, both via arcvq-train."""
    logdir = tmp_path_factory.mktemp("ldm") / "logs"
    first_trainer = arcvq_train(["--base", TINY_FIRST_STAGE, "-t", "--logdir", str(logdir), "-n", "fs",
                                 "--no-test", *SMALL_DATA])
    _, fs_config, fs_ckpt = _run(logdir, "fs")
    ldm_trainer = arcvq_train(["--base", TINY_LDM, "-t", "--logdir", str(logdir), "-n", "ldm", "--no-test",
                               *SMALL_DATA, f"model.params.first_stage_config.params.ckpt_path={fs_ckpt}"])
    ldm_run, ldm_config, ldm_ckpt = _run(logdir, "ldm")
    return {"fs_model": first_trainer.lightning_module, "fs_config": fs_config, "fs_ckpt": fs_ckpt,
            "ldm": ldm_trainer.lightning_module, "ldm_run": ldm_run, "ldm_config": ldm_config,
            "ldm_ckpt": ldm_ckpt, "tmp": logdir.parent}


def test_first_stage_trains_with_arcvq_through_the_cli(runs):
    model = runs["fs_model"]
    from arcvq_plugin.ldm import VQModel

    assert isinstance(model, VQModel) and isinstance(model.quantize, ArcQuantizer)
    assert int(model.quantize.clock) == 2  # one codebook-optimizer step per batch
    assert model.optimizer_steps == 2 and model.global_step == 4  # Lightning counts both optimizers
    norms = model.quantize.embedding.weight.norm(dim=1)
    assert bool((norms <= model.quantize.radius * (1 + 1e-5)).all())
    state = load_state_dict(runs["fs_ckpt"])
    assert int(state["quantize.clock"]) == 2
    assert torch.equal(state["quantize.embedding.weight"], model.quantize.embedding.weight.detach().cpu())


def test_ldm_trains_on_the_frozen_first_stage(runs):
    import ldm.models.autoencoder as ldm_autoencoder

    ldm, first = runs["ldm"], runs["fs_model"]
    stage = ldm.first_stage_model
    assert isinstance(stage, ldm_autoencoder.VQModelInterface) and isinstance(stage.quantize, ArcQuantizer)
    assert torch.equal(stage.quantize.embedding.weight, first.quantize.embedding.weight)
    assert int(stage.quantize.clock) == 2 and not stage.quantize.embedding.weight.requires_grad
    assert ldm.global_step == 2
    assert float(ldm.scale_factor) != 1.0  # scale_by_std ran in on_train_batch_start(batch, batch_idx)
    logged = {Path(p).name.split("_gs-")[0] for p in glob.glob(str(runs["ldm_run"] / "images" / "val" / "*.png"))}
    assert {"samples", "samples_x0_quantized", "conditioning", "reconstruction"} <= logged


def test_decode_first_stage_paths_and_code_ids(runs, monkeypatch):
    from arcvq_plugin.tokens import decode_indices, encode_indices

    ldm = runs["ldm"].eval()
    stage = ldm.first_stage_model
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = encode_indices(stage, images)
    by_ids = ldm.decode_first_stage(ids, predict_cids=True)  # predict_cids: get_codebook_entry(ids, None)
    assert torch.allclose(by_ids, decode_indices(stage, ids), atol=1e-5)

    latent = torch.randn(2, 4, 8, 8)
    quantised = ldm.decode_first_stage(latent)
    forward = stage.quantize.forward
    calls = []
    monkeypatch.setattr(stage.quantize, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    unquantised = ldm.decode_first_stage(latent, force_not_quantize=True)
    assert not calls  # honoured only because LatentDiffusion sees an ldm VQModelInterface
    assert torch.allclose(unquantised, stage.decode(1.0 / ldm.scale_factor * latent, force_not_quantize=True))
    assert torch.allclose(ldm.decode_first_stage(latent), quantised) and len(calls) == 1
    assert not torch.allclose(quantised, unquantised)


def test_quantize_denoised_snaps_latents_in_latent_units(runs, monkeypatch):
    ldm = runs["ldm"].eval()
    stage, scale = ldm.first_stage_model, ldm.scale_factor
    z = torch.randn(2, 4, 8, 8)
    expected = stage.quantize(z)[0] * scale
    with ldm.latent_quantizer():
        snapped, _, (_, _, indices) = stage.quantize(z * scale)
    assert torch.allclose(snapped, expected) and isinstance(stage.quantize, ArcQuantizer)
    assert indices.numel() == 2 * 8 * 8

    seen = []
    original = ArcQuantizer.forward
    monkeypatch.setattr(ArcQuantizer, "forward", lambda self, x, *a, **k: seen.append(x.shape) or original(self, x))
    cond = ldm.get_learned_conditioning({"class_label": torch.tensor([1, 2])})
    ldm.sample_log(cond, 2, ddim=True, ddim_steps=2, eta=0.0)
    assert not seen
    latents, _ = ldm.sample_log(cond, 2, ddim=True, ddim_steps=2, eta=0.0, quantize_denoised=True)
    assert seen == [(2, 4, 8, 8)] * 2 and latents.shape == (2, 4, 8, 8)  # ldm's DDIM dropped the flag


def test_sample_ldm_writes_grid_and_fid_folder(runs):
    from arcvq_plugin.ldm.sample import main as sample_main

    out = runs["tmp"] / "samples"
    args = ["--config", runs["ldm_config"], "--ckpt", runs["ldm_ckpt"], "--out", str(out), "--steps", "3",
            "--eta", "0.5", "--scale", "1.4", "--classes", "0", "4", "--n_per_class", "2", "--batch_size", "3"]
    assert sample_main(args) == 0
    images = sorted(p.name for p in (out / "images").glob("*.png"))
    assert images == ["000000_class0.png", "000001_class0.png", "000002_class4.png", "000003_class4.png"]
    from PIL import Image

    assert Image.open(out / "grid.png").size == (2 * 34 + 2, 2 * 34 + 2)
    with pytest.raises(SystemExit, match="--force"):
        sample_main(args)


def test_sampling_options_are_validated(runs):
    from arcvq_plugin.ldm.sample import sample_images

    ldm = runs["ldm"].eval()
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 50\], got 51"):
        sample_images(ldm, class_labels=[0], steps=51)
    with pytest.raises(ValueError, match="class_labels must be in"):
        sample_images(ldm, class_labels=[7], steps=2)
    with pytest.raises(ValueError, match="needs class_labels"):
        sample_images(ldm, num_samples=2, steps=2)
    with pytest.raises(ValueError, match="arcvq_plugin.ldm.LatentDiffusion"):
        sample_images(ldm.first_stage_model, class_labels=[0])


def test_class_dropout_uses_the_unconditional_class(runs):
    ldm = runs["ldm"]
    assert ldm.unconditional_class == 6 and ldm.class_dropout_prob == 0.1
    ldm.class_dropout_prob = 0.5
    try:
        labels = torch.zeros(4000, dtype=torch.long)
        dropped = ldm._drop_class_labels({"class_label": labels})["class_label"]
    finally:
        ldm.class_dropout_prob = 0.1
    assert set(dropped.unique().tolist()) == {0, 6}
    assert 0.45 < float((dropped == 6).float().mean()) < 0.55
    uncond = ldm.unconditional_conditioning(3)
    assert uncond.shape == (3, 1, 32)


def test_ldm_options_are_validated(runs):
    config = load_configs([runs["ldm_config"]])
    for key, value, message in (("class_dropout_prob", 1.0, "class_dropout_prob"),
                                ("unconditional_class", 7, "unconditional_class")):
        broken = OmegaConf.merge(config.model, {"params": {key: value}})
        with pytest.raises(ValueError, match=message):
            instantiate_from_config(broken)


def test_tokens_round_trip_equals_the_reconstruction(runs):
    from arcvq_plugin.data.sample_images import SampleImagesValidation
    from arcvq_plugin.tokens import decode_indices, encode_dataset

    model = runs["fs_model"].eval()
    dataset = SampleImagesValidation(size=32, length=3)
    grids = encode_dataset(model, dataset, batch_size=2)
    assert grids.shape == (3, 8, 8) and grids.dtype == np.uint8 and grids.max() < 32
    images = torch.stack([torch.from_numpy(dataset[i]["image"]) for i in range(3)]).permute(0, 3, 1, 2)
    with torch.no_grad():
        reconstruction, _ = model(images)
    decoded = decode_indices(model, torch.from_numpy(grids.astype(np.int64)))
    assert torch.allclose(decoded, reconstruction, atol=1e-5)


def test_export_tokens_cli_writes_grids_and_decodes_them(runs):
    from arcvq_plugin.tokens import main as tokens_main

    out = runs["tmp"] / "tokens" / "val.npy"
    common = ["--config", runs["fs_config"], "--ckpt", runs["fs_ckpt"], "--batch_size", "2"]
    assert tokens_main(["export", *common, "--out", str(out), "--limit", "3"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["codebook_size"] == 32 and meta["shape"] == [3, 8, 8]
    assert np.load(out).shape == (3, 8, 8)
    with pytest.raises(SystemExit, match="not overwriting"):
        tokens_main(["export", *common, "--out", str(out)])
    decoded = runs["tmp"] / "decoded"
    assert tokens_main(["decode", *common, "--tokens", str(out), "--out", str(decoded)]) == 0
    assert sorted(p.name for p in decoded.glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    with pytest.raises(SystemExit, match="not overwriting"):
        tokens_main(["decode", *common, "--tokens", str(out), "--out", str(decoded)])
