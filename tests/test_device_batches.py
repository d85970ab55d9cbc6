"""arcvq_plugin.data.device_batches: whole uint8 datasets served by indexing, in the DataLoader path's order."""
import pytest
import torch

from arcvq_plugin.data.device_batches import DeviceBatches, DeviceDataModule
from arcvq_plugin.data.resumable import ResumableSampler


def _pixels(n):
    return torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 2, 2, 1).contiguous()


def test_training_order_is_the_resumable_loaders():
    pixels = _pixels(10)
    batches = DeviceBatches(pixels, batch_size=4, shuffle_seed=7)
    sampler = ResumableSampler(range(10), seed=7)
    for epoch in (0, 3):
        batches.sampler.set_epoch(epoch)
        sampler.set_epoch(epoch)
        served = [b["image"][:, 0, 0, 0] for b in batches]
        assert [len(b) for b in served] == [4, 4, 2] and len(batches) == 3  # last batch smaller, as a DataLoader's
        assert torch.cat(served).tolist() == list(sampler)
    assert [b["image"][:, 0, 0, 0].tolist() for b in DeviceBatches(pixels, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_ranks_split_the_permutation_like_a_distributed_sampler():
    pixels, labels = _pixels(7), torch.arange(7) * 10
    shards = [DeviceBatches(pixels, 2, labels, shuffle_seed=1, rank=r, world_size=3) for r in range(3)]
    served = [torch.cat([b["image"][:, 0, 0, 0] for b in shard]).long() for shard in shards]
    assert [len(s) for s in served] == [3, 3, 3]  # 7 images padded to 9, equal shards
    order = shards[0].sampler.indices()
    assert sorted(torch.cat(served).tolist()) == sorted(order.tolist() + order[:2].tolist())
    batch = next(iter(shards[1]))
    assert torch.equal(batch["class_label"], batch["image"][:, 0, 0, 0].long() * 10)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        DeviceBatches(torch.zeros(2, 2, 2, 1), 1)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(_pixels(2), 0)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceDataModule(batch_size=0)


def test_module_serves_configured_splits_without_a_trainer():
    split = {"target": "arcvq_plugin.data.image_folder.UInt8ImageArray",
             "params": {"images": _pixels(5)[..., 0].numpy()}}
    data = DeviceDataModule(batch_size=2, train=split, test=split, shuffle_seed=0, eval_batch_size=5)
    data.setup("test")
    assert set(data.datasets) == {"test"}  # only what the stage needs
    test = data.test_dataloader()
    assert len(test) == 1 and next(iter(test))["image"].device.type == "cpu"
    assert len(data.train_dataloader()) == 3
    not_uint8 = {"target": "arcvq_plugin.data.sample_images.SampleImagesValidation", "params": {"size": 8, "length": 2}}
    with pytest.raises(ValueError, match="pixels"):
        DeviceDataModule(batch_size=2, train=not_uint8).setup("fit")
