"""Bad input to every command: a clear error naming the parameter or file and what is allowed, a
non-zero exit, nothing half-written and nothing a user owns overwritten (docs/RELIABILITY.md lists
each case with its test)."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from arcvq_plugin.checkpoint_loading import CheckpointReadError
from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.evaluation.cli import main as eval_main
from arcvq_plugin.main import main as train_main
from arcvq_plugin.tokens import main as tokens_main

REPO = Path(__file__).resolve().parents[1]
TINY_ARCVQ = REPO / "configs" / "taming" / "tiny_arcvq.yaml"
TINY_FIRST_STAGE = REPO / "configs" / "ldm" / "tiny_arcvq_f4.yaml"
TINY_LDM = REPO / "configs" / "ldm" / "tiny_cin_ldm.yaml"
NO_PERCEPTUAL = ["--no-lpips", "--no-fid", "--device", "cpu", "--ssim-win-size", "3"]

pytestmark = pytest.mark.usefixtures("one_thread")


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden and partial files included), relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def truncated_copy(path: Path, to: Path) -> Path:
    to.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return to


class NonFiniteImages(torch.utils.data.Dataset):
    """Two 16x16 RGB taming examples, one pixel of the second NaN."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        image = torch.zeros(16, 16, 3)
        if index == 1:
            image[3, 4, 0] = float("nan")
        return {"image": image}


def image_folder(root: Path, n: int = 2, mode: str = "RGB", side: int = 20) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new(mode, (side, side), color=40 * i if mode == "L" else (40 * i, 10, 200)).save(root / f"{i}.png")
    return root


def folder_data(root: Path, size: int, channels: int) -> dict:
    return {"target": "arcvq_plugin.data.image_folder.ImageFolder",
            "params": {"root": str(root), "size": size, "channels": channels}}


# ---- arcvq-train: config and command line -------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("model.params.n_embed='1024'", r"model\.params\.n_embed: arcvq_plugin\.taming\.VQModel takes an integer, "
                                    r"got '1024' \(str\); remove the quotes"),
    ("model.params.quantizer_config.params.arc_top_k=2.5",
     r"model\.params\.quantizer_config\.params\.arc_top_k: arcvq_plugin\.ArcQuantizer takes an integer, got 2\.5"),
    ("model.params.quantizer_config.params.arc_gamma_decay=.inf",
     r"arc_gamma_decay must be a finite number >= 0, got inf"),
])
def test_train_refuses_wrong_types_in_the_yaml_before_anything_is_written(tmp_path, override, message):
    config = OmegaConf.load(TINY_ARCVQ)
    config.merge_with_dotlist([override])
    path = tmp_path / "edited.yaml"
    OmegaConf.save(config, path)
    with pytest.raises(ValueError, match=message):
        train_main(["--base", str(path), "-t", "--logdir", str(tmp_path / "logs")])
    assert not (tmp_path / "logs").exists()


def test_train_without_a_config_names_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"no config: pass --base config\.yaml"):
        train_main(["-t", "--logdir", str(tmp_path / "logs")])


def test_train_resume_from_a_truncated_checkpoint_is_refused_and_left_alone(tmp_path):
    run = tmp_path / "logs" / "2000-01-01T00-00-00_tiny"
    (run / "configs").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    shutil.copy(TINY_ARCVQ, run / "configs" / "2000-01-01T00-00-00-project.yaml")
    model = instantiate_from_config(load_configs([str(TINY_ARCVQ)]).model)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "whole.ckpt")
    last = truncated_copy(tmp_path / "whole.ckpt", run / "checkpoints" / "last.ckpt")
    before, files = last.read_bytes(), listing(run)
    with pytest.raises(CheckpointReadError, match=rf"cannot read checkpoint '{last}'.*truncated or corrupt"):
        train_main(["-r", str(run), "-t"])
    assert last.read_bytes() == before and listing(run) == files


# ---- arcvq-eval ---------------------------------------------------------------------------------

def vqvae_checkpoint(tmp_path: Path, test_data: dict, in_channels: int = 3, name: str = "vqvae.ckpt") -> Path:
    """A VQ-VAE checkpoint that carries its config (model + a data module whose test split is ``test_data``)."""
    config = {
        "model": {"target": "arcvq_plugin.vqvae.VQVAE", "params": {
            "in_channels": in_channels, "hidden_channels": 8, "n_res_layers": 1, "res_hidden_channels": 4,
            "n_embed": 8, "embed_dim": 4}},
        "data": {"target": "arcvq_plugin.data.module.DataModuleFromConfig",
                 "params": {"batch_size": 2, "num_workers": 0, "test": test_data}}}
    model = instantiate_from_config(config["model"])
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    return path


