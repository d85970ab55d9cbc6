"""arcvq-train (arcvq_plugin.main) end to end on the tiny configs, its errors, and its data module."""
from __future__ import annotations

import glob
import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from arcvq_plugin.data.module import DataModuleFromConfig, WrappedDataset
from arcvq_plugin.data.resumable import ResumableDataLoader
from arcvq_plugin.data.sample_images import SampleImagesTrain, SampleImagesValidation
from arcvq_plugin.extras import MissingExtraError
from arcvq_plugin.image_logger import ImageLogger
from arcvq_plugin.main import main
from arcvq_plugin.trainer_cli.arguments import parse_args, translate_gpus
from arcvq_plugin.trainer_cli.callbacks import CheckpointOnSignal
from arcvq_plugin.trainer_cli.config_check import ConfigError
from arcvq_plugin.trainer_cli.resume import ResumeError, resolve_resume

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "taming"
TINY_ARCVQ = str(CONFIGS / "tiny_arcvq.yaml")
TINY_BASELINE = str(CONFIGS / "tiny_baseline.yaml")
# Two training batches of 4 and one validation batch per epoch.
SMALL_DATA = ["data.params.train.params.length=8", "data.params.validation.params.length=4"]


class SignalAfterFirstBatch(pl.Callback):
    """Sends SIGUSR1 to this process after the first training batch and records, at the start of
    the second, the global_step of the checkpoint the CLI wrote in between."""

    checkpoint_step = None

    @staticmethod
    def _ckpt_path(trainer) -> str:
        (callback,) = [cb for cb in trainer.callbacks if isinstance(cb, CheckpointOnSignal)]
        return callback.ckpt_path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            assert not os.path.exists(self._ckpt_path(trainer))
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            type(self).checkpoint_step = torch.load(self._ckpt_path(trainer), weights_only=True)["global_step"]


def run_dir(logdir: Path, name: str) -> Path:
    (found,) = glob.glob(str(logdir / f"*_{name}"))
    return Path(found)


@pytest.fixture(scope="module")
def arcvq_run(tmp_path_factory):
    """tiny_arcvq.yaml, one epoch, SIGUSR1 after the first batch (default last.ckpt saving off)."""
    logdir = tmp_path_factory.mktemp("cli") / "logs"
    previous_handler = signal.getsignal(signal.SIGUSR1)
    trainer = main(["--base", TINY_ARCVQ, "-t", "--logdir", str(logdir), "-n", "arc",
                    "--log_every_n_steps", "1", *SMALL_DATA,
                    "lightning.modelcheckpoint.params.save_last=false",
                    "lightning.callbacks.image_logger.params.batch_frequency=2",
                    "lightning.callbacks.signal_sender.target=test_main_cli.SignalAfterFirstBatch"])
    return trainer, run_dir(logdir, "arc"), previous_handler


def test_tiny_arcvq_trains_end_to_end(arcvq_run):
    trainer, run, previous_handler = arcvq_run
    assert trainer.global_step == 4 and trainer.current_epoch == 1
    # run directory, config snapshot, checkpoint
    (project,) = glob.glob(str(run / "configs" / "*-project.yaml"))
    (lightning,) = glob.glob(str(run / "configs" / "*-lightning.yaml"))
    snapshot = OmegaConf.load(project)
    assert set(snapshot) == {"model", "data"}
    assert snapshot.model.params.quantizer_config.target == "arcvq_plugin.ArcQuantizer"
    assert snapshot.data.params.train.params.length == 8
    assert OmegaConf.load(lightning).lightning.trainer.log_every_n_steps == 1
    assert (run / "checkpoints" / "epoch=000000.ckpt").is_file()
    # --scale_lr: 1 (accumulate) * 1 (device) * 4 (batch) * 1e-4
    assert trainer.lightning_module.learning_rate == pytest.approx(4e-4)
    # default callbacks, the config's NormBoundCallback kept (not doubled)
    kinds = [type(cb).__name__ for cb in trainer.callbacks]
    assert kinds.count("NormBoundCallback") == 1
    for kind in (ImageLogger, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar, CheckpointOnSignal):
        assert any(isinstance(cb, kind) for cb in trainer.callbacks), kind
    # the signal handler is restored after training
    assert signal.getsignal(signal.SIGUSR1) == previous_handler


def test_sigusr1_writes_a_checkpoint_at_the_batch_boundary(arcvq_run):
    trainer, run, _ = arcvq_run
    # save_last was off: last.ckpt only exists because of the signal, saved after batch 1 (2 optimizer steps)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert SignalAfterFirstBatch.checkpoint_step == 2


