"""Differentiable all-gather of latent rows across torch.distributed ranks (for ArcLoss negatives)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

__all__ = ["distributed_world_size", "all_gather_rows"]


def distributed_world_size() -> int:
    """World size of the default process group, 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's rows ``x`` (n_r, D) in rank order; ranks may hold different n_r.

    Returns ``(gathered (sum n_r, D), offset)`` where ``gathered[offset:offset + n_local]`` is this
    rank's ``x``. The gather is differentiable: in backward every rank's gradient for a block is
    summed onto the rank that owns it (``torch.distributed.nn.functional.all_gather``), so a loss
    that every rank computes identically over the gathered rows, averaged by DDP, gives the same
    encoder gradient as one process holding the global batch.
    """
    world = distributed_world_size()
    if world == 1:
        return x, 0
    sizes = torch.tensor([x.shape[0]], device=x.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s.item()) for s in all_sizes]
    longest = max(counts)
    padded = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])]) if longest > x.shape[0] else x
    blocks = dist_nn.all_gather(padded.contiguous())
    rank = dist.get_rank()
    return torch.cat([b[:n] for b, n in zip(blocks, counts)]), sum(counts[:rank])
