import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.data import score
from prunekit.data.dynamics import el2n, grad_norms, loss, train_with_dynamics
from prunekit.datasets import load_digits
from prunekit.models import MLP

from tests.tolerances import tol


@pytest.fixture(scope="module")
def noisy_digits():
    """Digits with the labels of 60 examples moved to another class."""
    data = load_digits("train")
    x, y = data.tensors
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), size=60, replace=False)
    y = y.clone()
    y[flipped] = (y[flipped] + torch.from_numpy(rng.integers(1, 10, size=60))) % 10
    mask = np.zeros(len(y), dtype=bool)
    mask[flipped] = True
    return TensorDataset(x, y), mask


def test_el2n_and_loss_formulas():
    logits = torch.tensor([[10.0, -10.0, -10.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1])
    e = el2n(logits, y)
    assert e[0] < 1e-6
    assert e[1].item() == pytest.approx(np.sqrt((2 / 3) ** 2 + 2 * (1 / 3) ** 2), rel=1e-6)
    assert torch.allclose(loss(logits, y), nn.functional.cross_entropy(logits, y, reduction="none"))


def test_grad_norms_match_one_backward_per_example():
    torch.manual_seed(0)
    model = MLP(in_features=5, hidden=(7,), classes=3)
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    got = grad_norms(model, TensorDataset(x, y), batch_size=4)
    for i in range(6):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        want = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
        assert got[i] == pytest.approx(want, rel=1e-5)


def test_without_learning_aum_is_the_margin_and_nothing_is_forgotten():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    with torch.no_grad():
        logits = model(x)
    assigned = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -np.inf).amax(1)
    forgets, aum = train_with_dynamics(model, TensorDataset(x, y), epochs=3, lr=0.0, batch_size=8)
    # logits in batches of 8 against all 20 at once: 5-term sums (4 products and the bias, Σ|terms| ≲ 3) in
    # another order, and a margin is a difference of two of them, near 0 for some examples
    np.testing.assert_allclose(aum, (assigned - other).numpy(), **tol(np.float32, k=2 * 5, scale=3))
    correct = (logits.argmax(1) == y).numpy()
    assert forgets[correct].tolist() == [0] * correct.sum()
    assert forgets[~correct].tolist() == [3] * (~correct).sum()  # never learned: ``epochs``


@pytest.mark.parametrize("method", ["el2n", "loss", "grand", "forgetting", "aum"])
def test_training_scores_rank_mislabeled_examples_hardest(method, noisy_digits):
    data, flipped = noisy_digits
    s = score(data, method, model_fn=lambda: MLP(), epochs=8, lr=0.1, batch_size=32, seed=0, progress=False)
    assert s.shape == (len(data),) and s.dtype == np.float64 and np.isfinite(s).all()
    # At least half of the mislabeled examples land among the 10% hardest (chance would be 10%).
    top = np.argsort(-s)[: len(s) // 10]
    assert flipped[top].sum() >= 30, flipped[top].sum()


def test_several_models_average_single_model_scores():
    data = load_digits("train")
    kw = dict(model_fn=lambda: MLP(hidden=(16,)), epochs=1, batch_size=64, progress=False)
    both = score(data, "el2n", n_models=2, seed=3, **kw)
    one, two = score(data, "el2n", seed=3, **kw), score(data, "el2n", seed=4, **kw)
    np.testing.assert_allclose(both, (one + two) / 2, rtol=1e-12)  # the same two-term average, the same arithmetic
    at_init = score(data, "el2n", n_models=1, seed=3, **{**kw, "epochs": 0})
    assert not np.allclose(at_init, one)


def test_prototypes_score_outliers_highest_and_density_complex_clusters():
    rng = np.random.default_rng(0)
    tight = rng.normal(0, 0.05, size=(100, 2)) + [5, 0]
    loose = rng.normal(0, 1.0, size=(100, 2)) + [-5, 0]
    x = np.vstack([tight, loose, [[5.0, 3.0]]])
    proto = score(x, "prototypes", n_clusters=2, seed=0)
    assert np.argmax(proto) in range(100, 201)  # the loose cluster or the lone outlier
    raw = score(x, "prototypes", n_clusters=2, seed=0)
    np.testing.assert_array_equal(raw, proto)
    dens = score(np.vstack([tight, loose]), "density", n_clusters=2, seed=0)
    assert dens[150] > dens[50] and len(np.unique(dens)) == 2


def test_prototypes_from_a_user_model_embedding():
    data = load_digits("train")
    s = score(data, "prototypes", embed_fn=nn.Identity(), n_clusters=10, seed=0, progress=False)
    t = score(data.tensors[0].numpy(), "prototypes", n_clusters=10, seed=0)
    np.testing.assert_allclose(s, t)  # nn.Identity copies: the same numbers, the same arithmetic after it


def test_bad_arguments_are_rejected_with_a_reason():
    data = load_digits("train")
    with pytest.raises(ValueError, match="unknown scoring method"):
        score(data, "margin")
    with pytest.raises(ValueError, match="model_fn"):
        score(data, "el2n")
    with pytest.raises(ValueError, match="whole epochs"):
        score(data, "forgetting", model_fn=MLP, epochs=1.5)
    with pytest.raises(ValueError, match="n_models"):
        score(data, "el2n", model_fn=MLP, n_models=0)
    with pytest.raises(ValueError, match="empty"):
        score(TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)), "el2n", model_fn=MLP)
    with pytest.raises(ValueError, match="need embeddings"):
        score(data, "prototypes")
    with pytest.raises(ValueError, match="n_clusters"):
        score(np.ones((5, 2)), "prototypes", n_clusters=6)
    with pytest.raises(ValueError, match="NaN"):
        score(np.array([[0.0, np.nan], [1.0, 1.0]]), "prototypes", n_clusters=1)


