import pytest
from torch.utils.data import TensorDataset

from prunekit.bench.data_pruning import BENCH_METHODS, compare_pruning
from prunekit.datasets import load_digits
from prunekit.models import MLP


def test_every_method_trains_with_the_same_steps_and_beats_chance():
    train, test = load_digits("train"), load_digits("test")
    result = compare_pruning(train, test, lambda: MLP(hidden=(64,)), fractions=(0.5,), epochs=4, n_models=1,
                             n_clusters=10, lr=0.1, batch_size=32, progress=False)
    assert [r["method"] for r in result.rows] == list(BENCH_METHODS)
    assert {r["steps"] for r in result.rows} == {4 * (round(0.5 * len(train)) // 32)}
    assert all(r["accuracy"] > 0.5 for r in result.rows), result.rows  # chance is 0.1
    assert result.full_accuracy > 0.85
    assert set(result.score_seconds) == {"el2n", "prototypes"}
    table = result.table()
    assert "| rs2 |" in table and "50% kept" in table and "full data" in table


def test_unknown_methods_and_fractions_are_rejected():
    d = TensorDataset(*load_digits("train").tensors)
    with pytest.raises(ValueError, match="unknown benchmark method"):
        compare_pruning(d, d, MLP, methods=("magic",))
    with pytest.raises(ValueError, match="kept fractions"):
        compare_pruning(d, d, MLP, fractions=(1.5,))