def run_eval(args: list[str], capsys) -> tuple[int, str]:
    status = eval_main(args + NO_PERCEPTUAL)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("model_channels, data_channels, size, message", [
    (3, 1, 16, r"images of batch 0 have 1 \(grayscale\) channels but the model takes 3 \(RGB\)"),
    (1, 3, 16, r"images of batch 0 have 3 \(RGB\) channels but the model takes 1 \(grayscale\)"),
    (3, 3, 18, r"images of batch 0 are 18x18 pixels, but the model takes sides that are multiples of 4"),
], ids=["grayscale-into-rgb", "rgb-into-grayscale", "size"])
def test_eval_model_refuses_images_the_model_cannot_take(tmp_path, capsys, model_channels, data_channels, size,
                                                         message):
    data = folder_data(image_folder(tmp_path / "photos"), size, data_channels)
    ckpt = vqvae_checkpoint(tmp_path, data, in_channels=model_channels)
    status, err = run_eval(["model", "--ckpt", str(ckpt), "--json", str(tmp_path / "out.json")], capsys)
    assert status == 2 and re_search(message, err)
    assert not (tmp_path / "out.json").exists()


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


def test_eval_model_refuses_nan_pixels(tmp_path, capsys):
    ckpt = vqvae_checkpoint(tmp_path, {"target": "test_reliability_inputs.NonFiniteImages"})
    status, err = run_eval(["model", "--ckpt", str(ckpt), "--json", str(tmp_path / "out.json")], capsys)
    assert status == 2 and "images of batch 0 hold NaN or inf pixels" in err
    assert not (tmp_path / "out.json").exists()


def test_eval_model_refuses_truncated_and_foreign_checkpoints(tmp_path, capsys):
    ckpt = vqvae_checkpoint(tmp_path, folder_data(image_folder(tmp_path / "photos"), 16, 3))
    truncated = truncated_copy(ckpt, tmp_path / "truncated.ckpt")
    status, err = run_eval(["model", "--ckpt", str(truncated), "--json", str(tmp_path / "a.json")], capsys)
    assert status == 2 and f"cannot read checkpoint '{truncated}'" in err and "truncated or corrupt" in err
    # the checkpoint's config with another codebook size: another architecture
    status, err = run_eval(["model", "--ckpt", str(ckpt), "--json", str(tmp_path / "b.json"),
                            "--set", "model.params.n_embed=16"], capsys)
    assert status == 2 and f"checkpoint {ckpt} does not fit the model arcvq_plugin.vqvae.VQVAE" in err
    assert "quantize.embedding.weight: checkpoint (8, 4) vs model (16, 4)" in err
    assert listing(tmp_path) == sorted(["photos", "photos/0.png", "photos/1.png", "truncated.ckpt", "vqvae.ckpt"])


def test_eval_refuses_an_empty_image_folder(tmp_path, capsys):
    (tmp_path / "real").mkdir()
    (tmp_path / "fake").mkdir()
    status, err = run_eval(["folders", str(tmp_path / "real"), str(tmp_path / "fake"),
                            "--json", str(tmp_path / "out.json")], capsys)
    assert status == 2 and "no images (.png, .jpg" in err and str(tmp_path / "real") in err
    assert not (tmp_path / "out.json").exists()


def test_eval_refuses_saving_images_inside_the_evaluated_data(tmp_path, capsys):
    photos = image_folder(tmp_path / "photos")
    ckpt = vqvae_checkpoint(tmp_path, folder_data(photos, 16, 3))
    status, err = run_eval(["model", "--ckpt", str(ckpt), "--json", str(tmp_path / "out.json"),
                            "--save-images", str(photos / "eval")], capsys)
    assert status == 2 and f"--save-images '{photos / 'eval'}' overlaps the input data folder" in err
    assert listing(photos) == ["0.png", "1.png"] and not (tmp_path / "out.json").exists()


def test_eval_refuses_a_read_only_output_folder(tmp_path, capsys, read_only):
    ckpt = vqvae_checkpoint(tmp_path, folder_data(image_folder(tmp_path / "photos"), 16, 3))
    locked = read_only(tmp_path / "locked")
    status, err = run_eval(["model", "--ckpt", str(ckpt), "--json", str(locked / "out.json")], capsys)
    assert status == 2 and f"--json: cannot write into '{locked}' (read-only or not a folder)" in err
    assert listing(locked) == []


