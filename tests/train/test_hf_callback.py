import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from prunekit.core.mask import get_mask  # noqa: E402
from prunekit.train import GradualPruningCallback  # noqa: E402


class TinyClassifier(nn.Module):
    """A model the Trainer can drive: keyword inputs in, a dict with the loss out."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 32)
        self.mid = nn.Linear(32, 32)
        self.out = nn.Linear(32, 2)

    def forward(self, x, labels=None):
        logits = self.out(torch.relu(self.mid(torch.relu(self.hidden(x)))))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _trainer(model, tmp_path, callback, steps=10):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[callback])


def test_trainer_callback_drives_the_schedule(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    cb = GradualPruningCallback(sparsity=0.75, every=2)
    _trainer(model, tmp_path, cb).train()
    assert cb.gradual.end_step == 10 and cb.gradual.step_count == 10
    assert [h["step"] for h in cb.gradual.history] == [2, 4, 6, 8, 10]
    for layer in (model.hidden, model.mid):
        assert 1 - get_mask(layer).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert get_mask(model.out) is None  # the output layer is out of the default scope


def test_callback_on_a_model_with_nothing_to_prune(tmp_path):
    with pytest.raises(ValueError, match="no prunable tensors"):
        GradualPruningCallback(model=nn.Sequential(nn.ReLU()), sparsity=0.5, end_step=10)
