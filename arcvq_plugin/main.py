"""``arcvq-train`` / ``python -m arcvq_plugin.main``: taming's and LDM's ``main.py`` for pytorch-lightning 2.x.

Usage, as upstream::

    arcvq-train --base configs/taming/tiny_arcvq.yaml -t                 # train on the CPU
    arcvq-train --base configs/taming/imagenet_arcvq_f16.yaml -t --gpus 0,1   # DDP on two GPUs
    arcvq-train -r logs/<timestamp>_<name> -t                           # resume exactly
    arcvq-train --base a.yaml b.yaml -t model.params.embed_dim=8 --max_epochs 3

The config has the sections ``model`` (``target``, ``params``, ``base_learning_rate``), ``data``
(``target``, ``params``) and optionally ``lightning`` (``trainer``, ``callbacks``, ``logger``,
``modelcheckpoint``, each merged over the defaults below, as upstream); anything else is an error
before training (see :mod:`arcvq_plugin.trainer_cli.config_check`). A run writes
``<logdir>/<timestamp>_<name><postfix>/`` with ``configs/<timestamp>-{project,lightning}.yaml``,
``checkpoints/{epoch=NNNNNN.ckpt,last.ckpt}``, ``tensorboard/`` and ``images/``.

Defaults: a TensorBoard logger; callbacks ``image_logger`` (:class:`arcvq_plugin.image_logger.ImageLogger`,
every 750 steps, 4 images), ``learning_rate_logger`` (``LearningRateMonitor`` per step) and
``checkpoint_callback`` (``ModelCheckpoint`` with ``save_last``; top 3 by ``model.monitor`` when the
model has one); Lightning's progress bar; and :func:`arcvq_plugin.trainer_cli.training_setup.added_callbacks`:
a checkpoint on SIGUSR1 at the end of the current batch, the RNG states in checkpoints, and a
``NormBoundCallback`` for models containing an ``arcvq_plugin.ArcQuantizer`` when the config lists
none; and :class:`~arcvq_plugin.trainer_cli.callbacks.CheckpointOnCrash` (``last.ckpt`` when fit
raises before any optimizer step of its batch). The checkpoint callback is
:class:`arcvq_plugin.checkpoint_writing.CurrentLastModelCheckpoint` (``last.ckpt`` never versioned to
``last-v1.ckpt``) and every checkpoint is written atomically
(:class:`~arcvq_plugin.checkpoint_writing.AtomicCheckpointIO`). SIGUSR1 before fit prints a message.
``-r`` loads the checkpoint tensors-only unless ``--trust-checkpoint`` is given. The console script
(:func:`cli`) exits 0 after success, 2 on an error in the arguments, configs or checkpoint, 1 when
training fails. ``accumulate_grad_batches`` of a manually optimised GAN model is handed to the model
(:func:`~arcvq_plugin.trainer_cli.training_setup.hand_accumulation_to_model`).

Differences from upstream, all forced by pytorch-lightning 2.x or by exactness: ``--gpus`` maps to
``accelerator: gpu, devices: [...]`` (with several GPUs ``strategy: ddp_find_unused_parameters_true``,
the DDP behaviour of Lightning 1.x that GAN training relies on); without ``--gpus`` and without
``accelerator``/``devices`` in the config the run is on the CPU, as upstream; ``trainer.test`` runs
only when the data has a test split and the model a ``test_step``; ``-p`` is a second spelling of
``-f/--postfix`` (upstream's unused ``--project`` is gone), and there is no ``--debug``; an existing
log dir is never reused by a new run.
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import traceback
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import seed_everything

from arcvq_plugin.config import instantiate_from_config, load_configs
from arcvq_plugin.trainer_cli.arguments import TRAINER_ARGUMENTS, parse_args, translate_gpus
from arcvq_plugin.checkpoint_writing import AtomicCheckpointIO
from arcvq_plugin.inference import check_dataset_images
from arcvq_plugin.extras import require_extra
from arcvq_plugin.trainer_cli.callbacks import CheckpointOnCrash, SetupCallback, install_early_signal_handler
from arcvq_plugin.trainer_cli.config_check import ConfigError, check_config, check_trainer_kwargs
from arcvq_plugin.checkpoint_loading import CheckpointReadError, load_checkpoint
from arcvq_plugin.trainer_cli.resume import ResumeError, check_state_dict_matches, resolve_resume
from arcvq_plugin.trainer_cli.training_setup import added_callbacks, hand_accumulation_to_model

__all__ = ["main", "cli"]

RUN_TIMESTAMP_ENV = "ARCVQ_TRAIN_TIMESTAMP"
"""Rank 0 exports its run timestamp here; the DDP processes Lightning launches (``LOCAL_RANK`` > 0,
started with the same command line) reuse it, so every rank agrees on the log dir."""
DURING_TRAINING_NOTE = "arcvq-train: raised during trainer.fit"
"""Note added to an exception raised by ``trainer.fit``: :func:`cli` exits 1 for it whatever its type."""
DEFAULT_CALLBACK_NAMES = ("image_logger", "learning_rate_logger", "checkpoint_callback")


def _is_launched_rank() -> bool:
    """Whether this process is a DDP rank > 0 that Lightning (or torchrun) started."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0