def test_eval_on_a_full_disk_leaves_no_file(tmp_path, capsys, monkeypatch):
    image_folder(tmp_path / "real")
    image_folder(tmp_path / "fake")
    out = tmp_path / "results"
    out.mkdir()
    (out / "eval.json").write_text("the user's earlier results")
    real_write_text = Path.write_text

    def write_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2])
        disk_full()

    monkeypatch.setattr(Path, "write_text", write_then_fail)
    status, err = run_eval(["folders", str(tmp_path / "real"), str(tmp_path / "fake"), "--json",
                            str(out / "eval.json"), "--force"], capsys)
    monkeypatch.undo()
    assert status == 1 and "writing the results failed" in err and "No space left on device" in err
    assert listing(out) == ["eval.json"] and (out / "eval.json").read_text() == "the user's earlier results"


# ---- arcvq-tokens -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    """The tiny ldm first stage (K = 32, f4, RGB): its checkpoint and its model config."""
    folder = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    config = load_configs([str(TINY_FIRST_STAGE)])
    model = instantiate_from_config(config.model)
    torch.save({"state_dict": model.state_dict()}, folder / "tokenizer.ckpt")
    return folder / "tokenizer.ckpt", OmegaConf.to_container(config.model)


def tokenizer_config(tmp_path: Path, model: dict, validation: dict) -> str:
    path = tmp_path / "tokenizer.yaml"
    OmegaConf.save(OmegaConf.create({"model": model, "data": {
        "target": "arcvq_plugin.data.module.DataModuleFromConfig",
        "params": {"batch_size": 2, "num_workers": 0, "validation": validation}}}), path)
    return str(path)


def export(tmp_path: Path, tokenizer_files, validation: dict, *extra: str) -> list[str]:
    ckpt, model = tokenizer_files
    return ["export", "--config", tokenizer_config(tmp_path, model, validation), "--ckpt", str(ckpt),
            "--out", str(tmp_path / "tokens" / "val.npy"), *extra]


@pytest.mark.parametrize("data_channels, size, message", [
    (1, 16, r"have 1 \(grayscale\) channels but the model takes 3 \(RGB\)"),
    (3, 18, r"are 18x18 pixels, but the model takes sides that are multiples of 4"),
    (None, 16, r"hold NaN or inf pixels"),
], ids=["grayscale-into-rgb", "size", "nan"])
def test_tokens_export_refuses_images_the_tokenizer_cannot_take(tmp_path, tokenizer_files, data_channels, size,
                                                                message):
    data = ({"target": "test_reliability_inputs.NonFiniteImages"} if data_channels is None
            else folder_data(image_folder(tmp_path / "photos"), size, data_channels))
    with pytest.raises(SystemExit, match=rf"arcvq-tokens: images {message}"):
        tokens_main(export(tmp_path, tokenizer_files, data))
    assert not (tmp_path / "tokens").exists()


def test_tokens_export_on_a_full_disk_leaves_neither_file(tmp_path, tokenizer_files, monkeypatch):
    args = export(tmp_path, tokenizer_files, folder_data(image_folder(tmp_path / "photos"), 16, 3))
    real_save = np.save

    def save_then_fail(file, array, *a, **k):
        real_save(file, array[:1])
        disk_full()

    monkeypatch.setattr(np, "save", save_then_fail)
    with pytest.raises(SystemExit, match="arcvq-tokens: writing the output failed .*No space left on device"):
        tokens_main(args)
    assert listing(tmp_path / "tokens") == []


def test_tokens_decode_refuses_indices_beyond_the_codebook_before_writing(tmp_path, tokenizer_files):
    ckpt, model = tokenizer_files
    config = tokenizer_config(tmp_path, model, folder_data(tmp_path, 16, 3))
    grids = np.array([[[0, 1], [2, 31]], [[3, 40], [5, 6]]], dtype=np.uint8)  # 40 >= K = 32
    np.save(tmp_path / "t.npy", grids)
    (tmp_path / "t.json").write_text(json.dumps({"format": "arcvq-token-grids/1", "codebook_size": 32,
                                                 "shape": [2, 2, 2], "dtype": "uint8", "source": {}}))
    decode = ["decode", "--config", config, "--ckpt", str(ckpt), "--tokens", str(tmp_path / "t.npy"),
              "--out", str(tmp_path / "decoded")]
    with pytest.raises(SystemExit, match=rf"{tmp_path / 't.npy'} must hold indices in \[0, 32\) \(the codebook "
                                         r"size\), got \[0, 40\]"):
        tokens_main(decode)
    assert not (tmp_path / "decoded").exists()
    # indices of another (larger) codebook, correctly labelled: refused against this tokenizer
    (tmp_path / "t.json").write_text(json.dumps({"format": "arcvq-token-grids/1", "codebook_size": 64,
                                                 "shape": [2, 2, 2], "dtype": "uint8", "source": {}}))
    with pytest.raises(SystemExit, match="holds indices of a 64-code codebook, the tokenizer has 32"):
        tokens_main(decode)
    assert not (tmp_path / "decoded").exists()


