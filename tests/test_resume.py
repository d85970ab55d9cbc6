"""Exact resume through arcvq-train: 2n batches straight == n batches, ``-r <logdir>``, n more."""
from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from arcvq_plugin.main import main
from arcvq_plugin.checkpoint_loading import load_checkpoint

TINY_ARCVQ = str(Path(__file__).resolve().parents[1] / "configs" / "taming" / "tiny_arcvq.yaml")
# n = 2 batches = one epoch; the discriminator trains from the second batch, so both optimizers
# carry state across the resume point. Validation (and the sanity check on resume) run as usual.
COMMON = ["--base", TINY_ARCVQ, "-t", "--enable_progress_bar", "false",
          "data.params.train.params.length=8", "data.params.validation.params.length=4",
          "model.params.lossconfig.params.disc_start=1"]


def last_checkpoint(logdir: Path, name: str) -> tuple[dict, bool]:
    (run,) = glob.glob(str(logdir / f"*_{name}"))
    loaded = load_checkpoint(str(Path(run) / "checkpoints" / "last.ckpt"))
    return loaded.content, loaded.weights_only


def assert_tensors_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_tensors_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_tensors_equal(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("resume") / "logs"
    main([*COMMON, "--logdir", str(logdir), "-n", "straight", "--max_epochs", "2"])
    main([*COMMON, "--logdir", str(logdir), "-n", "half", "--max_epochs", "1"])
    half, _ = last_checkpoint(logdir, "half")
    (half_run,) = glob.glob(str(logdir / "*_half"))
    trainer = main(["-r", half_run, "-t", "--max_epochs", "2", "--enable_progress_bar", "false"])
    straight, weights_only = last_checkpoint(logdir, "straight")
    resumed, _ = last_checkpoint(logdir, "half")
    return straight, half, resumed, weights_only, trainer, Path(half_run)


def test_checkpoints_load_with_weights_only(runs):
    _, _, _, weights_only, _, _ = runs
    assert weights_only  # torch>=2.6 default: the CLI's checkpoints hold only tensors and containers


def test_resume_is_exact(runs):
    straight, half, resumed, _, _, _ = runs
    assert half["global_step"] == 4 and int(half["state_dict"]["quantize.clock"]) == 2
    assert straight["global_step"] == resumed["global_step"] == 8
    assert straight["epoch"] == resumed["epoch"]
    assert int(resumed["state_dict"]["quantize.clock"]) == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key in straight["state_dict"]:
        assert torch.equal(straight["state_dict"][key], resumed["state_dict"][key]), key
    assert_tensors_equal(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    # training did move: the half-way state differs from the end state
    assert not torch.equal(half["state_dict"]["quantize.embedding.weight"],
                           resumed["state_dict"]["quantize.embedding.weight"])
    assert len(half["optimizer_states"][1]["state"]) > 0  # the discriminator's Adam state was saved


def test_resume_keeps_the_log_dir_and_adds_a_snapshot(runs):
    _, _, _, _, trainer, half_run = runs
    assert len(glob.glob(str(half_run / "configs" / "*-project.yaml"))) == 2
    assert trainer.lightning_module.quantize.clock.item() == 4


def test_resume_from_a_checkpoint_that_pickles_objects(runs):
    """A checkpoint holding non-tensor objects (here OmegaConf hyper-parameters, as older Lightning
    releases wrote) fails torch>=2.6's weights_only load: refused without --trust-checkpoint,
    resumed with it."""
    from arcvq_plugin.checkpoint_loading import CheckpointReadError
    from omegaconf import OmegaConf

    straight, _, _, _, _, half_run = runs
    path = half_run / "checkpoints" / "pickled.ckpt"
    torch.save({**straight, "hyper_parameters": OmegaConf.create({"embed_dim": 8})}, path)
    with pytest.raises(CheckpointReadError, match="--trust-checkpoint"):
        main(["-r", str(path), "-t", "--max_epochs", "2", "--enable_progress_bar", "false"])
    with pytest.warns(UserWarning, match=r"weights_only=False"):
        trainer = main(["-r", str(path), "-t", "--max_epochs", "2", "--enable_progress_bar", "false",
                        "--trust-checkpoint"])
    assert trainer.global_step == 8
    assert torch.equal(trainer.lightning_module.quantize.embedding.weight.detach(),
                       straight["state_dict"]["quantize.embedding.weight"])
