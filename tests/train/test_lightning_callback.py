import pytest
import torch
from torch import nn

lightning = pytest.importorskip("lightning")

from prunekit.core.mask import get_mask  # noqa: E402
from prunekit.train import LightningGradualPruning  # noqa: E402


class TinyModule(lightning.LightningModule):
    def __init__(self, body=True):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)) \
            if body else nn.Sequential(nn.ReLU())
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y) + 0 * self.w.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 8, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)


def _trainer(cb, **kw):
    return lightning.Trainer(max_epochs=1, callbacks=[cb], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kw)


def test_lightning_callback_drives_the_schedule():
    torch.manual_seed(0)
    module = TinyModule()
    cb = LightningGradualPruning(sparsity=0.6, every=2)
    _trainer(cb).fit(module, _loader())
    assert cb.gradual.end_step == 10 and cb.gradual.step_count == 10
    assert [h["step"] for h in cb.gradual.history] == [2, 4, 6, 8, 10]
    for layer in (module.net[0], module.net[2]):
        assert 1 - get_mask(layer).float().mean().item() == pytest.approx(0.6, abs=0.01)
    assert cb.state_dict()["step_count"] == 10


def test_lightning_callback_on_a_model_with_nothing_to_prune():
    with pytest.raises(ValueError, match="no prunable tensors"):
        _trainer(LightningGradualPruning(sparsity=0.5)).fit(TinyModule(body=False), _loader())


def test_lightning_callback_state_round_trip():
    from prunekit.models.reference import MLP
    from prunekit.train import Gradual

    torch.manual_seed(0)
    a = MLP(hidden=(16, 8))
    cb = LightningGradualPruning(sparsity=0.5, end_step=4, every=1)
    cb.gradual = Gradual(a, sparsity=0.5, end_step=4, every=1)
    cb.on_train_batch_end(None, a, None, None, 0)
    cb.on_train_batch_end(None, a, None, None, 1)
    state = cb.state_dict()
    b = MLP(hidden=(16, 8))
    cb2 = LightningGradualPruning(sparsity=0.5, end_step=4, every=1)
    cb2.load_state_dict(state)          # before fit: kept until the schedule exists
    assert cb2._pending is state
    cb2.gradual = Gradual(b, sparsity=0.5, end_step=4, every=1)
    cb2.load_state_dict(state)          # once it exists: applied at once
    assert cb2.gradual.step_count == 2 and torch.equal(get_mask(b.body[0]), get_mask(a.body[0]))
