import numpy as np
import pytest
import torch
from einops import rearrange

from arcvq_plugin import ArcQuantizer

import formulas


def flat(z):
    return rearrange(z, "b c h w -> (b h w) c")


def make(n_e=12, e_dim=4, **kw):
    return ArcQuantizer(n_e, e_dim, **kw).double()


def test_codebook_starts_on_unit_sphere():
    q = ArcQuantizer(64, 8)
    torch.testing.assert_close(q.embedding.weight.norm(dim=1), torch.ones(64))


def test_selection_and_raw_output_match_formula():
    q = make()
    with torch.no_grad():
        q.embedding.weight.mul_(torch.rand(12, 1, dtype=torch.float64) * 3 + 0.1)  # unequal norms
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    z_q, _, (_, _, idx) = q.eval()(z)
    k, zq_ref = formulas.select(flat(z), q.embedding.weight)
    assert torch.equal(idx, k)
    torch.testing.assert_close(flat(z_q), zq_ref)  # the RAW code, not the normalised one


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("t", [0, 1234])
def test_training_loss_and_gradients_match_formulas(legacy, t):
    q = make(beta=0.25, legacy=legacy, arc_gamma=0.7, arc_gamma_decay=5e-4)
    q.clock.fill_(t)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    z_q, loss, _ = q.train()(z)
    (z_q.sum() + loss).backward()

    z_ref = z.detach().clone().requires_grad_()
    e_ref = q.embedding.weight.detach().clone().requires_grad_()
    k, zq = formulas.select(flat(z_ref), e_ref)
    ref_loss = formulas.vq_loss(flat(z_ref), zq, 0.25, legacy) + formulas.arc_weight(
        0.7, 5e-4, t) * formulas.arc_loss(flat(z_ref), e_ref)
    ste = flat(z_ref) + (zq - flat(z_ref)).detach()
    (ste.sum() + ref_loss).backward()
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(z.grad, z_ref.grad)
    torch.testing.assert_close(q.embedding.weight.grad, e_ref.grad)


def test_arc_loss_reaches_encoder_only():
    torch.manual_seed(1)
    with_arc = make(arc_gamma=5.0)
    without = make(use_arc_loss=False)
    without.load_state_dict(with_arc.state_dict())
    z = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for q in (with_arc, without):
        z.grad = None
        q.train()(z)[1].backward()
        grads.append((z.grad.clone(), q.embedding.weight.grad.clone()))
    assert torch.equal(grads[0][1], grads[1][1])  # codebook: VQ loss only
    assert not torch.allclose(grads[0][0], grads[1][0])  # encoder: also ArcLoss
    assert grads[1][1].abs().sum() > 0  # VQ loss does reach the codebook


def test_eval_loss_has_no_arc_term_and_breakdown_is_detached():
    q = make()
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    _, train_loss, _ = q.train()(z)
    b = q.loss_breakdown
    assert {"vq", "arc", "arc_weight", "radius", "perplexity", "usage"} <= set(b)
    assert all(not v.requires_grad for v in b.values())
    torch.testing.assert_close(train_loss.detach(), b["vq"] + b["arc_weight"] * b["arc"])
    _, eval_loss, _ = q.eval()(z)
    torch.testing.assert_close(eval_loss.detach(), q.loss_breakdown["vq"])


def test_ablation_switches():
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    cosine_only = make(use_bbnr=False, use_arc_loss=False)
    _, loss, _ = cosine_only.train()(z)
    torch.testing.assert_close(loss, cosine_only.loss_breakdown["vq"])
    with torch.no_grad():
        cosine_only.embedding.weight.mul_(50)
    cosine_only.after_optimizer_step()
    assert cosine_only.embedding.weight.norm(dim=1).min() > 40  # no bound
    assert cosine_only.clock.item() == 1


