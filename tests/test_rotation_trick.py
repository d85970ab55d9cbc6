"""The rotation trick (``ArcQuantizer(gradient_estimator="rotation")``): value z_q, gradient (lambda R)^T g
against explicit D x D matrices in float64, finite at zero-norm and antipodal latents; "ste" unchanged."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from arcvq_plugin import ArcQuantizer
from arcvq_plugin.rotation_trick import rotate_onto


def closed_form_jacobian(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """lambda R (D, D) for one latent z and its code e, as Fifty et al. 2024 eq. (section 4.2) writes it."""
    u, q = z / z.norm(), e / e.norm()
    r = (u + q) / (u + q).norm() if (u + q).norm() > 0 else torch.zeros_like(u)
    eye = torch.eye(z.shape[0], dtype=z.dtype)
    return e.norm() / z.norm() * (eye - 2 * torch.outer(r, r) + 2 * torch.outer(q, u))


def test_closed_form_is_a_rotation_taking_z_onto_its_code():
    z, e = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    M = closed_form_jacobian(z, e)
    R = M * z.norm() / e.norm()
    torch.testing.assert_close(M @ z, e)
    torch.testing.assert_close(R.T @ R, torch.eye(5, dtype=torch.float64))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)


def test_value_is_z_q_and_gradient_is_the_closed_form():
    z = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    e = torch.randn(7, 6, dtype=torch.float64) * 3
    g = torch.randn(7, 6, dtype=torch.float64)
    out = rotate_onto(z, e)
    torch.testing.assert_close(out, e, rtol=0, atol=1e-14)
    (out * g).sum().backward()
    expected = torch.stack([closed_form_jacobian(z[i].detach(), e[i]).T @ g[i] for i in range(7)])
    torch.testing.assert_close(z.grad, expected, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(z.grad, g)  # not straight-through


def test_zero_norm_and_antipodal_latents_are_finite():
    e = torch.randn(3, 4, dtype=torch.float64)
    z = torch.stack([torch.zeros(4, dtype=torch.float64), -2.0 * e[1], torch.randn(4, dtype=torch.float64)])
    z.requires_grad_()
    g = torch.randn(3, 4, dtype=torch.float64)
    out = rotate_onto(z, e)
    (out * g).sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
    torch.testing.assert_close(out, e, rtol=0, atol=1e-14)
    torch.testing.assert_close(z.grad[0], g[0])  # no direction: straight-through
    # u = -q: r = 0, lambda R = lambda (I - 2 u u^T), the reflection taking u onto q
    torch.testing.assert_close(z.grad[1], closed_form_jacobian(z[1].detach(), e[1]).T @ g[1], rtol=1e-12, atol=1e-12)


def _arc(**kwargs) -> ArcQuantizer:
    torch.manual_seed(4)
    q = ArcQuantizer(12, 4, **kwargs).double()
    with torch.no_grad():
        q.embedding.weight.mul_(torch.rand(12, 1, dtype=torch.float64) * 3 + 0.1)  # raw codes of unequal norms
    return q


def _forward(q: ArcQuantizer, z: torch.Tensor, g: torch.Tensor):
    x = z.clone().requires_grad_()
    z_q, loss, (_, _, indices) = q(x)
    ((z_q * g).sum() + loss).backward()
    return z_q.detach(), loss.detach(), indices, x.grad, q.embedding.weight.grad.clone()


def test_arcquantizer_rotation_changes_only_the_encoder_gradient():
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    g = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ste = _forward(_arc().train(), z, g)
    rotation = _forward(_arc(gradient_estimator="rotation").train(), z, g)
    torch.testing.assert_close(rotation[0], ste[0], rtol=0, atol=1e-14)  # value: the raw code
    assert torch.equal(rotation[1], ste[1]) and torch.equal(rotation[2], ste[2])  # loss, indices
    torch.testing.assert_close(rotation[4], ste[4])  # codebook gradient: the VQ loss only
    # encoder gradient: the loss's part (same in both) + (lambda R)^T g for the z_q part
    e = _arc().embedding.weight.detach()[rotation[2]]
    flat_z, flat_g = rearrange(z, "b c h w -> (b h w) c"), rearrange(g, "b c h w -> (b h w) c")
    rotated = torch.stack([closed_form_jacobian(flat_z[i], e[i]).T @ flat_g[i] for i in range(len(e))])
    expected = ste[3] - g + rearrange(rotated, "(b h w) c -> b c h w", b=2, h=3)
    torch.testing.assert_close(rotation[3], expected, rtol=1e-10, atol=1e-12)


def test_ste_default_is_unchanged_bitwise():
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    g = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    default, explicit = _forward(_arc().train(), z, g), _forward(_arc(gradient_estimator="ste").train(), z, g)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))
    q = _arc().eval()
    x = z.clone().requires_grad_()
    z_q, _, (_, _, indices) = q(x)
    (z_q * g).sum().backward()
    flat = rearrange(x, "b c h w -> b h w c")
    expected = flat + (q.embedding.weight[indices].view(flat.shape) - flat).detach()
    assert torch.equal(z_q, rearrange(expected, "b h w c -> b c h w"))
    assert torch.equal(x.grad, g)  # straight-through: copied unchanged
    assert q.gradient_estimator == "ste" and "gradient_estimator='ste'" in repr(q)


def test_bf16_autocast_rotation_is_finite():
    q = ArcQuantizer(16, 8, gradient_estimator="rotation")
    conv = torch.nn.Conv2d(3, 8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, _ = q(conv(torch.randn(2, 3, 4, 4)))
    (loss + z_q.float().mean()).backward()
    assert torch.isfinite(loss) and torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize("value", ["rot", "STE", None, 1])
def test_gradient_estimator_is_validated(value):
    with pytest.raises(ValueError, match=r"gradient_estimator must be one of \('ste', 'rotation'\)"):
        ArcQuantizer(8, 4, gradient_estimator=value)


def test_rotate_onto_needs_equal_shapes():
    with pytest.raises(ValueError, match="same shape"):
        rotate_onto(torch.randn(3, 4), torch.randn(3, 5))
