"""The training route loses nothing and says what happened: exit statuses, ``last.ckpt`` always the
newest state (after moving a log folder, after a SIGUSR1 checkpoint), atomic checkpoint writes (a
full disk leaves no file of any name), a crash checkpoint of a consistent state, SIGUSR1 before fit,
and checkpoints that pickle calls refused unless ``--trust-checkpoint``."""
from __future__ import annotations

import glob
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from arcvq_plugin.checkpoint_loading import CheckpointReadError, load_checkpoint
from arcvq_plugin.checkpoint_writing import CheckpointWriteError, write_atomically
from arcvq_plugin.data.module import DataModuleFromConfig
from arcvq_plugin.evaluation.cli import main as eval_main
from arcvq_plugin.ldm.checkpoints import load_for_inference
from arcvq_plugin.main import cli

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCVQ = str(ROOT / "configs" / "taming" / "tiny_arcvq.yaml")
# Two training batches of 4 and one validation batch per epoch; the autoencoder and the
# discriminator each step once per batch, so global_step grows by 2 per batch.
SMALL_DATA = ["data.params.train.params.length=8", "data.params.validation.params.length=4"]


def run_dir(logdir: Path) -> Path:
    (found,) = glob.glob(str(logdir / "*_tiny_arcvq"))
    return Path(found)


def train(logdir: Path, *args: str) -> int:
    return cli(["--base", TINY_ARCVQ, "-t", "--logdir", str(logdir), *SMALL_DATA, *args])


def last_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


class SignalAfterFirstBatch(pl.Callback):
    """SIGUSR1 to this process after the first training batch of epoch 0."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)


class FailAtBatchStart(pl.Callback):
    """Raises at the start of the second training batch (before any optimizer step of it)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            raise ValueError("synthetic failure before the optimizer step")  # no config error: exit 1


