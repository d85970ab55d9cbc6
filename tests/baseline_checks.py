"""Checks every baseline quantiser of ``arcvq_plugin.baselines`` shares (used by tests/test_baselines_*.py):
taming's contract, decoding from indices, eval / passive forwards, exact resume and two-process DDP."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Factory = Callable[..., nn.Module]
"""``factory(**taming_kwargs)`` -> a quantiser with n_e, e_dim fixed by the test file, in float64."""

E_DIM = 4


def latents(seed: int, batch: int = 2, size: int = 3, e_dim: int = E_DIM) -> torch.Tensor:
    return torch.randn(batch, e_dim, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def check_contract(factory: Factory, tmp_path) -> None:
    """taming's forward tuple and index shapes (flat, sane_index_shape, remap with 'extra')."""
    z = latents(0)
    q = factory()
    z_q, loss, (perplexity, encodings, indices) = q(z)
    assert z_q.shape == z.shape and z_q.dtype == z.dtype
    assert loss.ndim == 0 and torch.isfinite(loss) and encodings is None
    assert indices.shape == (2 * 3 * 3,) and indices.dtype == torch.int64
    assert 1.0 <= float(perplexity) <= q.n_e
    assert factory(sane_index_shape=True)(z)[2][2].shape == (2, 3, 3)
    np.save(tmp_path / "used.npy", np.arange(0, q.n_e, 2, dtype=np.int64))
    remapped = factory(remap=str(tmp_path / "used.npy"), unknown_index="extra")
    remapped.load_state_dict(q.state_dict(), strict=False)
    _, _, (_, _, remapped_indices) = remapped(z)
    even = indices % 2 == 0
    assert remapped_indices.shape == (18, 1)
    assert torch.equal(remapped_indices[even, 0], indices[even] // 2)
    assert bool((remapped_indices[~even, 0] == q.n_e // 2).all())  # the 'extra' index of unused codes
    decoded = remapped.get_codebook_entry(remapped_indices.reshape(-1), (2, 3, 3, E_DIM))
    assert torch.allclose(decoded.permute(0, 2, 3, 1).reshape(-1, E_DIM)[even],
                          q.get_codebook_entry(indices, None)[even], rtol=0, atol=1e-12)


def check_decode_from_indices(factory: Factory) -> None:
    """``get_codebook_entry(indices, shape)`` gives the z_q of the training forward (values), in both
    of taming's layouts: (B, D, H, W) with a shape, (N, D) with ``shape=None``."""
    q = factory().train()
    z = latents(1)
    z_q, _, (_, _, indices) = q(z)
    decoded = q.get_codebook_entry(indices, (2, 3, 3, E_DIM))
    torch.testing.assert_close(decoded, z_q, rtol=0, atol=1e-12)
    flat = q.get_codebook_entry(indices, None)
    torch.testing.assert_close(flat, z_q.permute(0, 2, 3, 1).reshape(-1, E_DIM), rtol=0, atol=1e-12)


def check_eval_and_passive_change_nothing(factory: Factory) -> None:
    """Eval and passive forwards leave the state dict and ``loss_breakdown`` as they were and give the
    training forward's outputs."""
    q = factory().train()
    z = latents(2)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    has_breakdown = hasattr(q, "loss_breakdown")
    with torch.no_grad():
        train_out = q(z)
        if has_breakdown:  # a training forward records its loss terms; the others must not
            assert q.loss_breakdown
            q.loss_breakdown = {}
        eval_out = q.eval()(z)
        with q.train().passive():
            passive_out = q(z)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    assert not has_breakdown or q.loss_breakdown == {}
    for out in (eval_out, passive_out):
        torch.testing.assert_close(out[0], train_out[0], rtol=0, atol=0)
        torch.testing.assert_close(out[1], train_out[1], rtol=0, atol=0)
        assert torch.equal(out[2][2], train_out[2][2])


def _train(q: nn.Module, optimizer: torch.optim.Optimizer, batches) -> None:
    for z in batches:
        optimizer.zero_grad()
        z_q, loss, _ = q(z)
        (loss + (z_q - 0.5).pow(2).mean()).backward()
        optimizer.step()


def check_resume_is_exact(factory: Factory) -> None:
    """Training 4 steps straight equals 2 steps, a save of the quantiser's and Adam's state dicts into
    fresh objects (another seed: nothing may come from the constructor's draw), and 2 more steps."""
    batches = [latents(10 + i) for i in range(4)]
    torch.manual_seed(0)
    straight = factory().train()
    first = factory().train()
    first.load_state_dict(straight.state_dict())
    straight_opt = torch.optim.Adam([p for p in straight.parameters() if p.requires_grad], lr=0.05)
    first_opt = torch.optim.Adam([p for p in first.parameters() if p.requires_grad], lr=0.05)
    _train(straight, straight_opt, batches)
    _train(first, first_opt, batches[:2])
    saved = {"model": first.state_dict(), "optimizer": first_opt.state_dict()}
    torch.manual_seed(123)
    resumed = factory().train()
    resumed.load_state_dict(saved["model"])
    resumed_opt = torch.optim.Adam([p for p in resumed.parameters() if p.requires_grad], lr=0.05)
    resumed_opt.load_state_dict(saved["optimizer"])
    _train(resumed, resumed_opt, batches[2:])
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    z = latents(99)
    assert torch.equal(straight(z)[0], resumed(z)[0])


WORLD = 2


class Tokenizer(nn.Module):
    """A 1x1 conv encoder and a quantiser, in float64; forward returns the training loss."""

    def __init__(self, factory: Factory) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.encoder = nn.Conv2d(3, E_DIM, 1).double()
        self.quantize = factory()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_q, loss, _ = self.quantize(self.encoder(x))
        return loss + (z_q - 0.5).pow(2).mean()


def global_batches() -> list[torch.Tensor]:
    """Three global batches of 2 images per rank (each rank: rows [2 r, 2 r + 2))."""
    generator = torch.Generator().manual_seed(5)
    return [torch.randn(2 * WORLD, 3, 3, 3, dtype=torch.float64, generator=generator) for _ in range(3)]


def fit(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """SGD on ``batches``; returns the state dict of the quantiser and the encoder."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for x in batches:
        optimizer.zero_grad()
        model(x).backward()
        optimizer.step()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _rank(rank: int, factory: Factory, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(1000 + rank)  # a rank-dependent draw: DDP's broadcast must make the ranks agree
        model = Tokenizer(factory).train()
        if rank == 1:
            with torch.no_grad():
                for p in model.quantize.parameters():
                    p.add_(1.0)
        local = [x.chunk(WORLD)[rank] for x in global_batches()]
        torch.save(fit(DistributedDataParallel(model), local), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_two_ranks(factory: Factory, tmp_path) -> list[dict[str, torch.Tensor]]:
    """Train a Tokenizer of ``factory`` on two gloo processes (rank 1 starts from a perturbed quantiser);
    returns each rank's final state dict."""
    torch.multiprocessing.start_processes(_rank, args=(factory, str(tmp_path / "init"), str(tmp_path)),
                                          nprocs=WORLD, join=True, start_method="fork")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def check_two_ranks(factory: Factory, tmp_path, equals_single_process: bool) -> None:
    """Both ranks end with identical state; with ``equals_single_process`` (losses that are means over
    the batch) also equal to one process on the concatenated batches."""
    ranks = run_two_ranks(factory, tmp_path)
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    if equals_single_process:
        single = fit(Tokenizer(factory).train(), global_batches())
        for key in single:
            torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-10, atol=1e-12, msg=key)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vqvae"
QUANTIZER_KEY = "quantizer_config"


def check_row_configs(row: str, target: str) -> dict:
    """``configs/vqvae/<dataset>_<row>.yaml`` is ``<dataset>_vq.yaml`` with another quantizer_config (both
    datasets); the MNIST row trains two steps through ``arcvq-reproduce``'s ``train_row``. Returns
    ``{"before": state dict, "after": state dict, "quantizer": trained quantiser}``."""
    from omegaconf import OmegaConf

    from arcvq_plugin.config import instantiate_from_config
    from arcvq_plugin.vqvae.reproduce import row_config, train_row

    for dataset in ("mnist", "cifar10"):
        vq = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{dataset}_vq.yaml"))
        ours = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{dataset}_{row}.yaml"))
        assert ours["model"]["params"].pop(QUANTIZER_KEY)["target"] == target
        vq["model"]["params"].pop(QUANTIZER_KEY)
        assert ours == vq, dataset
    config = row_config(CONFIGS, "mnist", row, epochs=1, batch_size=8, limit_train=16, limit_test=8)
    torch.manual_seed(0)
    before = instantiate_from_config(config.model).state_dict()
    trained = train_row(config, seed=0, progress_bar=False, device="cpu")
    assert trained.clipped_fraction is None  # no clock, no NormBoundCallback
    return {"before": before, "after": trained.model.state_dict(), "quantizer": trained.model.quantize}
