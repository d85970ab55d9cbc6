"""ResumableDataLoader: the order, the per-sample random draws and the position in the epoch."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from arcvq_plugin.data.resumable import ResumableDataLoader, ResumableSampler


class RandomDraws(Dataset):
    """Item i: (i, a torch, a numpy and a python random draw)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return torch.tensor([index, torch.rand(1).item(), np.random.rand(), random.random()], dtype=torch.float64)


def epoch(loader, number: int) -> torch.Tensor:
    loader.sampler.set_epoch(number)
    return torch.cat(list(loader))


def test_order_is_torch_distributed_samplers_and_a_function_of_seed_and_epoch():
    loader = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5)
    reference = torch.utils.data.DistributedSampler(range(10), num_replicas=1, rank=0, shuffle=True, seed=5)
    reference.set_epoch(1)
    assert epoch(loader, 1)[:, 0].long().tolist() == list(reference)
    assert torch.equal(epoch(loader, 1), epoch(loader, 1))
    assert not torch.equal(epoch(loader, 0), epoch(loader, 1))
    assert len(loader) == 4


def test_per_sample_draws_do_not_depend_on_workers_and_leave_the_global_stream_alone():
    single = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5)
    workers = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5, num_workers=2)
    torch.manual_seed(1)
    expected_next = torch.rand(1)
    torch.manual_seed(1)
    draws = epoch(single, 2)
    assert torch.equal(torch.rand(1), expected_next)  # neither the items nor the iterator drew from it
    assert torch.equal(draws, epoch(workers, 2))
    assert len(set(draws[:, 1].tolist())) == 10  # every item its own draw


def test_resumes_after_the_batches_of_the_saved_state():
    loader = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5)
    loader.sampler.set_epoch(3)
    iterator = iter(loader)
    head = [next(iterator) for _ in range(2)]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2, "batches_in_epoch": 4, "batch_size": 3, "dataset_length": 10,
                     "world_size": 1}
    tail = list(iterator)

    resumed = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5)
    resumed.load_state_dict(state)
    resumed_tail = list(resumed)
    assert len(resumed_tail) == len(tail) == 2
    for a, b in zip(tail, resumed_tail):
        assert torch.equal(a, b)
    assert resumed.state_dict() == {**state, "batches": 4}
    assert torch.equal(torch.cat(head + tail), epoch(ResumableDataLoader(RandomDraws(), batch_size=3, seed=5), 3))
    # a state saved at the end of an epoch continues with the next epoch, from its start
    finished = ResumableDataLoader(RandomDraws(), batch_size=3, seed=5)
    finished.load_state_dict({"epoch": 3, "batches": 4})
    assert finished.sampler.epoch == 4 and len(list(finished)) == 4


def test_each_rank_skips_its_own_share():
    ranks = [ResumableSampler(range(10), seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    shares = [list(s) for s in ranks]
    assert sorted(shares[0] + shares[1]) == list(range(10))
    ranks[1].skip = 2
    assert list(ranks[1]) == shares[1][2:]
    assert list(ranks[1]) == shares[1]  # the skip applies to one iteration only


def test_options_it_owns_are_refused():
    with pytest.raises(ValueError, match="sampler"):
        ResumableDataLoader(RandomDraws(), batch_size=2, sampler=None)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        ResumableDataLoader(RandomDraws(), batch_size=0)
