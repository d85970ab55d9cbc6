"""Callbacks the CLI adds to every run: the run directory with its config snapshot, a checkpoint
on SIGUSR1, and a checkpoint when training crashes.

``SetupCallback`` replaces upstream's (whose ``on_pretrain_routine_start`` hook no longer exists):
at fit start, on global rank 0, it creates ``<logdir>/{checkpoints,configs}`` and writes
``configs/<now>-project.yaml`` (the merged config without ``lightning``) and
``configs/<now>-lightning.yaml``. Upstream's "move child runs away" step is not needed: every
DDP process uses the run name of rank 0 (see ``arcvq_plugin.main``).

``CheckpointOnSignal``: upstream saved ``last.ckpt`` inside the SIGUSR1 handler, i.e. at an
arbitrary point of a training step (for a VQGAN possibly between the autoencoder and
discriminator updates), and with pytorch-lightning 2.x that save is a collective call that
deadlocks when only rank 0 enters it. Here the handler only records the request; the checkpoint
is written at the end of the current training batch, by all ranks together (any rank that got
the signal triggers it), so it is a consistent state. Before fit starts and after it ends,
SIGUSR1 prints a message (:func:`install_early_signal_handler`) instead of killing the process.

``CheckpointOnCrash``: upstream's ``main.py`` saves ``last.ckpt`` on any exception; here only a
consistent state is saved (see the class).
"""
from __future__ import annotations

import os
import signal
from typing import Any, Optional

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

__all__ = ["SetupCallback", "CheckpointOnSignal", "CheckpointOnCrash", "install_early_signal_handler",
           "report_early_signal"]


class SetupCallback(pl.Callback):
    """Create the run directory and save the config snapshot (rank 0, at fit start).

    The project snapshot starts with a comment saying which perceptual-loss (LPIPS) weights the
    model was built with (genuine, substitute with the path of the record that lists it,
    unrecognised, or none), also printed to the log; every checkpoint carries the same under
    ``"arcvq_perceptual_weights"`` (``{module name: provenance}``), so a result made with
    substitute weights never looks like a genuine one.

    Args:
        now: timestamp used in the snapshot file names.
        logdir, ckptdir, cfgdir: the run directory and its checkpoints/ and configs/ folders.
        config: merged config without ``lightning``.
        lightning_config: the ``lightning`` section as resolved by the CLI.
    """

    def __init__(self, now: str, logdir: str, ckptdir: str, cfgdir: str, config: DictConfig,
                 lightning_config: DictConfig):
        super().__init__()
        self.now = now
        self.logdir = logdir
        self.ckptdir = ckptdir
        self.cfgdir = cfgdir
        self.config = config
        self.lightning_config = lightning_config

    @staticmethod
    def perceptual_weights(pl_module: pl.LightningModule) -> dict[str, dict]:
        """``{module name: weights_provenance}`` of every perceptual loss in ``pl_module`` (an
        :class:`arcvq_plugin.taming.perceptual.OfflineLPIPS` carries one); empty when none."""
        return {name: dict(module.weights_provenance) for name, module in pl_module.named_modules()
                if isinstance(getattr(module, "weights_provenance", None), dict)}

    def _weights_header(self, pl_module: pl.LightningModule) -> str:
        from arcvq_plugin.taming.perceptual import describe_provenance

        weights = self.perceptual_weights(pl_module)
        lines = [f"{name}: {describe_provenance(p)}" for name, p in weights.items()] or [
            "none: this model builds no LPIPS (no perceptual loss, or perceptual_weight: 0)"]
        return "".join(f"# {line}\n" for line in ["Perceptual loss (LPIPS) weights of this run:", *lines])

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        for folder in (self.logdir, self.ckptdir, self.cfgdir):
            os.makedirs(folder, exist_ok=True)
        header = self._weights_header(pl_module)
        print(header, end="")
        print("Project config")
        print(OmegaConf.to_yaml(self.config))
        with open(os.path.join(self.cfgdir, f"{self.now}-project.yaml"), "w") as snapshot:
            snapshot.write(header + OmegaConf.to_yaml(self.config))
        print("Lightning config")
        print(OmegaConf.to_yaml(self.lightning_config))
        OmegaConf.save(OmegaConf.create({"lightning": self.lightning_config}),
                       os.path.join(self.cfgdir, f"{self.now}-lightning.yaml"))

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["arcvq_perceptual_weights"] = self.perceptual_weights(pl_module)


