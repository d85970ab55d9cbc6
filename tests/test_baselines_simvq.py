"""SimVQ against a float64 transcription of the authors' forward (youngsheen/SimVQ d8bd94d,
taming/modules/vqvae/quantize.py:74-118), taming's contract, decoding, eval / passive, resume, DDP, bad arguments."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from arcvq_plugin.baselines import SimVQ
import baseline_checks as checks

N_E = 8


def make(**kwargs) -> SimVQ:
    return SimVQ(N_E, checks.E_DIM, **{"legacy": False, **kwargs}).double()


def reference_forward(z, frozen, proj_weight, proj_bias, beta, legacy):
    """The authors' SimVQ.forward, line by line (their return tuple aside)."""
    z = rearrange(z, "b c h w -> b h w c").contiguous()
    z_flattened = z.view(-1, z.shape[-1])
    quant_codebook = F.linear(frozen, proj_weight, proj_bias)  # :84
    d = torch.sum(z_flattened ** 2, dim=1, keepdim=True) + torch.sum(quant_codebook ** 2, dim=1) - 2 * \
        torch.einsum("bd,dn->bn", z_flattened, rearrange(quant_codebook, "n d -> d n"))  # :86-88
    min_encoding_indices = torch.argmin(d, dim=1)
    z_q = F.embedding(min_encoding_indices, quant_codebook).view(z.shape)
    if not legacy:
        loss = beta * torch.mean((z_q.detach() - z) ** 2) + torch.mean((z_q - z.detach()) ** 2)
    else:
        loss = torch.mean((z_q.detach() - z) ** 2) + beta * torch.mean((z_q - z.detach()) ** 2)
    z_q = z + (z_q - z).detach()
    return rearrange(z_q, "b h w c -> b c h w").contiguous(), loss, min_encoding_indices


@pytest.mark.parametrize("legacy", [False, True])
def test_forward_and_gradients_equal_the_authors_transcription_in_float64(legacy):
    q = make(legacy=legacy, beta=0.3)
    z = checks.latents(3).requires_grad_(True)
    z_q, loss, (_, _, indices) = q(z)
    (loss + z_q.pow(3).sum()).backward()
    frozen = q.embedding.weight.detach().clone()
    weight = q.embedding_proj.weight.detach().clone().requires_grad_(True)
    bias = q.embedding_proj.bias.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    ref_z_q, ref_loss, ref_indices = reference_forward(z_ref, frozen, weight, bias, 0.3, legacy)
    (ref_loss + ref_z_q.pow(3).sum()).backward()
    assert torch.equal(indices, ref_indices) and len(set(indices.tolist())) > 1
    torch.testing.assert_close(z_q, ref_z_q, rtol=0, atol=0)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-14, atol=0)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(q.embedding_proj.weight.grad, weight.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(q.embedding_proj.bias.grad, bias.grad, rtol=1e-13, atol=1e-15)


def test_the_projection_gets_the_gradient_and_the_frozen_codebook_none():
    q = make()
    frozen = q.embedding.weight.detach().clone()
    _, loss, _ = q(checks.latents(4))
    loss.backward()
    assert not q.embedding.weight.requires_grad and q.embedding.weight.grad is None
    assert q.embedding_proj.weight.grad.abs().sum() > 0 and q.embedding_proj.bias.grad.abs().sum() > 0
    torch.optim.Adam(q.parameters(), lr=0.1).step()  # the frozen codebook is a parameter no optimizer moves
    assert torch.equal(q.embedding.weight, frozen)


def test_frozen_codebook_is_drawn_from_normal_with_std_one_over_sqrt_d():
    torch.manual_seed(0)
    weight = SimVQ(4096, 16).embedding.weight
    assert abs(float(weight.std()) - 16 ** -0.5) < 0.005 and abs(float(weight.mean())) < 0.005


def test_get_codebook_entry_applies_the_projection_where_the_authors_returns_the_frozen_code():
    q = make()
    indices = torch.tensor([0, 3, 7])
    with torch.no_grad():
        expected = q.embedding_proj(q.embedding.weight[indices])
    torch.testing.assert_close(q.get_codebook_entry(indices, None), expected, rtol=0, atol=0)
    assert not torch.allclose(q.get_codebook_entry(indices, None), q.embedding(indices))


def test_taming_contract(tmp_path):
    checks.check_contract(make, tmp_path)


def test_decoding_the_indices_gives_the_training_z_q():
    checks.check_decode_from_indices(make)


def test_eval_and_passive_forwards_change_nothing():
    checks.check_eval_and_passive_change_nothing(make)


def test_resume_is_exact():
    checks.check_resume_is_exact(make)


def test_two_ranks_stay_identical_and_equal_one_process_on_the_whole_batch(tmp_path, one_thread):
    checks.check_two_ranks(functools.partial(make), tmp_path, equals_single_process=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"n_e": 0}, r"n_e must be an integer >= 1"), ({"e_dim": 2.5}, r"e_dim must be an integer >= 1"),
    ({"beta": -1.0}, r"beta must be a finite number >= 0"), ({"beta": float("nan")}, r"beta must be a finite"),
    ({"legacy": "no"}, r"legacy must be True or False"),
    ({"unknown_index": "nope"}, r"unknown_index must be 'random', 'extra' or an integer >= 0"),
])
def test_construction_errors_name_the_argument_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimVQ(**{"n_e": 8, "e_dim": 4, **kwargs})


def test_forward_errors():
    with pytest.raises(ValueError, match=r"SimVQ expects z of shape \(B, e_dim=4, H, W\)"):
        SimVQ(8, 4)(torch.randn(1, 3, 2, 2))


def test_built_from_a_models_quantizer_config():
    from arcvq_plugin.quantizer_config import build_quantizer

    q = build_quantizer({"target": "arcvq_plugin.baselines.SimVQ", "params": {"legacy": False}}, 32, 8)
    assert isinstance(q, SimVQ) and (q.n_e, q.e_dim, q.legacy) == (32, 8, False)


def test_row_config_is_the_vq_row_with_simvq_and_trains(one_thread):
    run = checks.check_row_configs("simvq", "arcvq_plugin.baselines.SimVQ")
    assert isinstance(run["quantizer"], SimVQ) and run["quantizer"].legacy is False
    assert torch.equal(run["before"]["quantize.embedding.weight"], run["after"]["quantize.embedding.weight"])
    key = "quantize.embedding_proj.weight"
    assert not torch.equal(run["before"][key], run["after"][key])