def _run_timestamp() -> str:
    inherited = os.environ.get(RUN_TIMESTAMP_ENV)
    if inherited and _is_launched_rank():
        return inherited
    now = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    os.environ[RUN_TIMESTAMP_ENV] = now
    return now


def _run_paths(opt: Any, base: list[str], now: str) -> tuple[str, Optional[str], list[str]]:
    """(log dir, checkpoint to resume or None, config files), as upstream names and finds them."""
    if opt.resume:
        if opt.name:
            raise ValueError("-n/--name and -r/--resume cannot be given together: a resumed run keeps its log dir")
        logdir, ckpt, snapshot = resolve_resume(opt.resume)
        return logdir, ckpt, snapshot + base
    if not base:
        raise ValueError("no config: pass --base config.yaml (or -r <logdir>)")
    name = "_" + (opt.name or os.path.splitext(os.path.basename(base[0]))[0])
    logdir = os.path.join(opt.logdir, now + name + opt.postfix)
    if os.path.exists(logdir) and not _is_launched_rank():
        raise FileExistsError(f"log dir {logdir} exists; resume it with -r {logdir} or choose -n/--postfix")
    return logdir, None, base


def _split_misplaced_overrides(base: list[str], dotlist: list[str]) -> tuple[list[str], list[str]]:
    """``--base a.yaml key=value`` swallows the override; give it back to the dotlist."""
    files = [p for p in base if "=" not in p or os.path.exists(p)]
    overrides = [p for p in base if p not in files]
    return files, overrides + dotlist


def _trainer_kwargs(trainer_config: dict[str, Any]) -> dict[str, Any]:
    """Lightning 2.x ``Trainer`` kwargs from the merged ``lightning.trainer`` (upstream's ``gpus`` translated)."""
    kwargs = dict(trainer_config)
    if "gpus" in kwargs:
        gpus = kwargs.pop("gpus")
        if "devices" in kwargs:
            raise ConfigError("lightning.trainer has both 'gpus' and 'devices'; keep one")
        devices, count = translate_gpus(gpus)
        print(f"Running on GPUs {gpus}")
        kwargs.update(accelerator="gpu", devices=devices)
        if (count is None or count > 1) and "strategy" not in kwargs:
            kwargs["strategy"] = "ddp_find_unused_parameters_true"
    elif "accelerator" not in kwargs and "devices" not in kwargs:
        print("Running on the CPU (pass --gpus 0, for GPU 0)")
        kwargs["accelerator"] = "cpu"
    return kwargs


def _default_callbacks(model: pl.LightningModule, ckptdir: str) -> dict[str, Any]:
    modelckpt_params: dict[str, Any] = {"dirpath": ckptdir, "filename": "{epoch:06}", "verbose": True,
                                        "save_last": True}
    monitor = getattr(model, "monitor", None)
    if monitor:
        print(f"Monitoring {monitor} as checkpoint metric.")
        modelckpt_params.update(monitor=monitor, save_top_k=3)
    return {
        "image_logger": {"target": "arcvq_plugin.image_logger.ImageLogger",
                         "params": {"batch_frequency": 750, "max_images": 4, "clamp": True}},
        "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                                 "params": {"logging_interval": "step"}},
        "checkpoint_callback": {"target": "arcvq_plugin.checkpoint_writing.CurrentLastModelCheckpoint",
                                "params": modelckpt_params},
    }


def _has_test_split(data: pl.LightningDataModule, model: pl.LightningModule) -> bool:
    has_loader = "test_dataloader" in vars(data) or (
        type(data).test_dataloader is not pl.LightningDataModule.test_dataloader)
    has_step = type(model).test_step is not pl.LightningModule.test_step
    return has_loader and has_step


def _set_learning_rate(model: pl.LightningModule, config: DictConfig, trainer: pl.Trainer, scale_lr: bool,
                       accumulate: int) -> None:
    """``model.learning_rate`` = accumulate * devices * batch_size * base_lr (``--scale_lr``), else base_lr.

    ``devices`` is the number of devices per node, upstream's ``ngpu`` (1 on a single CPU process);
    ``accumulate`` the batches per optimizer step (``accumulate_grad_batches``).
    """
    base_lr = float(config.model.base_learning_rate)
    if not scale_lr:
        model.learning_rate = base_lr
        print(f"Not scaling the learning rate: {model.learning_rate:.2e}")
        return
    batch_size = OmegaConf.select(config, "data.params.batch_size")
    if batch_size is None:
        raise ConfigError("--scale_lr needs data.params.batch_size (or pass --scale_lr false)")
    ngpu = trainer.num_devices
    print(f"accumulate_grad_batches = {accumulate}")
    model.learning_rate = accumulate * ngpu * int(batch_size) * base_lr
    print(f"Setting learning rate to {model.learning_rate:.2e} = {accumulate} (accumulate_grad_batches) * "
          f"{ngpu} (num_devices) * {batch_size} (batchsize) * {base_lr:.2e} (base_lr)")