class CheckpointOnSignal(pl.Callback):
    """Save ``ckpt_path`` at the end of the training batch during which ``signum`` arrived.

    Args:
        ckpt_path: where to save (upstream: ``<logdir>/checkpoints/last.ckpt``).
        signum: the signal (default SIGUSR1). A handler that was installed before is still called.
    """

    def __init__(self, ckpt_path: str, signum: int = signal.SIGUSR1):
        super().__init__()
        self.ckpt_path = ckpt_path
        self.signum = signum
        self.requested = False
        self._previous: Optional[Any] = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if callable(self._previous) and self._previous is not report_early_signal:
            self._previous(signum, frame)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            self._previous = signal.signal(self.signum, self._handle)
            self._installed = True
        except ValueError:
            print(f"Not in the main thread: no checkpoint on signal {signal.Signals(self.signum).name}.")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        self.requested = False
        if trainer.global_rank == 0:
            print(f"Summoning checkpoint: {self.ckpt_path}")
        trainer.save_checkpoint(self.ckpt_path)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def report_early_signal(signum: int, frame: Any) -> None:
    """The SIGUSR1 handler from start-up until fit begins (and after it ends): a message on stderr
    (``os.write``: a ``print`` could re-enter a write the signal interrupted), no checkpoint."""
    os.write(2, f"Received {signal.Signals(signum).name} while not training (before fit started or after "
                "it ended): no checkpoint to write, continuing.\n".encode())


def install_early_signal_handler(signum: int = signal.SIGUSR1) -> Optional[Any]:
    """Handle ``signum`` with :func:`report_early_signal`; returns the previous handler (None outside
    the main thread, where nothing changes)."""
    try:
        return signal.signal(signum, report_early_signal)
    except ValueError:
        return None


class CheckpointOnCrash(pl.Callback):
    """On an exception during fit, save ``ckpt_path`` when the model is in a consistent state.

    Consistent means: training has started (the model holds trained or resumed weights, never the
    fresh initialisation of a run whose resume failed) and no optimizer step has begun in the
    failing training batch, so the weights, optimizer states and quantiser clock are those at the
    end of the last completed batch (or of a validation). An exception raised after an optimizer
    step of its batch (for a GAN, between the autoencoder and discriminator updates) writes nothing:
    the newest periodic or ``kill -USR1`` checkpoint stays. A failure while writing a checkpoint
    writes nothing either. Only single-process runs save it (under DDP the other ranks may be
    anywhere, and a save is a collective call); ``KeyboardInterrupt`` is handled by Lightning
    and writes nothing here.

    Args:
        ckpt_path: where to save (upstream: ``<logdir>/checkpoints/last.ckpt``).
    """

    def __init__(self, ckpt_path: str):
        super().__init__()
        self.ckpt_path = ckpt_path
        self._training_started = False
        self._stepped_in_batch = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._training_started = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._stepped_in_batch = False

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self._stepped_in_batch = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._stepped_in_batch = False

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from arcvq_plugin.checkpoint_writing import CheckpointWriteError

        if not isinstance(exception, Exception) or isinstance(exception, CheckpointWriteError):
            return
        if not self._training_started:
            print("Training failed before it started: no crash checkpoint (the model holds no trained state).")
            return
        if self._stepped_in_batch:
            print("Training failed after an optimizer step of the current batch: no crash checkpoint "
                  f"(the state is between two batches); {self.ckpt_path} keeps the newest saved state.")
            return
        if trainer.world_size > 1:
            print("Training failed under several processes: no crash checkpoint (the other ranks may be anywhere).")
            return
        print(f"Training failed ({type(exception).__name__}): saving the state at the end of the last "
              f"completed batch to {self.ckpt_path}")
        trainer.save_checkpoint(self.ckpt_path)
