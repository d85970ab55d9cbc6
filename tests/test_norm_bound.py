import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from arcvq_plugin import ArcQuantizer, NormBoundCallback, register_norm_bound_hook
from arcvq_plugin.norm_bound import clip_rows_to_radius_

import formulas


@pytest.mark.parametrize("alpha,t", [(0.0, 0), (3e-4, 1000), (1e-5, 5)])
def test_clip_matches_formula_and_keeps_directions(alpha, t):
    w = torch.randn(20, 6, dtype=torch.float64) * torch.rand(20, 1, dtype=torch.float64) * 3
    ref = formulas.bound(w, alpha, t)
    inside = w.norm(dim=1) <= torch.exp(torch.tensor(alpha * t, dtype=torch.float64))
    out = clip_rows_to_radius_(w.clone(), torch.tensor(alpha * t, dtype=torch.float64))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[inside], w[inside])  # rows inside the ball are not touched at all
    torch.testing.assert_close(formulas.unit(out), formulas.unit(w))
    assert (out.norm(dim=1) <= torch.exp(torch.tensor(alpha * t, dtype=torch.float64)) * (1 + 1e-12)).all()


def test_clip_handles_float32_overflowing_norms():
    w = torch.full((3, 8), 3e37)
    clip_rows_to_radius_(w, torch.tensor(0.0))
    torch.testing.assert_close(w.norm(dim=1), torch.ones(3))


def test_plain_pytorch_hook_runs_once_per_step_of_the_owning_optimizer():
    q = ArcQuantizer(16, 4, bbnr_alpha=0.0)
    other = nn.Linear(4, 4)
    opt_q = torch.optim.SGD(q.parameters(), lr=10.0)
    opt_other = torch.optim.SGD(other.parameters(), lr=0.1)
    model = nn.ModuleDict({"q": q, "other": other})
    assert len(register_norm_bound_hook(opt_q, model)) == 1
    assert register_norm_bound_hook(opt_other, model) == []
    z = torch.randn(2, 4, 4, 4)
    for step in range(1, 4):
        opt_q.zero_grad()
        (q(other(z.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))[1] * 100).backward()
        opt_q.step()
        opt_other.step()
        assert q.clock.item() == step
        assert q.embedding.weight.norm(dim=1).max() <= 1 + 1e-6  # alpha = 0: fixed R = 1


class TwoOptimizerModule(pl.LightningModule):
    """A GAN-like module: manual optimization, codebook in the first optimizer only."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.enc = nn.Conv2d(3, 4, 1)
        self.quantize = ArcQuantizer(8, 4, bbnr_alpha=1e-3)
        self.disc = nn.Conv2d(3, 1, 1)

    def training_step(self, batch, batch_idx):
        opt_ae, opt_disc = self.optimizers()
        z_q, qloss, _ = self.quantize(self.enc(batch[0]))
        opt_ae.zero_grad()
        self.manual_backward(qloss * 50 + z_q.pow(2).mean())
        opt_ae.step()
        opt_disc.zero_grad()
        self.manual_backward(self.disc(batch[0]).mean())
        opt_disc.step()

    def configure_optimizers(self):
        ae = list(self.enc.parameters()) + list(self.quantize.parameters())
        return [torch.optim.Adam(ae, lr=0.5), torch.optim.Adam(self.disc.parameters(), lr=0.1)]


class RecordRadius(pl.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        q = module.quantize
        self.seen.append((q.clock.item(), q.embedding.weight.norm(dim=1).max().item(), q.radius.item()))


def _loader(n=6):
    data = torch.utils.data.TensorDataset(torch.randn(n * 2, 3, 4, 4))
    return torch.utils.data.DataLoader(data, batch_size=2)


def _trainer(callbacks):
    return pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)


def test_callback_counts_batches_not_optimizer_steps_and_bounds_norms():
    module, record = TwoOptimizerModule(), RecordRadius()
    trainer = _trainer([NormBoundCallback(), record])
    trainer.fit(module, _loader(6))
    assert trainer.global_step == 12  # Lightning counts both optimizers' steps ...
    assert module.quantize.clock.item() == 6  # ... the clock counts batches
    assert [t for t, _, _ in record.seen] == list(range(6))  # batch t sees clock t
    assert all(norm <= r * (1 + 1e-6) for _, norm, r in record.seen)


def test_callback_refuses_a_codebook_no_optimizer_updates():
    class Frozen(TwoOptimizerModule):
        def configure_optimizers(self):
            return [torch.optim.Adam(self.enc.parameters()), torch.optim.Adam(self.disc.parameters())]

    with pytest.raises(RuntimeError, match="not updated by any optimizer"):
        _trainer([NormBoundCallback()]).fit(Frozen(), _loader())


def test_callback_does_not_double_register_on_second_fit():
    module = TwoOptimizerModule()
    callback = NormBoundCallback()
    _trainer([callback]).fit(module, _loader(2))
    _trainer([callback]).fit(module, _loader(3))
    assert module.quantize.clock.item() == 5  # 2, then 3 more: each step counted once