def main(argv: Optional[Sequence[str]] = None) -> pl.Trainer:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the Trainer.

    SIGUSR1 prints a message outside fit (:func:`install_early_signal_handler`) while this runs;
    the caller's handler is restored on return.
    """
    previous_handler = install_early_signal_handler()
    try:
        return _train(argv)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGUSR1, previous_handler)


def _train(argv: Optional[Sequence[str]]) -> pl.Trainer:
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # as upstream: modules next to the configs can be targets
    opt, trainer_overrides, dotlist = parse_args(sys.argv[1:] if argv is None else argv)
    base, dotlist = _split_misplaced_overrides(list(opt.base), dotlist)
    now = _run_timestamp()
    logdir, ckpt, base = _run_paths(opt, base, now)
    ckptdir = os.path.join(logdir, "checkpoints")
    seed_everything(opt.seed)

    config = load_configs(base, dotlist)
    check_config(config, default_callbacks=DEFAULT_CALLBACK_NAMES)
    lightning_config = config.pop("lightning", OmegaConf.create())
    lightning_config.trainer = OmegaConf.merge(lightning_config.get("trainer", None) or {}, trainer_overrides)
    trainer_kwargs = _trainer_kwargs(OmegaConf.to_container(lightning_config.trainer, resolve=True))
    check_trainer_kwargs(trainer_kwargs, TRAINER_ARGUMENTS)
    if "base_learning_rate" not in config.model:
        raise ConfigError("model.base_learning_rate is missing (the learning rate before --scale_lr scaling)")

    logger_cfg = OmegaConf.merge(
        {"target": "pytorch_lightning.loggers.TensorBoardLogger", "params": {"save_dir": logdir, "name": "tensorboard"}},
        lightning_config.get("logger", None) or {})
    if logger_cfg.target == "pytorch_lightning.loggers.TensorBoardLogger":
        require_extra("train", "tensorboard")  # before any work

    model = instantiate_from_config(config.model)
    weights_only = None
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, opt.trust_checkpoint)
        check_state_dict_matches(model, loaded.content, ckpt)
        weights_only = loaded.weights_only
        del loaded

    callbacks_cfg = _default_callbacks(model, ckptdir)
    callbacks_cfg["checkpoint_callback"] = OmegaConf.merge(
        callbacks_cfg["checkpoint_callback"], lightning_config.get("modelcheckpoint", None) or {})
    callbacks_cfg = OmegaConf.merge(callbacks_cfg, lightning_config.get("callbacks", None) or {})
    callbacks = [instantiate_from_config(callbacks_cfg[key]) for key in callbacks_cfg]
    callbacks.append(SetupCallback(now, logdir, ckptdir, os.path.join(logdir, "configs"), config, lightning_config))
    last_ckpt = os.path.join(ckptdir, "last.ckpt")
    callbacks += added_callbacks(model, callbacks, last_ckpt)
    callbacks.append(CheckpointOnCrash(last_ckpt))
    accumulate = hand_accumulation_to_model(model, trainer_kwargs)
    trainer = pl.Trainer(**trainer_kwargs, logger=instantiate_from_config(logger_cfg), callbacks=callbacks,
                         plugins=[AtomicCheckpointIO()])

    data = instantiate_from_config(config.data)
    data.prepare_data()
    data.setup()
    for split, dataset in getattr(data, "datasets", {}).items():
        print(f"{split}, {type(dataset).__name__}, {len(dataset)}")
    check_dataset_images(model, getattr(data, "datasets", {}))  # before fit creates the log folder
    _set_learning_rate(model, config, trainer, opt.scale_lr, accumulate)

    if opt.train:
        try:
            trainer.fit(model, data, ckpt_path=ckpt, weights_only=weights_only)
        except Exception as err:
            err.add_note(DURING_TRAINING_NOTE)
            raise
    if not opt.no_test and not trainer.interrupted:
        if _has_test_split(data, model):
            trainer.test(model, data)
        else:
            print("No test: the data has no test split or the model no test_step.")
    return trainer


CONFIG_ERRORS = (ConfigError, ResumeError, CheckpointReadError, FileExistsError, ValueError)
"""Errors in what the user asked for (config, arguments, resume path, checkpoint), raised before
training starts: exit status 2."""


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """The ``arcvq-train`` console script: :func:`main`, then an exit status.

    0 after a successful run; 2 for an error in the arguments, configs, resume path or
    checkpoint found before training (as argparse does), printed as ``arcvq-train: error: <message>``;
    1 for any other failure and for every exception raised by ``trainer.fit``, printed with its
    traceback. Call :func:`main` to get the Trainer or the exception instead.
    """
    try:
        main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    except CONFIG_ERRORS as err:
        if DURING_TRAINING_NOTE in getattr(err, "__notes__", ()):
            return _training_failed(err)
        print(f"arcvq-train: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - any runtime failure becomes exit status 1, with its traceback
        return _training_failed(err)
    return 0


def _training_failed(err: Exception) -> int:
    traceback.print_exception(err)
    print(f"arcvq-train: error: training failed: {type(err).__name__}: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(cli())