class FailAfterOptimizerStep(pl.Callback):
    """Raises after the autoencoder step of the second batch, before the discriminator's."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 3:
            raise RuntimeError("synthetic failure between the two optimizer steps")


class SignalDuringSetup(DataModuleFromConfig):
    """The data module of the tiny config, sending SIGUSR1 to this process in ``setup`` (before fit)."""

    def setup(self, stage=None):
        os.kill(os.getpid(), signal.SIGUSR1)
        super().setup(stage)


# 1. exit statuses -----------------------------------------------------------------------------

def test_exit_status_is_0_after_success_2_on_config_error_1_on_failure(tmp_path, capsys):
    assert train(tmp_path / "ok", "--no-test") == 0
    assert train(tmp_path / "bad", "model.params.no_such_key=1") == 2
    assert "arcvq-train: error:" in capsys.readouterr().err
    assert cli(["--no-such-option"]) == 2
    assert train(tmp_path / "fail", "lightning.callbacks.fail.target=test_reliability_training.FailAtBatchStart") == 1
    assert "synthetic failure" in capsys.readouterr().err


# 2. last.ckpt is the newest state -------------------------------------------------------------

def test_moved_log_folder_resumes_into_last_ckpt(tmp_path):
    assert train(tmp_path, "--max_epochs", "1") == 0
    moved = tmp_path / "moved"
    shutil.move(str(run_dir(tmp_path)), moved)
    assert cli(["-r", str(moved), "-t", "--max_epochs", "2"]) == 0
    state = last_state(moved)
    assert (state["epoch"], state["global_step"]) == (1, 8)
    assert sorted(p.name for p in (moved / "checkpoints").iterdir() if p.name.startswith("last")) == ["last.ckpt"]


def test_sigusr1_checkpoint_in_epoch_0_does_not_divert_later_saves(tmp_path):
    assert train(tmp_path, "--max_epochs", "2",
                 "lightning.callbacks.signal.target=test_reliability_training.SignalAfterFirstBatch") == 0
    run = run_dir(tmp_path)
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("last")) == ["last.ckpt"]
    state = last_state(run)
    assert (state["epoch"], state["global_step"]) == (1, 8)


# 3. atomic writes -----------------------------------------------------------------------------

@pytest.fixture
def small_file_system(tmp_path):
    """A 256 KiB tmpfs when this process may mount one, else None."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                             capture_output=True).returncode == 0
    yield mountpoint if mounted else None
    if mounted:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_full_disk_raises_a_clear_error_and_leaves_no_partial_file(small_file_system, tmp_path, monkeypatch):
    folder = small_file_system
    if folder is None:  # no mount allowed: the exception torch.save raises on a full disk (zip writer)
        folder = tmp_path / "simulated"

        def full_disk(obj, stream, *args, **kwargs):
            stream.write(b"PK partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

        monkeypatch.setattr(torch, "save", full_disk)
        monkeypatch.setattr(os, "statvfs", lambda path: type("S", (), {"f_bavail": 0})())
    else:
        write_atomically({"w": torch.ones(4)}, str(folder / "last.ckpt"))
    previous = (folder / "last.ckpt").read_bytes() if (folder / "last.ckpt").exists() else None
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt.*no space left on device"):
        write_atomically({"w": torch.zeros(400_000)}, str(folder / "last.ckpt"))
    if previous is not None:
        assert (folder / "last.ckpt").read_bytes() == previous
        assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    else:
        assert list(folder.iterdir()) == []


def test_write_is_atomic_and_removes_partials_of_killed_writers(tmp_path):
    target = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.partial-99999").write_bytes(b"half")
    write_atomically({"step": torch.tensor(1)}, str(target))
    assert torch.load(target, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# 7. crash checkpoint and SIGUSR1 before fit ----------------------------------------------------

def test_crash_before_the_optimizer_step_saves_the_last_complete_batch(tmp_path):
    assert train(tmp_path, "lightning.modelcheckpoint.params.save_last=false",
                 "lightning.callbacks.fail.target=test_reliability_training.FailAtBatchStart") == 1
    state = last_state(run_dir(tmp_path))
    assert state["global_step"] == 2


def test_crash_between_optimizer_steps_saves_nothing(tmp_path):
    assert train(tmp_path, "lightning.modelcheckpoint.params.save_last=false",
                 "lightning.callbacks.fail.target=test_reliability_training.FailAfterOptimizerStep") == 1
    assert not (run_dir(tmp_path) / "checkpoints" / "last.ckpt").exists()


def test_sigusr1_before_fit_is_a_message_not_death(tmp_path, capfd):
    assert train(tmp_path, "--no-test", "data.target=test_reliability_training.SignalDuringSetup") == 0
    assert "Received SIGUSR1 while not training" in capfd.readouterr().err


# 9. trust rule --------------------------------------------------------------------------------

class PlantedCall:
    """Unpickling it creates the file ``marker`` (a checkpoint that runs code when loaded)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_checkpoint(run: Path, marker: Path) -> Path:
    state = last_state(run)
    state["hyper_parameters"] = PlantedCall(str(marker))
    path = run / "checkpoints" / "planted.ckpt"
    with open(path, "wb") as stream:
        torch.save(state, stream, pickle_module=pickle)
    return path


def test_checkpoints_that_pickle_calls_are_refused_before_anything_runs(tmp_path, capsys):
    assert train(tmp_path, "--no-test") == 0
    run = run_dir(tmp_path)
    assert isinstance(load_checkpoint(run / "checkpoints" / "last.ckpt").content, dict)  # own checkpoint: no flag
    marker = tmp_path / "code_ran"
    planted = planted_checkpoint(run, marker)
    assert cli(["-r", str(planted), "-t"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    with pytest.raises(CheckpointReadError, match="--trust-checkpoint"):
        load_checkpoint(planted)
    (project,) = glob.glob(str(run / "configs" / "*-project.yaml"))
    with pytest.raises(CheckpointReadError, match="--trust-checkpoint"):
        load_for_inference([project], str(planted))  # arcvq-tokens, arcvq-sample-ldm, arcvq-prior sample
    assert eval_main(["model", "--ckpt", str(planted), "--base", project, "--json", str(tmp_path / "e.json")]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert train(tmp_path / "finetune", f"model.params.ckpt_path={planted}") == 2  # a config's ckpt_path
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert not marker.exists()
    with pytest.warns(UserWarning, match="--trust-checkpoint was given"):
        load_checkpoint(planted, trust_checkpoint=True)
    assert marker.exists()
    with pytest.raises(ValueError, match="trust_checkpoint must be True or False, got 'yes'"):
        load_checkpoint(planted, trust_checkpoint="yes")


def test_every_console_script_exits_non_zero_on_a_bad_option(monkeypatch, capsys):
    """Each console script of setup.cfg, run as ``python -m <module>``, exits 2 on an unknown option
    (``--help``, the success path, exits 0: ``test_entry_points.py``)."""
    import configparser
    import runpy

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    for line in lines:
        name, target = (part.strip() for part in line.split("=", 1))
        module = target.split(":")[0]
        monkeypatch.setattr(sys, "argv", [name, "--no-such-option-anywhere"])
        with pytest.raises(SystemExit) as stopped:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        assert stopped.value.code == 2, name
    assert "--no-such-option-anywhere" in capsys.readouterr().err
