"""ClusteredQuantizer (CVQ-VAE): the update rule against a literal transcription of the reference's
forward, taming's forward contract, exact resume, eval / passive forwards, two DDP ranks, validation."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from arcvq_plugin.baselines import ClusteredQuantizer


def reference_forward(z, weight, embed_prob, beta, distance, training=True, decay=0.99):
    """lyndonzheng/CVQ-VAE quantise.py:45-101 (anchor 'closest', no first_batch, no contrastive loss),
    step by step on copies: (indices, z_q (B, D, H, W), loss, perplexity, weight after, embed_prob after)."""
    num_embed, embed_dim = weight.shape
    weight, embed_prob = weight.clone(), embed_prob.clone()
    z = rearrange(z, "b c h w -> b h w c")
    flat = z.reshape(-1, embed_dim)
    if distance == "l2":  # :50-54
        d = -(flat ** 2).sum(1, keepdim=True) - (weight ** 2).sum(1) + 2 * flat @ weight.T
    else:  # :55-59
        d = F.normalize(flat, dim=1) @ F.normalize(weight, dim=1).T
    chosen = d.sort(dim=1).indices[:, -1]  # :62-64
    encodings = torch.zeros(flat.shape[0], num_embed, dtype=flat.dtype)
    encodings.scatter_(1, chosen[:, None], 1)
    z_q = (encodings @ weight).view(z.shape)  # :69
    loss = beta * ((z_q - z) ** 2).mean() + ((z_q - z) ** 2).mean()  # :71 (values; the detaches only route gradients)
    avg_probs = encodings.mean(0)  # :77-78
    perplexity = torch.exp(-(avg_probs * torch.log(avg_probs + 1e-10)).sum())
    if training:
        embed_prob = embed_prob * decay + avg_probs * (1 - decay)  # :84
        anchors = flat[d.sort(dim=0).indices[-1, :]]  # :88-90
        w = torch.exp(-(embed_prob * num_embed * 10) / (1 - decay) - 1e-3)[:, None]  # :100
        weight = weight * (1 - w) + anchors * w  # :101
    return chosen, rearrange(z_q, "b h w c -> b c h w"), loss, perplexity, weight, embed_prob


def _codebook_with_dead_codes(q: ClusteredQuantizer) -> None:
    """Half the codes far from every latent (never selected): their re-initialisation is visible."""
    with torch.no_grad():
        q.embedding.weight.normal_()
        q.embedding.weight[::2] = -q.embedding.weight[::2].abs() * 1e-3 - 10.0


@pytest.mark.parametrize("distance", ["cos", "l2"])
def test_update_rule_matches_the_reference_transcription_in_float64(distance):
    q = ClusteredQuantizer(10, 4, beta=0.25, legacy=False, distance=distance).double().train()
    _codebook_with_dead_codes(q)
    weight, embed_prob = q.embedding.weight.detach().clone(), q.running_usage.clone()
    for step in range(3):
        z = torch.randn(2, 4, 3, 3, dtype=torch.float64) + 0.5
        z_q, loss, (perplexity, _, indices) = q(z)
        chosen, ref_zq, ref_loss, ref_perplexity, weight, embed_prob = reference_forward(
            z, weight, embed_prob, 0.25, distance)
        assert torch.equal(indices, chosen), step
        torch.testing.assert_close(z_q, ref_zq, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(perplexity, ref_perplexity, rtol=1e-8, atol=0)
        torch.testing.assert_close(q.running_usage, embed_prob, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(q.embedding.weight.detach(), weight, rtol=1e-12, atol=1e-12)
    assert (q.embedding.weight[::2].norm(dim=1) < 9).sum() >= 3  # far codes moved onto latents
    assert 0 < float(q.loss_breakdown["reinit"]) < 1


@pytest.mark.parametrize("legacy", [True, False])
def test_l2_forward_and_gradients_equal_vectorquantizer2(legacy):
    ours = ClusteredQuantizer(12, 4, beta=0.3, legacy=legacy, distance="l2")
    theirs = VectorQuantizer2(12, 4, beta=0.3, legacy=legacy)
    theirs.load_state_dict({"embedding.weight": ours.embedding.weight.detach().clone()})
    z = torch.randn(2, 4, 3, 5) * 0.05
    grad = torch.randn(2, 4, 3, 5)
    results = []
    for q in (ours.train(), theirs.train()):  # ours moves its codebook in this forward: gradients unaffected
        x = z.clone().requires_grad_()
        z_q, loss, (_, min_encodings, indices) = q(x)
        ((z_q * grad).sum() + loss).backward()
        results.append((z_q.detach(), loss.detach(), indices, min_encodings, x.grad, q.embedding.weight.grad))
    names = ("z_q", "loss", "indices", "min_encodings", "z.grad", "codebook.grad")
    for mine, upstream, name in zip(results[0], results[1], names):
        if upstream is None:
            assert mine is None, name
        else:
            torch.testing.assert_close(mine, upstream, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(ours.embedding.weight, theirs.embedding.weight)  # and it did move


def test_remap_and_sane_index_shape_as_vectorquantizer2(tmp_path):
    np.save(tmp_path / "used.npy", np.array([1, 3, 5, 7], dtype=np.int64))
    kwargs = dict(remap=str(tmp_path / "used.npy"), unknown_index="extra", sane_index_shape=True)
    ours = ClusteredQuantizer(8, 4, distance="l2", **kwargs).eval()
    theirs = VectorQuantizer2(8, 4, beta=0.25, **kwargs).eval()
    theirs.load_state_dict({"embedding.weight": ours.embedding.weight.detach().clone(), "used": theirs.used})
    with torch.no_grad():  # latents at used and unused codes
        picks = torch.tensor([1, 3, 5, 7, 0, 2, 1, 3, 5, 7, 4, 6])
        z = ours.embedding.weight[picks].T.reshape(4, 2, 2, 3).transpose(0, 1)
    z_q, _, (_, _, indices) = ours(z)
    _, _, (_, _, expected) = theirs(z)
    assert indices.shape == (2, 2, 3) and torch.equal(indices, expected)
    assert set(indices.flatten().tolist()) == {0, 1, 2, 3, 4}  # 4: the "extra" index of unused codes


def _train(q: ClusteredQuantizer, batches) -> None:
    optimizer = torch.optim.SGD(q.parameters(), lr=0.5)
    for z in batches:
        optimizer.zero_grad()
        z_q, loss, _ = q(z)
        (loss + z_q.pow(2).mean()).backward()
        optimizer.step()


def test_running_usage_is_saved_so_resume_is_exact():
    batches = [torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(i)) + 0.3 for i in range(4)]
    straight = ClusteredQuantizer(12, 4).train()
    _codebook_with_dead_codes(straight)
    first_half = ClusteredQuantizer(12, 4).train()
    first_half.load_state_dict(straight.state_dict())
    _train(straight, batches)
    _train(first_half, batches[:2])
    state = first_half.state_dict()
    assert "running_usage" in state and state["running_usage"].sum() > 0
    resumed = ClusteredQuantizer(12, 4).train()
    resumed.load_state_dict(state)
    _train(resumed, batches[2:])
    assert torch.equal(resumed.running_usage, straight.running_usage)
    assert torch.equal(resumed.embedding.weight, straight.embedding.weight)


def test_eval_and_passive_forwards_change_nothing():
    q = ClusteredQuantizer(12, 4)
    _codebook_with_dead_codes(q)
    z = torch.randn(2, 4, 3, 3)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    with torch.no_grad():
        _, eval_loss, _ = q.eval()(z)
        with q.train().passive():
            _, passive_loss, _ = q(z)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items()) and q.loss_breakdown == {}
    torch.testing.assert_close(eval_loss, passive_loss)
    q(z)
    assert q.running_usage.sum() > 0 and not torch.equal(before["embedding.weight"], q.embedding.weight)


WORLD = 2


class Tokenizer(nn.Module):
    """A 1x1 conv encoder and a ClusteredQuantizer, in float64; forward returns the training loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.encoder = nn.Conv2d(3, 4, 1).double()
        self.quantize = ClusteredQuantizer(16, 4, legacy=False).double()
        _codebook_with_dead_codes(self.quantize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_q, loss, _ = self.quantize(self.encoder(x))
        return loss + z_q.pow(2).mean()


def _global_batches() -> list[torch.Tensor]:
    """Three global batches of 2 images per rank (each rank: rows [2 r, 2 r + 2))."""
    generator = torch.Generator().manual_seed(5)
    return [torch.randn(2 * WORLD, 3, 3, 3, dtype=torch.float64, generator=generator) for _ in range(3)]


def _fit(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in batches:
        optimizer.zero_grad()
        model(x).backward()
        optimizer.step()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    return {"codebook": module.quantize.embedding.weight.detach().clone(),
            "usage": module.quantize.running_usage.clone()}


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = [x.chunk(WORLD)[rank] for x in _global_batches()]
        torch.save(_fit(DistributedDataParallel(Tokenizer().train()), local), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_identical_codebooks_equal_to_one_process_on_the_whole_batch(tmp_path, one_thread):
    """Counts reduced over ranks and anchors chosen over all ranks' latents: both ranks hold the codebook
    and running usage of one process that trains on the concatenated batches."""
    torch.multiprocessing.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD,
                                          join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = _fit(Tokenizer().train(), _global_batches())
    for key in ("codebook", "usage"):
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], single[key], rtol=1e-10, atol=1e-12, msg=key)
    halves = [_fit(Tokenizer().train(), [x.chunk(WORLD)[r] for x in _global_batches()]) for r in range(WORLD)]
    assert not torch.allclose(halves[0]["usage"], halves[1]["usage"])  # each half alone would differ


INF = float("inf")


@pytest.mark.parametrize("kwargs,message", [
    ({"n_e": 0}, r"n_e must be an integer >= 1"), ({"e_dim": 2.5}, r"e_dim must be an integer >= 1"),
    ({"n_e": True}, r"n_e must be an integer >= 1"),
    ({"beta": -1.0}, r"beta must be a finite number >= 0"), ({"beta": INF}, r"beta must be a finite number >= 0"),
    ({"distance": "cosine"}, r"distance must be one of \('cos', 'l2'\)"),
    ({"usage_decay": 1.0}, r"usage_decay must be a number in \(0, 1\)"),
    ({"usage_decay": 0.0}, r"usage_decay must be a number in \(0, 1\)"),
    ({"usage_decay": float("nan")}, r"usage_decay must be a number in \(0, 1\)"),
    ({"usage_decay": True}, r"usage_decay must be a number in \(0, 1\)"),
    ({"unknown_index": "nope"}, r"unknown_index must be 'random', 'extra' or an integer >= 0"),
    ({"legacy": "yes"}, r"legacy must be True or False"),
    ({"sane_index_shape": 1}, r"sane_index_shape must be True or False"),
])
def test_construction_errors_name_the_argument_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClusteredQuantizer(**{"n_e": 8, "e_dim": 4, **kwargs})


def test_forward_errors():
    q = ClusteredQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"ClusteredQuantizer expects z of shape \(B, e_dim=4, H, W\)"):
        q(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="temp, rescale_logits and return_logits"):
        q(torch.randn(1, 4, 2, 2), temp=0.5)


def test_built_from_a_models_quantizer_config():
    from arcvq_plugin.quantizer_config import build_quantizer

    q = build_quantizer({"target": "arcvq_plugin.baselines.ClusteredQuantizer", "params": {"legacy": False}}, 32, 8)
    assert isinstance(q, ClusteredQuantizer) and (q.n_e, q.e_dim, q.legacy, q.distance) == (32, 8, False, "cos")
