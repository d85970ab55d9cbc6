"""The norm bound's activity: the fraction of codes each step clips, recorded without host syncs."""
import math

import pytest
import torch

from arcvq_plugin import ArcQuantizer


def _codebook_with_norms(norms):
    directions = torch.nn.functional.normalize(torch.randn(len(norms), 2, dtype=torch.float64), dim=1)
    return (directions * torch.tensor(norms, dtype=torch.float64)[:, None]).float()


def test_clipped_fraction_counts_the_rows_outside_the_ball_by_hand():
    quantizer = ArcQuantizer(n_e=5, e_dim=2, bbnr_alpha=0.1)
    quantizer.clock.fill_(9)  # the step makes it 10: R = exp(0.1 * 10) = e = 2.71828
    weight = _codebook_with_norms([1.0, 2.70, 2.72, 5.0, 0.1])
    with torch.no_grad():
        quantizer.embedding.weight.copy_(weight)
    quantizer.after_optimizer_step()
    # by hand: 2.72 and 5.0 exceed e, the others do not -> 2 of 5 codes
    assert isinstance(quantizer.clipped_fraction, torch.Tensor) and quantizer.clipped_fraction.ndim == 0
    assert float(quantizer.clipped_fraction) == pytest.approx(0.4)
    moved = (quantizer.embedding.weight.detach() != weight).any(dim=1)
    assert moved.tolist() == [False, False, True, True, False]  # the rows it counted are the rows it moved
    assert float(quantizer.embedding.weight.detach().norm(dim=1).max()) == pytest.approx(math.e, rel=1e-6)
    quantizer.after_optimizer_step()  # now every row is inside the (slightly larger) ball
    assert float(quantizer.clipped_fraction) == 0.0


def test_no_bound_no_clipping_and_state_dict_unchanged():
    quantizer = ArcQuantizer(n_e=3, e_dim=2, use_bbnr=False)
    with torch.no_grad():
        quantizer.embedding.weight.mul_(100.0)
    quantizer.after_optimizer_step()
    assert float(quantizer.clipped_fraction) == 0.0
    assert "clipped_fraction" not in quantizer.state_dict()  # checkpoints keep their keys
