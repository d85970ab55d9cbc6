"""Upstream clones in their real layout, built offline, and what the patch tests run in them.

The real trees (CompVis/taming-transformers @ 3ba01b2, CompVis/latent-diffusion @ a506df5) are not
installable offline, so each clone is assembled from the PyPI copies the set-up script installs
(taming-transformers-rom1504, ldm-fix), in upstream's layout:

- ``taming/`` and ``ldm/`` are namespace packages: every ``__init__.py`` upstream does not have is
  removed, while the PyPI copies (regular packages) stay installed in the environment, exactly the
  situation in which a clone's ``python main.py`` used to import the PyPI code;
- the files the patch series touch are rebuilt to upstream's exact bytes
  (``test_patch_fixtures/*.diff``) and checked against the sha256 recorded from upstream in
  ``patches/<upstream>/upstream.json``;
- the result is committed to a fresh git repository, as a clone would be.

The callbacks at the end are used by the patched ``main.py`` runs (``PYTHONPATH`` holds tests/).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "test_patch_fixtures"
TESTS = Path(__file__).parent

# __init__.py files upstream has (every other one the PyPI copies ship is removed)
UPSTREAM_INITS = {
    "taming-transformers": {"taming/modules/losses/__init__.py"},
    "latent-diffusion": {"ldm/data/__init__.py", "ldm/models/diffusion/__init__.py",
                         "ldm/modules/diffusionmodules/__init__.py", "ldm/modules/distributions/__init__.py",
                         "ldm/modules/encoders/__init__.py", "ldm/modules/image_degradation/__init__.py",
                         "ldm/modules/losses/__init__.py"},
}


def manifest(upstream: str) -> dict:
    return json.loads((REPO / "patches" / upstream / "upstream.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _installed_package(name: str) -> Path:
    """The installed PyPI copy: a regular package (it has ``__init__.py``)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin and spec.origin.endswith("__init__.py"), spec
    return Path(spec.origin).parent


def _copy_as_namespace_package(name: str, upstream: str, clone: Path) -> None:
    shutil.copytree(_installed_package(name), clone / name,
                    ignore=shutil.ignore_patterns("__pycache__", "main.py", "setup.py"))
    for init in (clone / name).rglob("__init__.py"):
        if str(init.relative_to(clone)) not in UPSTREAM_INITS[upstream]:
            init.unlink()


def _apply(diff: Path, cwd: Path) -> None:
    subprocess.run(["git", "apply", "--whitespace=nowarn", str(diff)], cwd=cwd, check=True,
                   env={**os.environ, "GIT_CEILING_DIRECTORIES": str(cwd.parent)})


def _upstream_taming_main(clone: Path) -> None:
    """Upstream taming's main.py at ``clone/main.py`` (and its taming/ files the diff touches)."""
    shutil.copy(_installed_package("taming") / "main.py", clone / "main.py")
    _apply(FIXTURES / "taming_pypi_to_upstream.diff", clone)


def _commit(clone: Path) -> Path:
    git(clone, "init", "-q")
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "upstream layout")
    return clone


def _check_originals(clone: Path, upstream: str) -> None:
    for path, fingerprint in manifest(upstream)["files"].items():
        assert sha256(clone / path) == fingerprint["original_sha256"], path


def build_taming_clone(root: Path) -> Path:
    """A committed clone of taming-transformers @ 3ba01b2 in upstream's layout under ``root``.

    Two names upstream imports that PyPI's copy lacks, in files the series does not touch, get
    stand-ins: ``taming.data.helper_types.Annotation`` (custom_collate only isinstance-checks it)
    and ``EMAVectorQuantizer`` (only EMAVQ uses it; upstream's cannot be built either).
    """
    clone = root / "taming-transformers"
    clone.mkdir(parents=True)
    _copy_as_namespace_package("taming", "taming-transformers", clone)
    _upstream_taming_main(clone)
    _check_originals(clone, "taming-transformers")
    (clone / "taming" / "data" / "helper_types.py").write_text(
        "from typing import NamedTuple\n\n\nclass Annotation(NamedTuple):\n    category_no: int\n")
    with open(clone / "taming" / "modules" / "vqvae" / "quantize.py", "a") as f:
        f.write("\n\nclass EMAVectorQuantizer(nn.Module):\n"
                "    def __init__(self, *args, **kwargs):\n"
                "        raise NotImplementedError('not shipped by the PyPI copy')\n")
    return _commit(clone)