def test_perplexity_usage_and_code_counts():
    q = make(n_e=6)
    z = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    _, _, (perplexity, min_encodings, idx) = q.eval()(z)
    counts = torch.bincount(idx, minlength=6).double()
    p = counts / counts.sum()
    ref = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
    torch.testing.assert_close(perplexity.double(), ref)
    assert min_encodings is None
    assert q.loss_breakdown["usage"].item() == pytest.approx((counts > 0).double().mean().item())
    q(z)
    torch.testing.assert_close(q.code_counts.double(), 2 * counts)
    q.reset_code_counts()
    assert q.code_counts.sum() == 0
    assert "code_counts" not in q.state_dict()


def test_clock_survives_state_dict_round_trip():
    q = ArcQuantizer(8, 4)
    for _ in range(7):
        q.after_optimizer_step()
    fresh = ArcQuantizer(8, 4)
    fresh.load_state_dict(q.state_dict())
    assert fresh.clock.item() == 7 and fresh.clock.dtype == torch.long
    torch.testing.assert_close(fresh.radius, q.radius)


def test_overflow_safe_at_ten_million_steps():
    q = ArcQuantizer(8, 4, bbnr_alpha=5e-5)
    with torch.no_grad():
        q.embedding.weight.mul_(1e30)
    q.clock.fill_(10_000_000)
    before = q.embedding.weight.clone()
    q.after_optimizer_step()
    assert torch.isfinite(q.radius) and torch.isfinite(q.embedding.weight).all()
    assert torch.equal(q.embedding.weight, before)  # far inside exp(500): untouched
    with torch.no_grad():
        q.embedding.weight.mul_(1e-30)
    z = torch.randn(2, 4, 3, 3)
    _, loss, _ = q.train()(z)
    assert torch.isfinite(loss) and q.arc_weight.item() == 0.0


def test_remap_and_sane_index_shape(tmp_path):
    used = np.array([1, 3, 5, 7], dtype=np.int64)
    np.save(tmp_path / "used.npy", used)
    q = ArcQuantizer(8, 4, remap=str(tmp_path / "used.npy"), unknown_index="extra",
                     sane_index_shape=True).eval()
    with torch.no_grad():  # latents that point exactly at used codes
        picks = torch.tensor([1, 3, 5, 7, 3, 1])
        z = q.embedding.weight[picks].T.reshape(1, 4, 2, 3) * 2.0
    z_q, _, (_, _, idx) = q(z)
    assert idx.shape == (1, 2, 3)
    assert torch.equal(idx.flatten(), torch.tensor([0, 1, 2, 3, 1, 0]))
    back = q.get_codebook_entry(idx.reshape(1, -1), (1, 2, 3, 4))
    torch.testing.assert_close(back, z_q)


