import math

import pytest
import torch

from arcvq_plugin.losses import arc_margin_loss, margin_cosine

from formulas import arc_loss as arc_formula

SHAPES = [(40, 6, 9), (17, 4, 5)]


@pytest.mark.parametrize("n,d,k", SHAPES)
@pytest.mark.parametrize("s,m,top_k", [(10.0, 0.1, 3), (5.0, 0.5, 1), (20.0, 1.0, 8)])
def test_matches_formula_value_and_gradient(n, d, k, s, m, top_k):
    z = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    e = torch.randn(k, d, dtype=torch.float64) * 3
    ours = arc_margin_loss(z, e, s=s, m=m, top_k=top_k)
    (g_ours,) = torch.autograd.grad(ours, z)
    ref = arc_formula(z, e, s=s, m=m, top_k=top_k)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 64])
def test_chunked_equals_dense(chunk):
    z = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    e = torch.randn(13, 8, dtype=torch.float64)
    dense = arc_margin_loss(z, e)
    (g_dense,) = torch.autograd.grad(dense, z)
    chunked = arc_margin_loss(z, e, chunk_size=chunk)
    (g_chunk,) = torch.autograd.grad(chunked, z)
    torch.testing.assert_close(chunked, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_chunk, g_dense, rtol=1e-10, atol=1e-12)


def test_positives_are_chosen_over_whole_batch_not_per_chunk():
    # every code's 3 nearest latents sit in the last chunk: a per-chunk top-k would differ
    e = torch.eye(4, dtype=torch.float64)
    far = torch.randn(30, 4, dtype=torch.float64) * 0.01 - 1.0
    near = torch.eye(4, dtype=torch.float64).repeat_interleave(3, dim=0) + 0.01
    z = torch.cat([far, near]).requires_grad_()
    assert torch.allclose(arc_margin_loss(z, e, chunk_size=8), arc_formula(z, e), rtol=1e-10)


def test_codebook_is_stop_gradient():
    z = torch.randn(20, 4, requires_grad=True)
    e = torch.randn(6, 4, requires_grad=True)
    arc_margin_loss(z, e).backward()
    assert e.grad is None
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_finite_under_autocast(dtype):
    z = (torch.randn(64, 16) * 100).requires_grad_()
    e = torch.randn(32, 16) * 1e-3
    with torch.autocast("cpu", dtype=dtype):
        loss = arc_margin_loss(z @ torch.eye(16), e, s=20.0)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_zero_latents_and_large_scale_stay_finite():
    z = torch.zeros(10, 4, requires_grad=True)
    loss = arc_margin_loss(z, torch.randn(5, 4), s=1e4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_margin_beyond_pi_uses_monotone_penalty():
    m = 1.0
    c = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    phi = margin_cosine(c, m)
    assert (phi[1:] >= phi[:-1]).all()  # non-decreasing in the cosine = non-increasing in theta
    assert (phi <= c.clamp(-1 + 1e-6, 1 - 1e-6) + 1e-12).all()  # a penalty, never a bonus
    wrap = torch.acos(c.clamp(-1 + 1e-6, 1 - 1e-6)) + m >= math.pi
    torch.testing.assert_close(phi[wrap], c[wrap].clamp(min=-1 + 1e-6) - m * math.sin(m))


@pytest.mark.parametrize("kwargs,message", [
    ({"s": 0.0}, r"s must be a finite number > 0"), ({"s": math.inf}, r"s must be a finite number > 0"),
    ({"m": -0.1}, r"m must be a number in \[0, pi\)"), ({"m": math.pi}, r"m must be a number in \[0, pi\)"),
    ({"m": math.nan}, r"m must be a number in \[0, pi\)"),
    ({"top_k": 0}, r"top_k must be an integer >= 1"), ({"top_k": 2.5}, r"top_k must be an integer >= 1"),
    ({"top_k": True}, r"top_k must be an integer >= 1"),
    ({"chunk_size": 0}, r"chunk_size must be None or an integer >= 1"),
    ({"chunk_size": True}, r"chunk_size must be None or an integer >= 1"),
    ({"top_k": 99}, r"top_k must be <= the number of latents N=10"),
])
def test_bad_arguments_name_the_parameter_and_its_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        arc_margin_loss(torch.randn(10, 4), torch.randn(5, 4), **kwargs)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="same D"):
        arc_margin_loss(torch.randn(10, 4), torch.randn(5, 3))


@pytest.mark.parametrize("k,n", [(16, 37), (33, 100), (100, 5)])
def test_block_argmax_and_topk_match_torch(k, n):
    from arcvq_plugin.losses import _argmax_over_codes, _topk_rows

    for c in (torch.randn(k, n), torch.randint(0, 3, (k, n)).float()):  # the second has ties
        assert torch.equal(_argmax_over_codes(c), c.argmax(0))
    x = torch.randn(k, n)
    values, indices = _topk_rows(x, 4)
    assert torch.equal(values, x.topk(4, dim=1).values)
    assert torch.equal(x.gather(1, indices), values)


@pytest.mark.parametrize("chunk", [None, 70, 150])
def test_block_paths_match_formula(chunk):
    # K >= 16 and larger N exercise the blocked argmax / top-k paths
    z = torch.randn(150, 6, dtype=torch.float64, requires_grad=True)
    e = torch.randn(20, 6, dtype=torch.float64)
    ours = arc_margin_loss(z, e, chunk_size=chunk)
    (g_ours,) = torch.autograd.grad(ours, z)
    ref = arc_formula(z, e)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 64])
def test_gradient_is_bitwise_reproducible_with_several_threads(chunk):
    """A seeded run must repeat exactly: with many codes sharing positives, the gradient of the
    repeated positive latents is summed in the same order every time (two CPU threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        z = torch.randn(256, 64, requires_grad=True)
        codebook = torch.randn(4096, 64)  # 12,288 positives among 256 latents: large enough to run in parallel
        grads = []
        for _ in range(10):
            z.grad = None
            arc_margin_loss(z, codebook, s=10.0, m=0.1, top_k=3, chunk_size=chunk).backward()
            grads.append(z.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
