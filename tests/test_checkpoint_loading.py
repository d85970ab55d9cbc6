"""One checkpoint loader and one trust rule (:mod:`arcvq_plugin.checkpoint_loading`): the project's own
checkpoints load tensors-only without any flag, and a checkpoint that pickles a call is refused by
every command that reads checkpoints, with the loader's message (naming the pickled global and
``--trust-checkpoint``), before anything from the file runs."""
from __future__ import annotations

import glob
import pickle
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch

from arcvq_plugin.checkpoint_loading import load_checkpoint
from arcvq_plugin.convert.cli import main as convert_main
from arcvq_plugin.evaluation.cli import main as eval_main
from arcvq_plugin.ldm.sample import main as sample_ldm_main
from arcvq_plugin.main import cli as train_main
from arcvq_plugin.priors.cli import main as prior_main
from arcvq_plugin.tokens import main as tokens_main

TINY_ARCVQ = str(Path(__file__).resolve().parents[1] / "configs" / "taming" / "tiny_arcvq.yaml")
SMALL_DATA = ["data.params.train.params.length=8", "data.params.validation.params.length=4"]


class PlantedCall:
    """Unpickles as ``open(marker, "w")``: the file appears only if the pickle runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The log folder of a tiny ``arcvq-train`` run (one epoch of two batches)."""
    logdir = tmp_path_factory.mktemp("logs")
    assert train_main(["--base", TINY_ARCVQ, "-t", "--logdir", str(logdir), "--no-test", *SMALL_DATA]) == 0
    (run,) = glob.glob(str(logdir / "*_tiny_arcvq"))
    return Path(run)


def test_checkpoints_written_by_training_load_without_trust(trained_run):
    checkpoints = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "weights_only=False" warning
            loaded = load_checkpoint(path, trust_checkpoint=False)
        assert loaded.weights_only is True and loaded.unsafe_globals == (), path
        assert isinstance(loaded.content["state_dict"]["quantize.clock"], torch.Tensor)


def _exit_status(command: Callable[[Sequence[str]], int], argv: Sequence[str]) -> tuple[int, str]:
    """``command(argv)``'s exit status and the message of a ``SystemExit(message)`` it raised."""
    try:
        return command(argv), ""
    except SystemExit as exit_:
        return (1, exit_.code) if isinstance(exit_.code, str) else (exit_.code, "")


# command name -> argv, given the planted checkpoint, the run's project config and a fresh folder
COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], Callable[[Path, str, Path], list[str]]]] = {
    "arcvq-train -r": (train_main, lambda ckpt, config, out: ["-r", str(ckpt), "-t"]),
    "arcvq-train ckpt_path": (train_main, lambda ckpt, config, out: [
        "--base", TINY_ARCVQ, "-t", "--logdir", str(out), f"model.params.ckpt_path={ckpt}"]),
    "arcvq-eval model": (eval_main, lambda ckpt, config, out: [
        "model", "--ckpt", str(ckpt), "--base", config, "--json", str(out / "eval.json")]),
    "arcvq-tokens export": (tokens_main, lambda ckpt, config, out: [
        "export", "--config", config, "--ckpt", str(ckpt), "--out", str(out / "tokens.npy")]),
    "arcvq-sample-ldm": (sample_ldm_main, lambda ckpt, config, out: [
        "--config", config, "--ckpt", str(ckpt), "--out", str(out / "samples"), "--device", "cpu"]),
    "arcvq-prior sample": (prior_main, lambda ckpt, config, out: [
        "sample", "--prior", str(ckpt), "--out", str(out / "samples"), "--device", "cpu"]),
    "arcvq-convert": (convert_main, lambda ckpt, config, out: [str(ckpt), str(out / "converted.ckpt")]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_checkpoint_that_pickles_a_call_is_refused_by_every_command(name, trained_run, tmp_path, capsys):
    command, arguments = COMMANDS[name]
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    marker = tmp_path / "code_ran"
    checkpoint["hyper_parameters"] = PlantedCall(str(marker))
    planted = trained_run / "checkpoints" / f"planted-{tmp_path.name}.ckpt"
    with open(planted, "wb") as stream:
        torch.save(checkpoint, stream, pickle_module=pickle)
    (config,) = glob.glob(str(trained_run / "configs" / "*-project.yaml"))
    out = tmp_path / "out"
    out.mkdir()
    try:
        status, message = _exit_status(command, arguments(planted, config, out))
    finally:
        planted.unlink()
    message += capsys.readouterr().err
    assert status != 0, name
    # the one loader's refusal: it names the pickled global and the flag
    assert re.search(r"pickles Python objects besides tensors \((builtins|_?io)\.open\)", message), message
    assert "--trust-checkpoint" in message
    assert not marker.exists()
    assert not any(out.iterdir())  # nothing written
