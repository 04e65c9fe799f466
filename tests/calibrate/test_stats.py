import torch
from torch import nn

from prunekit.calibrate import InputStats

from tests.tolerances import tol


class Shared(nn.Module):
    """Two layers reading the same tensor (like q/k/v) and one reading another."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(3, 2)
        self.c = nn.Linear(4, 2)

    def forward(self, x):
        return self.c(self.a(x)) + self.b(x)


def test_norms_and_grams_match_a_direct_computation():
    model = Shared()
    xs = [torch.randn(2, 5, 3), torch.randn(1, 5, 3)]
    stats = InputStats({"a": model.a, "b": model.b, "c": model.c}, hessian=True)
    with stats, torch.no_grad():
        for x in xs:
            stats.new_call()
            model(x)
    flat = torch.cat([x.reshape(-1, 3) for x in xs])
    # 15 tokens accumulated call by call against one reduction over all of them: 15-term sums in another order
    torch.testing.assert_close(stats.col_norms("a"), flat.norm(dim=0), **tol(torch.float32, k=15))
    torch.testing.assert_close(stats.gram("b"), flat.t() @ flat, **tol(torch.float32, k=15, scale=15))
    hidden = model.a(flat).detach()
    torch.testing.assert_close(stats.col_norms("c"), hidden.norm(dim=0), **tol(torch.float32, k=3 + 15, scale=4))
    assert stats.n_tokens("a") == 15
    # a and b read the same tensor: one accumulator, owned by the first.
    assert stats.owner == {"a": "a", "b": "a", "c": "c"}
    assert set(stats.sq_norms) == {"a", "c"}


def test_hooks_are_removed_on_exit():
    model = Shared()
    stats = InputStats({"a": model.a})
    with stats:
        model(torch.randn(1, 3))
    model(torch.randn(1, 3))
    assert stats.n_tokens("a") == 1


def test_whole_model_collection_gives_mean_squares_in_float64():
    from prunekit.calibrate import collect_input_stats

    model = Shared()
    xs = [torch.randn(2, 5, 3), torch.randn(1, 5, 3)]
    stats = collect_input_stats(model, {"a": model.a, "b": model.b}, xs)
    flat = torch.cat([x.reshape(-1, 3) for x in xs]).double()
    torch.testing.assert_close(stats.mean_squares("b"), flat.square().mean(0))
    assert stats.owner["b"] == "a" and stats.sq_norms["a"].dtype == torch.float64
    assert not stats.seen("c") and stats.n_tokens("c") == 0
