"""``arc_gather_negatives``: two DDP ranks (gloo, CPU) train exactly like one process on the whole batch.

With gathering, each rank's ArcLoss is computed over every rank's latents (positives chosen over
all of them), so the ArcLoss value equals that of one process holding the concatenated batch, and
so does the encoder gradient after DDP's averaging. Without gathering, each rank sees only its own
latents: both differ. (DDP averages gradients either way, which is why only a comparison with the
single-process run can tell the two apart.)
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from arcvq_plugin import ArcQuantizer

WORLD = 2
K, D = 16, 4


class Tokenizer(nn.Module):
    """A 1x1 conv encoder and an ArcQuantizer; forward returns the training loss and the ArcLoss."""

    def __init__(self, gather: bool) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.encoder = nn.Conv2d(3, D, 1).double()
        self.quantize = ArcQuantizer(K, D, arc_gamma=2.0, arc_gather_negatives=gather).double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_q, loss, _ = self.quantize(self.encoder(x))
        return loss + z_q.pow(2).mean(), self.quantize.loss_breakdown["arc"]


def images() -> torch.Tensor:
    """The global batch: 2 images per rank, 3x3 latents each (18 latents per rank, 36 in all)."""
    return torch.randn(2 * WORLD, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def step(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    loss, arc = model(x)
    loss.backward()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {"arc": arc.clone(), "encoder_grad": module.encoder.weight.grad.clone(),
            "codebook_grad": module.quantize.embedding.weight.grad.clone()}


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = images().chunk(WORLD)[rank]
        results = {}
        for gather in (True, False):
            results[gather] = step(DistributedDataParallel(Tokenizer(gather).train()), local)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_gathered_negatives_equal_one_process_on_the_whole_batch(tmp_path, one_thread):
    torch.multiprocessing.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                                          join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = step(Tokenizer(gather=False).train(), images())

    for r in ranks:
        gathered, local = r[True], r[False]
        torch.testing.assert_close(gathered["arc"], single["arc"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gathered["encoder_grad"], single["encoder_grad"], rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(gathered["codebook_grad"], single["codebook_grad"], rtol=1e-8, atol=1e-12)
        assert not torch.allclose(local["arc"], single["arc"], rtol=1e-3)
        assert not torch.allclose(local["encoder_grad"], single["encoder_grad"], rtol=1e-3)
    assert not torch.equal(ranks[0][False]["arc"], ranks[1][False]["arc"])  # each rank its own half
