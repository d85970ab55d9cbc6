"""IndexPropagationQuantizer (IBQ) against a float64 transcription of the authors' forward (TencentARC/SEED-Voken
b9a17ea, src/IBQ/modules/vqvae/quantize.py:343-372 and :429-466), the published straight-through formula,
the memory refusal, taming's contract, decoding, eval / passive, resume, DDP, bad arguments."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import einsum

import baseline_checks as checks
from arcvq_plugin.baselines import IndexPropagationQuantizer
from arcvq_plugin.baselines.index_propagation import DENSE_COPIES

N_E = 8


def make(**kwargs) -> IndexPropagationQuantizer:
    return IndexPropagationQuantizer(N_E, checks.E_DIM, **kwargs).double()


def reference_entropy(logits, temperature=0.01, sample_minimization_weight=1.0, batch_maximization_weight=1.0,
                      eps=1e-5):
    """The authors' compute_entropy_loss (:343-372)."""
    probs = F.softmax(logits / temperature, -1)
    log_probs = F.log_softmax(logits / temperature + eps, -1)
    avg_probs = reduce(probs, "... D -> D", "mean")
    avg_entropy = -torch.sum(avg_probs * torch.log(avg_probs + eps))
    sample_entropy = torch.mean(-torch.sum(probs * log_probs, -1))
    loss = (sample_minimization_weight * sample_entropy) - (batch_maximization_weight * avg_entropy)
    return sample_entropy, avg_entropy, loss


def reference_forward(z, weight, beta, temperature, n_e):
    """The authors' IndexPropagationQuantize.forward with use_entropy_loss=True (:429-466)."""
    logits = einsum("b d h w, n d -> b n h w", z, weight)
    soft_one_hot = F.softmax(logits, dim=1)
    ind = soft_one_hot.max(1, keepdim=True)[1]
    hard_one_hot = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(1, ind, 1.0)
    one_hot = hard_one_hot - soft_one_hot.detach() + soft_one_hot
    z_q = einsum("b n h w, n d -> b d h w", one_hot, weight)
    z_q_2 = einsum("b n h w, n d -> b d h w", hard_one_hot, weight)
    quant_loss = torch.mean((z_q - z) ** 2) + torch.mean((z_q_2.detach() - z) ** 2) + beta * \
        torch.mean((z_q_2 - z.detach()) ** 2)
    diff = (quant_loss, *reference_entropy(logits.permute(0, 2, 3, 1).reshape(-1, n_e), temperature=temperature))
    return z_q, diff, torch.flatten(ind)


def scaled_latents(seed: int) -> torch.Tensor:
    """Latents whose softmax over the N(0, 1) codes is soft (not saturated), so its gradient is not ~0."""
    return 0.3 * checks.latents(seed)


def test_forward_and_gradients_equal_the_authors_transcription_in_float64():
    q = make(beta=0.3, entropy_weight=0.05, entropy_temperature=0.5)
    z = scaled_latents(3).requires_grad_(True)
    z_q, loss, (_, _, indices) = q(z)
    (loss + z_q.pow(3).sum()).backward()
    weight = q.embedding.weight.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    ref_z_q, terms, ref_indices = reference_forward(z_ref, weight, 0.3, 0.5, N_E)
    quant, sample_entropy, avg_entropy, entropy = terms
    ref_loss = 1.0 * quant + 0.05 * entropy  # vqperceptual.py:181-182, quant_loss_weight 1
    (ref_loss + ref_z_q.pow(3).sum()).backward()
    assert torch.equal(indices, ref_indices) and len(set(indices.tolist())) > 1
    torch.testing.assert_close(z_q, ref_z_q, rtol=0, atol=1e-15)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-14, atol=0)
    for key, value in (("quant", quant), ("sample_entropy", sample_entropy), ("avg_entropy", avg_entropy),
                       ("entropy", entropy)):
        torch.testing.assert_close(q.loss_breakdown[key], value.detach(), rtol=1e-14, atol=0, msg=key)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.embedding.weight.grad, weight.grad, rtol=1e-12, atol=1e-14)


def test_straight_through_on_the_soft_one_hot_is_the_published_formula():
    """z_q's value is the selected code E[k]; its gradient is the softmax's: for an upstream gradient G at a
    position, with s = softmax(z . E) and g = E G, dL/dz = E^T (s * (g - <s, g>)) and
    dL/dE = s * (g - <s, g>) z^T + onehot G^T (IBQ paper, Eq. 4-5: one_hot = hard - sg(soft) + soft)."""
    q = make()
    z = scaled_latents(5).requires_grad_(True)
    z_q, _, (_, _, indices) = q(z)
    upstream = torch.randn_like(z_q, generator=torch.Generator().manual_seed(1))
    (z_q * upstream).sum().backward()
    E = q.embedding.weight.detach()
    z_flat = z.detach().permute(0, 2, 3, 1).reshape(-1, checks.E_DIM)
    G = upstream.permute(0, 2, 3, 1).reshape(-1, checks.E_DIM)
    s = torch.softmax(z_flat @ E.T, dim=1)
    g = G @ E.T
    dlogits = s * (g - (s * g).sum(dim=1, keepdim=True))
    hard = F.one_hot(indices, N_E).double()
    rows = "b d h w -> (b h w) d"
    torch.testing.assert_close(rearrange(z_q.detach(), rows), E[indices], rtol=0, atol=1e-15)
    torch.testing.assert_close(rearrange(z.grad, rows), dlogits @ E, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.embedding.weight.grad, dlogits.T @ z_flat + hard.T @ G, rtol=1e-12, atol=1e-14)
    assert float(dlogits.abs().sum()) > 1e-3  # the softmax is soft here: a non-trivial check