def test_logs_images_breakdown_lr_and_codebook_figures(arcvq_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = arcvq_run
    (events,) = glob.glob(str(run / "tensorboard" / "version_0" / "events.out.tfevents.*"))
    acc = EventAccumulator(events, size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    for key in ("arc", "arc_weight", "radius", "vq", "usage"):
        assert f"train/quantizer/{key}_step" in scalars, key
    assert "lr-Adam" in scalars
    assert {"train/inputs", "train/reconstructions", "val/inputs", "val/reconstructions"} <= images
    assert any(tag.startswith("codebook/") for tag in images)
    assert "codebook/usage_percent" in scalars
    assert glob.glob(str(run / "images" / "train" / "reconstructions_gs-000002_*.png"))
    assert glob.glob(str(run / "images" / "val" / "inputs_gs-000004_*.png"))
    assert glob.glob(str(run / "codebook" / "*.png"))


def test_tiny_baseline_trains_without_norm_bound(tmp_path, capsys):
    logdir = tmp_path / "logs"
    trainer = main(["--base", TINY_BASELINE, "-t", "--logdir", str(logdir), "-n", "base", *SMALL_DATA,
                    "--enable_progress_bar", "false", "--scale_lr", "false"])
    assert "adding arcvq_plugin.NormBoundCallback" not in capsys.readouterr().out
    assert trainer.global_step == 4
    assert trainer.lightning_module.learning_rate == pytest.approx(1e-4)
    run = run_dir(logdir, "base")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "quantize.embedding.weight" in state and "quantize.clock" not in state
    # resuming it with an ArcQuantizer added: another architecture, refused before training
    with pytest.raises(ResumeError, match=r"missing in checkpoint \(1\): quantize\.clock"):
        main(["-r", str(run), "-t", "model.params.quantizer_config.target=arcvq_plugin.ArcQuantizer"])


def test_tiny_cvq_trains_without_norm_bound_and_updates_its_usage_once_per_batch(tmp_path, capsys):
    """CVQ-VAE's quantiser in the tiny VQGAN: no NormBoundCallback needed, the running usage is in the
    checkpoint and moved once per batch (the discriminator's second forward is passive)."""
    logdir = tmp_path / "logs"
    trainer = main(["--base", TINY_BASELINE, "-t", "--logdir", str(logdir), "-n", "cvq", *SMALL_DATA,
                    "--enable_progress_bar", "false",
                    "model.params.quantizer_config.target=arcvq_plugin.baselines.ClusteredQuantizer"])
    assert "adding arcvq_plugin.NormBoundCallback" not in capsys.readouterr().out
    assert trainer.global_step == 4  # 2 batches, 2 optimizers
    state = torch.load(run_dir(logdir, "cvq") / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert float(state["quantize.running_usage"].sum()) == pytest.approx(1 - 0.99 ** 2)


def test_norm_bound_is_added_when_the_config_has_none(tmp_path, capsys):
    without = _edited(tmp_path, lambda c: c.lightning.callbacks.pop("norm_bound"))
    trainer = main(["--base", without, "-t", "--logdir", str(tmp_path / "logs"), *SMALL_DATA,
                    "--enable_progress_bar", "false"])
    assert "adding arcvq_plugin.NormBoundCallback()" in capsys.readouterr().out
    assert [type(cb).__name__ for cb in trainer.callbacks].count("NormBoundCallback") == 1
    assert int(trainer.lightning_module.quantize.clock) == 2  # the added callback advanced the clock


def _edited(tmp_path: Path, edit) -> str:
    config = OmegaConf.load(TINY_ARCVQ)
    edit(config)
    path = tmp_path / "edited.yaml"
    OmegaConf.save(config, path)
    return str(path)


@pytest.mark.parametrize("edit, error", [
    (lambda c: c.model.pop("target"), r"model has no 'target'"),
    (lambda c: c.model.__setattr__("target", "arcvq_plugin.taming.VQModle"),
     r"model\.target: .*no attribute 'VQModle'.*did you mean 'VQModel'"),
    (lambda c: c.model.params.quantizer_config.__setattr__("target", "arcvq_plugin.ArcQuantiser"),
     r"model\.params\.quantizer_config\.target: .*did you mean 'ArcQuantizer'"),
    (lambda c: c.__setattr__("modle", {"x": 1}), r"unknown config key modle \(did you mean 'model'\?\)"),
    (lambda c: c.lightning.__setattr__("trainers", {}), r"unknown config key lightning\.trainers"),
    (lambda c: c.model.params.quantizer_config.params.__setattr__("arc_ss", 5.0),
     r"unknown config key model\.params\.quantizer_config\.params\.arc_ss.*did you mean 'arc_s'"),
    (lambda c: c.lightning.trainer.__setattr__("resume_from_checkpoint", "x.ckpt"),
     r"lightning\.trainer\.resume_from_checkpoint was removed .* -r/--resume"),
    (lambda c: c.lightning.callbacks.__setattr__("extra", {"params": {}}),
     r"lightning\.callbacks\.extra has no 'target'"),
])
def test_config_errors_before_training(tmp_path, edit, error):
    logdir = tmp_path / "logs"
    with pytest.raises(ConfigError, match=error):
        main(["--base", _edited(tmp_path, edit), "-t", "--logdir", str(logdir)])
    assert not logdir.exists()


def test_missing_tensorboard_is_named_before_the_model_is_built(tmp_path, monkeypatch):
    """The default logger needs the [train] extra: without tensorboard the run stops naming it,
    before the model (or anything else) is built and before the log folder exists."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    built = []
    monkeypatch.setattr("arcvq_plugin.main.instantiate_from_config", lambda node: built.append(node))
    logdir = tmp_path / "logs"
    with pytest.raises(MissingExtraError, match=r"tensorboard.*pip install 'arcvq-plugin\[train\]'"):
        main(["--base", TINY_ARCVQ, "-t", "--logdir", str(logdir)])
    assert built == [] and not logdir.exists()


def test_resume_from_another_architecture_names_the_keys(arcvq_run):
    _, run, _ = arcvq_run
    with pytest.raises(ResumeError, match=r"shape mismatch \(1\): quantize\.embedding\.weight: "
                                          r"checkpoint \(32, 8\) vs model \(64, 8\)"):
        main(["-r", str(run), "-t", "model.params.n_embed=64"])


def test_cli_arguments():
    opt, trainer, dotlist = parse_args(["--base", "a.yaml", "-t", "--gpus", "0,1", "--max_epochs", "3",
                                        "--precision", "bf16-mixed", "-f", "_x", "model.params.k=2"])
    assert opt.base == ["a.yaml"] and opt.train and opt.postfix == "_x" and opt.scale_lr
    assert trainer == {"gpus": "0,1", "max_epochs": 3, "precision": "bf16-mixed"}
    assert dotlist == ["model.params.k=2"]
    assert translate_gpus("0,1") == ([0, 1], 2)
    assert translate_gpus("0,") == ([0], 1)
    assert translate_gpus(2) == (2, 2)
    assert translate_gpus("-1") == (-1, None)
    with pytest.raises(ValueError, match="--gpus"):
        translate_gpus("first")
    with pytest.raises(SystemExit):
        parse_args(["--base", "a.yaml", "--no_such_flag", "1"])
    # upstream's optional-value flags no longer swallow a following override
    opt, _, dotlist = parse_args(["-t", "model.params.k=2", "--scale_lr", "false"])
    assert opt.train is True and opt.scale_lr is False and dotlist == ["model.params.k=2"]


def test_overrides_after_base_files_are_overrides(tmp_path):
    from arcvq_plugin.main import _split_misplaced_overrides

    existing = tmp_path / "x=1.yaml"
    existing.write_text("model: {}\n")
    files, dotlist = _split_misplaced_overrides(["a.yaml", str(existing), "model.params.k=2"], ["data.b=1"])
    assert files == ["a.yaml", str(existing)] and dotlist == ["model.params.k=2", "data.b=1"]


def test_gpus_translate_to_ddp():
    from arcvq_plugin.main import _trainer_kwargs

    assert _trainer_kwargs({"gpus": "0,1", "max_epochs": 2}) == {
        "accelerator": "gpu", "devices": [0, 1], "strategy": "ddp_find_unused_parameters_true", "max_epochs": 2}
    assert _trainer_kwargs({"gpus": "0,"}) == {"accelerator": "gpu", "devices": [0]}
    assert _trainer_kwargs({"gpus": 2, "strategy": "ddp"})["strategy"] == "ddp"
    assert _trainer_kwargs({}) == {"accelerator": "cpu"}
    assert _trainer_kwargs({"devices": 2, "strategy": "ddp"}) == {"devices": 2, "strategy": "ddp"}
    with pytest.raises(ConfigError, match="both 'gpus' and 'devices'"):
        _trainer_kwargs({"gpus": "0,", "devices": 1})


def test_resume_path_resolution(arcvq_run, tmp_path):
    _, run, _ = arcvq_run
    logdir, ckpt, configs = resolve_resume(str(run))
    assert ckpt == os.path.join(str(run), "checkpoints", "last.ckpt") and len(configs) == 2
    file_logdir, file_ckpt, _ = resolve_resume(str(run / "checkpoints" / "epoch=000000.ckpt"))
    assert file_logdir == str(run) and file_ckpt.endswith("epoch=000000.ckpt")
    with pytest.raises(ResumeError, match="cannot find"):
        resolve_resume(str(tmp_path / "nowhere"))
    with pytest.raises(ResumeError, match="no checkpoints/last.ckpt"):
        resolve_resume(str(tmp_path))


def test_existing_log_dir_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setattr("arcvq_plugin.main._run_timestamp", lambda: "2000-01-01T00-00-00")
    (tmp_path / "2000-01-01T00-00-00_tiny_arcvq").mkdir()
    with pytest.raises(FileExistsError, match="-r"):
        main(["--base", TINY_ARCVQ, "-t", "--logdir", str(tmp_path)])


# ---- image logger ----------------------------------------------------------------------------

def test_image_logger_schedule_depends_only_on_the_step():
    logger = ImageLogger(batch_frequency=8, max_images=2)
    assert [s for s in range(20) if logger.should_log_step(s)] == [1, 2, 4, 8, 16]
    assert [s for s in range(20) if ImageLogger(8, 2, increase_log_steps=False).should_log_step(s)] == [8, 16]
    with pytest.raises(ValueError, match="batch_frequency"):
        ImageLogger(batch_frequency=0, max_images=2)


def test_image_logger_writes_pngs_and_restores_module_modes(tmp_path):
    from types import SimpleNamespace

    from pytorch_lightning.loggers import TensorBoardLogger

    class Toy(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Conv2d(3, 3, 1)
            self.frozen = torch.nn.Dropout().eval()  # like taming's LPIPS: kept in eval mode

        def log_images(self, batch, split):
            assert not self.training
            return {"inputs": batch, "reconstructions": self.net(batch).clamp(-1, 1)}

    toy = Toy()
    trainer = SimpleNamespace(logger=TensorBoardLogger(str(tmp_path), name="tb"))
    ImageLogger(batch_frequency=1, max_images=2).log_img(trainer, toy, torch.rand(5, 3, 8, 8) * 2 - 1, 3, "train")
    assert toy.training and toy.net.training and not toy.frozen.training
    (png,) = glob.glob(str(tmp_path / "images" / "train" / "inputs_gs-000000_e-000000_b-000003.png"))
    assert np.asarray(Image.open(png)).shape == (12, 22, 3)  # 2 images of 8x8 in a row, padding 2
    assert glob.glob(str(tmp_path / "tb" / "version_0" / "events.out.tfevents.*"))


# ---- data ------------------------------------------------------------------------------------

def test_sample_images_format_and_determinism():
    train = SampleImagesTrain(size=16, length=6, seed=3)
    item = train[0]["image"]
    assert item.shape == (16, 16, 3) and item.dtype == np.float32
    assert -1.0 <= item.min() and item.max() <= 1.0 and item.std() > 0
    again = SampleImagesTrain(size=16, length=6, seed=3)
    assert all(np.array_equal(train[i]["image"], again[i]["image"]) for i in range(6))
    other = SampleImagesTrain(size=16, length=6, seed=4)
    assert not all(np.array_equal(train[i]["image"], other[i]["image"]) for i in range(6))
    validation = SampleImagesValidation(size=16, length=3)
    assert len(validation) == 3 and not set(validation.photo_index.tolist()) - {0, 1}
    with pytest.raises(ValueError, match="photos"):
        SampleImagesTrain(photos=["lena"])
    with pytest.raises(ValueError, match="size"):
        SampleImagesTrain(size=4)


def test_data_module_contract():
    data = DataModuleFromConfig(
        batch_size=2, num_workers=0, wrap=True, shuffle_seed=5,
        train={"target": "arcvq_plugin.data.sample_images.SampleImagesTrain", "params": {"size": 8, "length": 6}},
        validation={"target": "arcvq_plugin.data.sample_images.SampleImagesValidation",
                    "params": {"size": 8, "length": 2}})
    assert "train_dataloader" in vars(data) and "test_dataloader" not in vars(data)  # no test split
    data.setup()
    assert isinstance(data.datasets["train"], WrappedDataset)
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 8, 8, 3)
    assert DataModuleFromConfig(batch_size=3).num_workers == 6  # upstream default 2 * batch_size
    with pytest.raises(ValueError, match="batch_size"):
        DataModuleFromConfig(batch_size=0)
