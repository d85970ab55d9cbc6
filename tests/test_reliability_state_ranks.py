"""The non-finite check under torch.distributed: a batch that is bad on one rank stops every rank at
the same check (two gloo processes; this module imports little, so they start fast)."""
from __future__ import annotations

from pathlib import Path

import torch

from arcvq_plugin.finite_training import NonFiniteTrainingError, refuse_non_finite


def _refuse_on_rank(rank: int, folder: str) -> None:
    """Rank ``rank`` of 2 (gloo): a finite check, then one where only rank 1 holds a NaN."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    refuse_non_finite(torch.zeros(3), "the input batch 'image'", batch_idx=3, epoch=1, step=8)
    value = torch.zeros(3)
    if rank == 1:
        value[0] = float("nan")
    try:
        refuse_non_finite(value, "the input batch 'image'", batch_idx=4, epoch=1, step=9)
        message = "no error"
    except NonFiniteTrainingError as error:
        message = str(error)
    torch.distributed.barrier()  # neither rank is left waiting in a collective
    (Path(folder) / f"rank{rank}.txt").write_text(message)
    torch.distributed.destroy_process_group()


def test_every_rank_refuses_a_batch_that_is_bad_on_one(tmp_path):
    torch.multiprocessing.spawn(_refuse_on_rank, args=(str(tmp_path),), nprocs=2, join=True)
    messages = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    assert messages[0].startswith("training batch 4 of epoch 1 (optimizer step 9): the input batch 'image' holds "
                                  "NaN or inf on another process (rank 0's is finite)")
    assert messages[1].startswith("training batch 4 of epoch 1 (optimizer step 9): the input batch 'image' holds "
                                  "NaN or inf (1 NaN, 0 inf of 3 values)")