def test_bf16_autocast_forward_backward_is_finite():
    q = ArcQuantizer(16, 8)
    conv = torch.nn.Conv2d(3, 8, 1)
    x = torch.randn(2, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, _ = q(conv(x))
    (loss + z_q.float().mean()).backward()
    assert torch.isfinite(loss) and torch.isfinite(conv.weight.grad).all()


def test_warns_once_when_bound_is_never_applied():
    q = ArcQuantizer(8, 4)
    z = torch.randn(1, 4, 2, 2)
    with pytest.warns(RuntimeWarning, match="NormBoundCallback"):
        for _ in range(101):
            q(z)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(200):
            q(z)  # once only


def test_no_warning_when_clock_advances():
    import warnings

    q = ArcQuantizer(8, 4)
    z = torch.randn(1, 4, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(300):
            q(z)
            q.after_optimizer_step()


INF, NAN = float("inf"), float("nan")
NUMBER_GE0 = r"must be a finite number >= 0"
INTEGER_GE1 = r"must be an integer >= 1"


@pytest.mark.parametrize("kwargs,message", [
    ({"n_e": 0}, "n_e " + INTEGER_GE1), ({"n_e": True}, "n_e " + INTEGER_GE1),
    ({"n_e": "1024"}, "n_e " + INTEGER_GE1), ({"e_dim": 2.5}, "e_dim " + INTEGER_GE1),
    ({"beta": -1}, "beta " + NUMBER_GE0), ({"beta": INF}, "beta " + NUMBER_GE0),
    ({"beta": "0.25"}, "beta " + NUMBER_GE0),
    ({"arc_top_k": 0}, "arc_top_k " + INTEGER_GE1), ({"arc_top_k": 2.5}, "arc_top_k " + INTEGER_GE1),
    ({"arc_top_k": True}, "arc_top_k " + INTEGER_GE1),
    ({"arc_s": -1.0}, r"arc_s must be a finite number > 0"), ({"arc_s": INF}, r"arc_s must be a finite number > 0"),
    ({"arc_s": NAN}, r"arc_s must be a finite number > 0"),
    ({"arc_m": 3.2}, r"arc_m must be a number in \[0, pi\)"), ({"arc_m": -INF}, r"arc_m must be a number in \[0, pi\)"),
    ({"bbnr_alpha": -1e-4}, "bbnr_alpha " + NUMBER_GE0), ({"bbnr_alpha": INF}, "bbnr_alpha " + NUMBER_GE0),
    ({"arc_gamma": -1.0}, "arc_gamma " + NUMBER_GE0), ({"arc_gamma": NAN}, "arc_gamma " + NUMBER_GE0),
    ({"arc_gamma_decay": -1.0}, "arc_gamma_decay " + NUMBER_GE0),
    ({"arc_gamma_decay": INF}, "arc_gamma_decay " + NUMBER_GE0),
    ({"arc_chunk_size": 0}, r"arc_chunk_size must be None or an integer >= 1"),
    ({"arc_chunk_size": True}, r"arc_chunk_size must be None or an integer >= 1"),
    ({"arc_chunk_size": 64.0}, r"arc_chunk_size must be None or an integer >= 1"),
    ({"unknown_index": "nope"}, r"unknown_index must be 'random', 'extra' or an integer >= 0"),
    ({"legacy": "yes"}, r"legacy must be True or False"), ({"use_bbnr": 1}, r"use_bbnr must be True or False"),
    ({"arc_gather_negatives": None}, r"arc_gather_negatives must be True or False"),
])
def test_construction_errors_name_the_argument_and_its_range(kwargs, message):
    args = {"n_e": 8, "e_dim": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        ArcQuantizer(**args)


def test_infinite_decay_would_train_on_nan():
    """Why arc_gamma_decay=inf is refused: lambda(0) = gamma * exp(-inf * 0) is NaN."""
    from arcvq_plugin.schedules import arc_weight

    assert torch.isnan(arc_weight(1.0, INF, torch.zeros((), dtype=torch.long)))


def test_forward_errors():
    q = ArcQuantizer(8, 4, arc_top_k=5)
    with pytest.raises(ValueError, match="e_dim=4"):
        q(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="arc_top_k=5"):
        q.train()(torch.randn(1, 4, 2, 2))
    before = q.embedding.weight.clone()
    bad = torch.randn(1, 4, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        q(bad)
    assert torch.equal(q.embedding.weight, before)


def test_swap_into_taming_vqmodel():
    from taming.models.vqgan import VQModel

    ddconfig = dict(double_z=False, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                    ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
    model = VQModel(ddconfig, {"target": "torch.nn.Identity"}, n_embed=16, embed_dim=4)
    model.quantize = ArcQuantizer(16, 4, beta=0.25)
    x = torch.randn(2, 3, 16, 16)
    quant, qloss, (_, _, idx) = model.encode(x)
    assert quant.shape == (2, 4, 8, 8) and idx.shape == (128,)
    assert model.decode(quant).shape == x.shape
    xrec, qloss = model(x)
    ((xrec - x).abs().mean() + qloss).backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
