"""taming/LDM ``main.DataModuleFromConfig`` for pytorch-lightning 2.x, importable from a package.

Configs written for upstream keep working after changing ``target: main.DataModuleFromConfig`` to
``target: arcvq_plugin.data.module.DataModuleFromConfig``::

    data:
      target: arcvq_plugin.data.module.DataModuleFromConfig
      params:
        batch_size: 12
        num_workers: 8
        train: {target: ..., params: {...}}
        validation: {target: ..., params: {...}}

One difference from upstream, for exact resumption: the training loader is a
:class:`arcvq_plugin.data.resumable.ResumableDataLoader`, whose order depends only on
``(shuffle_seed, epoch, rank)`` instead of on the global torch RNG at the start of each epoch
(which Lightning does not checkpoint), whose per-sample random draws are seeded per sample, and
whose position in the epoch is saved in checkpoints, so a run resumed from any batch boundary
(``kill -USR1``, preemption) continues the straight run.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from arcvq_plugin.config import instantiate_from_config
from arcvq_plugin.data.resumable import ResumableDataLoader
from arcvq_plugin.validation import check_int, check_optional_int

__all__ = ["WrappedDataset", "DataModuleFromConfig"]


class WrappedDataset(Dataset):
    """Any object with ``__len__`` and ``__getitem__`` as a torch ``Dataset`` (upstream's wrapper)."""

    def __init__(self, dataset: Any):
        self.data = dataset

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> Any:
        return self.data[idx]


class DataModuleFromConfig(pl.LightningDataModule):
    """Datasets built from ``target``/``params`` nodes, served by plain ``DataLoader``s.

    Args:
        batch_size: samples per batch (> 0) for every split.
        train, validation, test: dataset configs (``target``/``params``); a split that is None has
            no dataloader, as upstream.
        wrap: wrap each dataset in :class:`WrappedDataset` (for objects that are not torch datasets).
        num_workers: DataLoader workers (>= 0); None means ``2 * batch_size`` as upstream.
        shuffle_seed: seed of the training order; None takes ``PL_GLOBAL_SEED`` (set by the trainer
            CLI's ``--seed``) or 0.
    """

    def __init__(
        self,
        batch_size: int,
        train: Optional[Mapping] = None,
        validation: Optional[Mapping] = None,
        test: Optional[Mapping] = None,
        wrap: bool = False,
        num_workers: Optional[int] = None,
        shuffle_seed: Optional[int] = None,
    ):
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        num_workers = check_optional_int("num_workers", num_workers, minimum=0)
        self.num_workers = num_workers if num_workers is not None else 2 * self.batch_size
        self.shuffle_seed = shuffle_seed
        self.wrap = wrap
        self.dataset_configs: dict[str, Mapping] = {}
        self.datasets: dict[str, Dataset] = {}
        if train is not None:
            self.dataset_configs["train"] = train
            self.train_dataloader = self._train_dataloader
        if validation is not None:
            self.dataset_configs["validation"] = validation
            self.val_dataloader = self._val_dataloader
        if test is not None:
            self.dataset_configs["test"] = test
            self.test_dataloader = self._test_dataloader

    def prepare_data(self) -> None:
        for data_cfg in self.dataset_configs.values():
            instantiate_from_config(data_cfg)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return
        for split, data_cfg in self.dataset_configs.items():
            dataset = instantiate_from_config(data_cfg)
            self.datasets[split] = WrappedDataset(dataset) if self.wrap else dataset

    def _seed(self) -> int:
        if self.shuffle_seed is not None:
            return int(self.shuffle_seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.datasets[split], batch_size=self.batch_size, num_workers=self.num_workers)

    def _train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.datasets["train"], batch_size=self.batch_size, seed=self._seed(),
                                   num_workers=self.num_workers)

    def _val_dataloader(self) -> DataLoader:
        return self._loader("validation")

    def _test_dataloader(self) -> DataLoader:
        return self._loader("test")