def build_ldm_clone(root: Path) -> Path:
    """A committed clone of latent-diffusion @ a506df5 in upstream's layout under ``root``."""
    clone = root / "latent-diffusion"
    clone.mkdir(parents=True)
    _copy_as_namespace_package("ldm", "latent-diffusion", clone)
    scratch = root / "taming-main"
    scratch.mkdir()
    (scratch / "taming" / "data").mkdir(parents=True)
    (scratch / "taming" / "models").mkdir()
    taming = _installed_package("taming")
    for path in ("data/utils.py", "models/vqgan.py"):
        shutil.copy(taming / path, scratch / "taming" / path)
    _upstream_taming_main(scratch)
    shutil.copy(scratch / "main.py", clone / "main.py")
    _apply(FIXTURES / "ldm_main_from_taming_main.diff", clone)
    _check_originals(clone, "latent-diffusion")
    return _commit(clone)


def snapshot(clone: Path) -> dict[str, bytes]:
    """Every file of the clone outside .git, logs/ and torch_home/."""
    return {str(p.relative_to(clone)): p.read_bytes() for p in sorted(clone.rglob("*"))
            if p.is_file() and not {".git", "logs", "torch_home", "__pycache__"} & set(p.relative_to(clone).parts)}


def run_main(clone: Path, config: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python main.py --base config -t True --no-test True *args`` in the clone (CPU only)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "CUDA_VISIBLE_DEVICES": "",
           "TORCH_HOME": str(clone / "torch_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "main.py", "--base", str(config), "-t", "True", "--no-test", "True",
                             *args], cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def run_script(clone: Path, script: str, timeout: int = 600) -> str:
    """Run ``script`` with python in the clone; returns its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def tiny_config(tmp: Path, name: str, source: str, *, model_target: str, data_target: str,
                quantizer: bool = True, train_length: int = 8, **params) -> Path:
    """One of configs/{taming,ldm}/tiny_*.yaml for a clone's main.py: the model and data targets
    given, no codebook monitor, short epochs; ``params`` are dotted overrides (``a.b=v``)."""
    config = yaml.safe_load((REPO / "configs" / source).read_text())
    config["model"]["target"] = model_target
    if not quantizer:
        del config["model"]["params"]["quantizer_config"]
    config["data"]["target"] = data_target
    config["data"]["params"]["train"]["params"]["length"] = train_length
    config["data"]["params"]["validation"]["params"]["length"] = 4
    callbacks = config["lightning"]["callbacks"]
    callbacks.pop("codebook_monitor", None)
    callbacks.pop("norm_bound", None)  # main.py adds it for an ArcQuantizer
    callbacks["image_logger"] = {"target": "arcvq_plugin.image_logger.ImageLogger",
                                 "params": {"batch_frequency": 1000, "max_images": 1, "increase_log_steps": False}}
    config["lightning"]["trainer"].update(max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0,
                                          enable_progress_bar=False, enable_model_summary=False)
    for dotted, value in params.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def newest_run(clone: Path) -> Path:
    return max((clone / "logs").iterdir(), key=lambda p: p.stat().st_mtime)


def last_checkpoint(clone: Path, name: str = "last.ckpt") -> dict:
    """A checkpoint of the clone's newest run."""
    import torch

    return torch.load(newest_run(clone) / "checkpoints" / name, map_location="cpu", weights_only=True)


def ddp_on_two_cpus(clone: Path) -> list[str]:
    """The trainer arguments for 2 CPU processes with the strategy the clone's patched main.py picks
    for ``--gpus 0,1`` (its ``trainer_kwargs_from_config`` on upstream's default backend)."""
    import ast

    printed = run_script(clone, "import main; from omegaconf import OmegaConf; print(main.trainer_kwargs_from_config("
                                "OmegaConf.create({'gpus': '0,1', 'distributed_backend': 'ddp'})))")
    kwargs = ast.literal_eval(printed.strip().splitlines()[-1])
    assert kwargs == {"accelerator": "gpu", "devices": "0,1", "strategy": "ddp_find_unused_parameters_true"}
    return ["--accelerator", "cpu", "--devices", "2", "--strategy", kwargs["strategy"]]


class SignalAndStop(pl.Callback):
    """Sends SIGUSR1 after training batch ``after`` (counted over epochs) and stops the run there:
    the checkpoint ``kill -USR1`` writes on a cluster before preemption."""

    def __init__(self, after: int):
        self.after = after
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.after:  # CheckpointOnSignal, later in the callback list, saves now
            os.kill(os.getpid(), signal.SIGUSR1)
            trainer.should_stop = True


def assert_same_training_state(straight: dict, resumed: dict) -> None:
    """Two Lightning checkpoints hold bit-identical weights, buffers and optimizer states."""
    import torch

    assert straight["global_step"] == resumed["global_step"]
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for opt_straight, opt_resumed in zip(straight["optimizer_states"], resumed["optimizer_states"], strict=True):
        for state_a, state_b in zip(opt_straight["state"].values(), opt_resumed["state"].values(), strict=True):
            for name in state_a:
                assert torch.equal(torch.as_tensor(state_a[name]), torch.as_tensor(state_b[name])), name