def test_training_scores_need_labelled_pairs():
    with pytest.raises(ValueError, match=r"\(input, label\) pairs"):
        score(np.ones((10, 3), dtype=np.float32), "el2n", model_fn=MLP)


def test_el2n_on_real_fashion_mnist_stays_in_its_range():
    from prunekit.datasets import fashion_mnist_available, load_fashion_mnist
    from prunekit.models import SmallCNN

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    data = load_fashion_mnist("train", limit=1000)
    s = score(data, "el2n", model_fn=lambda: SmallCNN(widths=(4, 8, 16)), epochs=1, batch_size=64, progress=False)
    assert s.shape == (1000,) and s.min() >= 0 and s.max() <= np.sqrt(2) + 1e-9 and s.std() > 0.01


@pytest.mark.parametrize("method", ["el2n", "loss", "grand", "forgetting"])
def test_nan_inputs_are_an_error_naming_the_method_and_the_examples(method):
    x = torch.randn(40, 6)
    x[17, 2] = float("nan")
    data = TensorDataset(x, torch.randint(0, 3, (40,)))
    with pytest.raises(ValueError, match=rf"{method}: inputs of 1 examples .* NaN or infinite values \(first at indices \[17\]\)"):
        score(data, method, model_fn=lambda: MLP(in_features=6, hidden=(8,), classes=3), epochs=1, batch_size=8,
              progress=False)


def test_labels_outside_the_models_classes_are_an_error_before_training():
    data = TensorDataset(torch.randn(30, 6), torch.tensor([0, 1, 2] * 9 + [0, 1, 5]))
    with pytest.raises(ValueError, match=r"label 5 of example 29 is outside \[0, 3\)"):
        score(data, "el2n", model_fn=lambda: MLP(in_features=6, hidden=(8,), classes=3), epochs=1, progress=False)
    floats = TensorDataset(torch.randn(30, 6), torch.zeros(30))
    with pytest.raises(ValueError, match="needs integer class labels"):
        score(floats, "el2n", model_fn=lambda: MLP(in_features=6, hidden=(8,), classes=3), epochs=1, progress=False)


def test_a_diverged_proxy_is_an_error_not_nan_scores():
    data = TensorDataset(torch.randn(64, 6) * 1e3, torch.randint(0, 3, (64,)))
    with pytest.raises(ValueError, match="el2n scores are NaN or infinite .* lower lr="):
        score(data, "el2n", model_fn=lambda: MLP(in_features=6, hidden=(8,), classes=3), epochs=2, lr=1e6,
              batch_size=8, progress=False)
