"""FSQ against a float64 transcription of lucidrains' bound / codes_to_indices / indices_to_codes
(vector-quantize-pytorch 0d7d1aa, finite_scalar_quantization.py:52-57, :147-157, :195-224), the
indices <-> codes round trip, taming's contract, decoding, eval / passive, resume, DDP, bad arguments."""
from __future__ import annotations

import itertools

import pytest
import torch

import baseline_checks as checks
from arcvq_plugin.baselines import FSQ

LEVELS = [3, 4, 5]
N_E = 60


def make(**kwargs) -> FSQ:
    return FSQ(N_E, checks.E_DIM, levels=LEVELS, **kwargs).double()


def reference_bound(z, levels, eps=1e-3):
    """lucidrains' FSQ.bound (:147-157), soft tanh, with round_ste (:52-55)."""
    half_l = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half_l)
    bounded_z = torch.tanh(z + shift) * half_l - offset
    half_width = levels // 2
    zhat = bounded_z + (bounded_z.round() - bounded_z).detach()
    return zhat / half_width


def reference_codes_to_indices(zhat, levels, basis):
    """:220-224 (_scale_and_shift, :199-200)."""
    half_width = levels // 2
    return ((zhat * half_width + half_width) * basis).sum(dim=-1).round().to(torch.int32)


def test_forward_and_gradients_equal_lucidrains_transcription_in_float64():
    q = make()
    z = (3 * checks.latents(3)).requires_grad_(True)
    z_q, loss, (_, _, indices) = q(z)
    z_q.pow(3).sum().backward()
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    basis = torch.tensor([1.0, 3.0, 12.0], dtype=torch.float64)
    w_in = q.project_in.weight.detach().clone().requires_grad_(True)
    w_out = q.project_out.weight.detach().clone().requires_grad_(True)
    z_ref = z.detach().clone().requires_grad_(True)
    z_d = torch.nn.functional.linear(z_ref.permute(0, 2, 3, 1), w_in, q.project_in.bias.detach())
    codes = reference_bound(z_d, levels)
    ref_z_q = torch.nn.functional.linear(codes, w_out, q.project_out.bias.detach()).permute(0, 3, 1, 2)
    ref_z_q.pow(3).sum().backward()
    ref_indices = reference_codes_to_indices(codes.detach(), levels, basis).reshape(-1)
    assert torch.equal(indices, ref_indices.long()) and len(set(indices.tolist())) > 5
    assert loss.item() == 0.0
    torch.testing.assert_close(z_q, ref_z_q, rtol=0, atol=1e-15)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.project_in.weight.grad, w_in.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(q.project_out.weight.grad, w_out.grad, rtol=1e-12, atol=1e-14)


def test_every_index_round_trips_through_its_code_and_every_code_is_reached():
    q = make()
    indices = torch.arange(N_E)
    codes = q.indices_to_codes(indices, torch.float64)
    assert torch.equal(q.codes_to_indices(codes), indices)
    grid = {tuple(round(v, 6) for v in c) for c in codes.tolist()}
    expected = {tuple(round(v, 6) for v in c) for c in itertools.product(
        [-1.0, 0.0, 1.0], [-1.0, -0.5, 0.0, 0.5], [-1.0, -0.5, 0.0, 0.5, 1.0])}
    assert grid == expected  # L values per channel; even L one-sided, as the paper's offset
    # every one of the K codes is the quantisation of some input
    inputs = 1.5 * torch.randn(20000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reached = q.codes_to_indices(q.bound_and_round(inputs))
    assert set(reached.tolist()) == set(range(N_E))


def test_codebook_is_the_projection_of_every_code():
    q = make()
    with torch.no_grad():
        expected = q.project_out(q.indices_to_codes(torch.arange(N_E), torch.float64))
    torch.testing.assert_close(q.codebook, expected, rtol=0, atol=0)
    assert not hasattr(q, "embedding")


def test_no_projection_when_e_dim_is_the_number_of_levels():
    q = FSQ(60, 3, levels=LEVELS)
    assert isinstance(q.project_in, torch.nn.Identity) and list(q.parameters()) == []
    z = torch.randn(2, 3, 2, 2)
    z_q, _, (_, _, indices) = q(z)
    assert z_q.abs().max() <= 1.0 and torch.equal(q.get_codebook_entry(indices, (2, 2, 2, 3)), z_q)


def test_taming_contract(tmp_path):
    checks.check_contract(make, tmp_path)


def test_decoding_the_indices_gives_the_training_z_q():
    checks.check_decode_from_indices(make)


def test_eval_and_passive_forwards_change_nothing():
    checks.check_eval_and_passive_change_nothing(make)


def test_resume_is_exact():
    checks.check_resume_is_exact(make)


def test_two_ranks_stay_identical_and_equal_one_process_on_the_whole_batch(tmp_path, one_thread):
    checks.check_two_ranks(make, tmp_path, equals_single_process=True)


@pytest.mark.parametrize("kwargs,message", [
    ({"levels": None}, r"levels must be a non-empty list of integers >= 3, got None"),
    ({"levels": []}, r"levels must be a non-empty list of integers >= 3"),
    ({"levels": "888"}, r"levels must be a non-empty list of integers >= 3"),
    ({"levels": [8, 2, 4]}, r"levels\[1\] must be an integer >= 3, got 2"),
    ({"levels": [8, 8.0, 1]}, r"levels\[1\] must be an integer >= 3, got 8.0"),
    ({"levels": [8, 8, 4]}, r"n_e must equal the product of levels \[8, 8, 4\] \(256\), got 512"),
    ({"e_dim": 0}, r"e_dim must be an integer >= 1"),
    ({"unknown_index": -1}, r"unknown_index must be 'random', 'extra' or an integer >= 0"),
])
def test_construction_errors_name_the_argument_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FSQ(**{"n_e": 512, "e_dim": 4, "levels": [8, 8, 8], **kwargs})


def test_forward_errors():
    with pytest.raises(ValueError, match=r"FSQ expects z of shape \(B, e_dim=4, H, W\)"):
        FSQ(27, 4, levels=[3, 3, 3])(torch.randn(1, 3, 2, 2))


def test_built_from_a_models_quantizer_config():
    from omegaconf import OmegaConf

    from arcvq_plugin.quantizer_config import build_quantizer

    config = OmegaConf.create({"target": "arcvq_plugin.baselines.FSQ", "params": {"levels": [8, 8, 8]}})
    q = build_quantizer(config, 512, 64)
    assert isinstance(q, FSQ) and (q.n_e, q.e_dim, q.levels) == (512, 64, [8, 8, 8])


def test_row_config_is_the_vq_row_with_fsq_and_trains(one_thread):
    run = checks.check_row_configs("fsq", "arcvq_plugin.baselines.FSQ")
    assert isinstance(run["quantizer"], FSQ) and run["quantizer"].levels == [8, 8, 8]
    assert not torch.equal(run["before"]["quantize.project_in.weight"], run["after"]["quantize.project_in.weight"])