def test_tokens_decode_refuses_a_read_only_output_folder(tmp_path, tokenizer_files, read_only):
    ckpt, model = tokenizer_files
    np.save(tmp_path / "t.npy", np.zeros((1, 2, 2), np.uint8))
    (tmp_path / "t.json").write_text(json.dumps({"format": "arcvq-token-grids/1", "codebook_size": 32,
                                                 "shape": [1, 2, 2], "dtype": "uint8", "source": {}}))
    locked = read_only(tmp_path / "locked")
    with pytest.raises(SystemExit, match=rf"--out folder: cannot write into '{locked}'"):
        tokens_main(["decode", "--config", tokenizer_config(tmp_path, model, folder_data(tmp_path, 16, 3)),
                     "--ckpt", str(ckpt), "--tokens", str(tmp_path / "t.npy"), "--out", str(locked / "decoded")])
    assert listing(locked) == []


def test_tokens_decode_on_a_full_disk_leaves_no_image(tmp_path, tokenizer_files, monkeypatch):
    from arcvq_plugin.tokens import decode_to_folder, tokenizer_of

    ckpt, model = tokenizer_files
    tokenizer = tokenizer_of(instantiate_from_config({**model, "params": {**model["params"], "lossconfig": {
        "target": "torch.nn.Identity"}}}))
    calls = []
    real_save = Image.Image.save

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 2:
            disk_full()
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        decode_to_folder(tokenizer, np.zeros((3, 2, 2), np.uint8), tmp_path / "decoded")
    assert len(calls) == 2 and listing(tmp_path) == []


# ---- arcvq-sample-ldm ---------------------------------------------------------------------------

def test_sample_ldm_refuses_bad_options_and_unreadable_checkpoints_before_writing(tmp_path, read_only):
    from arcvq_plugin.ldm.sample import main as sample_main

    ckpt = tmp_path / "ldm.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    base = ["--config", str(TINY_LDM), "--ckpt", str(ckpt)]
    with pytest.raises(SystemExit, match="--steps must be an integer >= 1, got 0"):
        sample_main([*base, "--out", str(tmp_path / "s"), "--steps", "0"])
    with pytest.raises(SystemExit, match=rf"cannot read checkpoint '{ckpt}'.*truncated or corrupt"):
        sample_main([*base, "--out", str(tmp_path / "s")])
    locked = read_only(tmp_path / "locked")
    with pytest.raises(SystemExit, match=rf"--out: cannot write into '{locked}'"):
        sample_main([*base, "--out", str(locked / "s")])
    assert listing(tmp_path) == ["ldm.ckpt", "locked"]


def test_sample_ldm_on_a_full_disk_leaves_no_sample(tmp_path, monkeypatch):
    from arcvq_plugin.ldm.sample import save_samples

    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "notes.txt").write_text("the user's file")
    calls = []
    real_save = Image.Image.save

    def save_then_fail(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            disk_full()
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_samples(torch.rand(4, 3, 8, 8), tmp_path / "samples", labels=[0, 0, 1, 1], nrow=2)
    assert listing(tmp_path / "samples") == ["notes.txt"]


# ---- arcvq-patch --------------------------------------------------------------------------------

def test_patch_refuses_a_missing_folder_and_a_plain_folder(tmp_path, capsys):
    from arcvq_plugin.patching.cli import main as patch_main

    assert patch_main(["apply", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'} is not a folder" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "main.py").write_text("print('mine')\n")
    assert patch_main(["apply", str(tmp_path / "plain")]) == 2
    assert capsys.readouterr().err.startswith("arcvq-patch: ")
    assert (tmp_path / "plain" / "main.py").read_text() == "print('mine')\n"
    assert listing(tmp_path / "plain") == ["main.py"]


# ---- arcvq-reproduce ----------------------------------------------------------------------------

def test_reproduce_validates_folders_before_any_training(tmp_path, capsys):
    from arcvq_plugin.vqvae.reproduce import default_config_dir, main as reproduce_main

    with pytest.raises(SystemExit):
        reproduce_main(["--config-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"--config-dir {tmp_path} lacks ['mnist_vq.yaml'" in capsys.readouterr().err
    configs = tmp_path / "configs"
    shutil.copytree(default_config_dir(), configs)
    with pytest.raises(SystemExit):
        reproduce_main(["--config-dir", str(configs), "--out", str(configs / "results")])
    assert f"--out '{configs / 'results'}' overlaps the input --config-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce_main(["--seeds", "-1", "--out", str(tmp_path / "out")])
    assert "must be an integer in [0, 2**32)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (configs / "results").exists()