def test_codebook_starts_as_nn_embeddings_standard_normal():
    torch.manual_seed(0)
    weight = IndexPropagationQuantizer(4096, 16).embedding.weight.detach()
    assert abs(float(weight.std()) - 1.0) < 0.01 and abs(float(weight.mean())) < 0.01


def test_entropy_weight_zero_is_the_authors_loss_without_the_entropy_term():
    q = make(entropy_weight=0.0)
    z = scaled_latents(6)
    _, loss, _ = q(z)
    _, (quant, *_), _ = reference_forward(z, q.embedding.weight.detach(), 0.25, 0.01, N_E)
    torch.testing.assert_close(loss.detach(), quant, rtol=1e-14, atol=0)


def test_entropy_term_is_finite_under_float16_logits():
    """float16 logits above 655 overflow when divided by the temperature 0.01: the term runs in float32."""
    q = IndexPropagationQuantizer(N_E, checks.E_DIM)
    z = 300 * torch.randn(2, checks.E_DIM, 3, 3, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.float16):
        z_q, loss, _ = q(z)
    assert torch.isfinite(loss) and torch.isfinite(z_q).all()
    assert all(torch.isfinite(v) for v in q.loss_breakdown.values())


def test_sizes_that_cannot_fit_are_refused_before_any_work():
    q = make(memory_limit_bytes=10_000)
    z = checks.latents(7)  # 2 x 8 x 3 x 3 float64: 12 copies = 13,824 bytes
    assert q.dense_bytes(z) == DENSE_COPIES * 2 * N_E * 3 * 3 * 8
    with pytest.raises(ValueError, match=r"dense soft one-hot is B x K x H x W = 2 x 8 x 3 x 3; .* more than the "
                                         r"0\.00 GiB memory_limit_bytes: lower the batch size"):
        q.train()(z)
    assert q.loss_breakdown == {}
    make(memory_limit_bytes=13_824)(z)  # exactly fits
    huge = IndexPropagationQuantizer(2 ** 20, 1)  # K = 2^20 at 1024 x 64 x 64 latents: 2.1 PiB of one-hots
    with pytest.raises(ValueError, match=r"more than the [0-9.]+ GiB free memory of cpu"):
        huge(torch.zeros(1024, 1, 64, 64))


def test_taming_contract(tmp_path):
    checks.check_contract(make, tmp_path)


def test_decoding_the_indices_gives_the_training_z_q():
    checks.check_decode_from_indices(make)


def test_eval_and_passive_forwards_change_nothing():
    checks.check_eval_and_passive_change_nothing(make)


def test_resume_is_exact():
    checks.check_resume_is_exact(make)


def test_two_ranks_stay_identical(tmp_path, one_thread):
    """The entropy term's batch average is per rank (as the authors' training), so the ranks are compared
    with each other, not with one process on the whole batch."""
    checks.check_two_ranks(make, tmp_path, equals_single_process=False)


@pytest.mark.parametrize("kwargs,message", [
    ({"n_e": 0}, r"n_e must be an integer >= 1"), ({"e_dim": True}, r"e_dim must be an integer >= 1"),
    ({"beta": -0.5}, r"beta must be a finite number >= 0"),
    ({"entropy_weight": -1.0}, r"entropy_weight must be a finite number >= 0"),
    ({"entropy_weight": float("inf")}, r"entropy_weight must be a finite number >= 0"),
    ({"entropy_temperature": 0.0}, r"entropy_temperature must be a finite number > 0"),
    ({"memory_limit_bytes": 0}, r"memory_limit_bytes must be None or an integer >= 1"),
    ({"memory_limit_bytes": 1.5e9}, r"memory_limit_bytes must be None or an integer >= 1"),
    ({"sane_index_shape": "yes"}, r"sane_index_shape must be True or False"),
])
def test_construction_errors_name_the_argument_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IndexPropagationQuantizer(**{"n_e": 8, "e_dim": 4, **kwargs})


def test_forward_errors():
    with pytest.raises(ValueError, match=r"IndexPropagationQuantizer expects z of shape \(B, e_dim=4, H, W\)"):
        IndexPropagationQuantizer(8, 4)(torch.randn(1, 3, 2, 2))


def test_built_from_a_models_quantizer_config():
    from arcvq_plugin.quantizer_config import build_quantizer

    q = build_quantizer({"target": "arcvq_plugin.baselines.IndexPropagationQuantizer",
                         "params": {"entropy_weight": 0.1}}, 32, 8)
    assert isinstance(q, IndexPropagationQuantizer) and (q.n_e, q.e_dim, q.entropy_weight) == (32, 8, 0.1)


def test_row_config_is_the_vq_row_with_ibq_and_trains(one_thread):
    run = checks.check_row_configs("ibq", "arcvq_plugin.baselines.IndexPropagationQuantizer")
    quantizer = run["quantizer"]
    assert isinstance(quantizer, IndexPropagationQuantizer) and quantizer.entropy_weight == 0.05
    assert not torch.equal(run["before"]["quantize.embedding.weight"], run["after"]["quantize.embedding.weight"])
    assert set(quantizer.loss_breakdown) == {"quant", "sample_entropy", "avg_entropy", "entropy", "perplexity"}
