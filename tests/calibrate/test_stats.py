import pytest
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


@pytest.mark.parametrize("shape, transpose", [((3, 50, 40), False), ((3, 50, 40), True), ((130, 40), False),
                                              ((130, 40), True)])
def test_input_sums_over_pieces_equal_the_whole_sums(shape, transpose, monkeypatch):
    from prunekit.calibrate import stats as st

    monkeypatch.setattr(st, "STATS_CHUNK_TOKENS", 32)  # several pieces, one of them short
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if transpose:  # a non-contiguous input (as an attention output before its reshape can be)
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not x.is_contiguous()
    flat = x.reshape(-1, x.shape[-1])
    sq, gram, rows = st.input_sums(x, hessian=True)
    assert rows == flat.shape[0] and sq.dtype == torch.float32 and gram.dtype == torch.float32
    # float32 sums of ≤ 150 products of unit-scale values: relative error a few 1e-7 × sqrt(150), well under 1e-5
    torch.testing.assert_close(sq, flat.square().sum(0).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gram, (flat.t() @ flat).float(), rtol=1e-5, atol=1e-4)
    pieces = list(st.row_chunks(x))
    assert len(pieces) > 1 and all(p.shape[0] <= 50 for p in pieces)
    assert torch.equal(torch.cat(pieces), flat.float())


def test_input_stats_share_an_input_without_keeping_it_alive():
    import gc
    import weakref

    from prunekit.calibrate.stats import InputStats

    stats = InputStats(hessian=True)
    x = torch.randn(4, 8, 16)
    stats.record("q", x)
    stats.record("k", x)  # the very same tensor: shared, summed once
    stats.record("o", x.clone())
    assert stats.owner == {"q": "q", "k": "q", "o": "o"}
    assert stats.n_tokens("k") == 32 and torch.equal(stats.gram("k"), stats.gram("q"))
    ref = weakref.ref(x)
    del x
    gc.collect()
    assert ref() is None  # the statistics hold no reference to a layer's input


@pytest.mark.parametrize("d", [40, 300])  # one block (below 256 columns), and 8 × 8 blocks of 37-38
def test_gram_accumulates_its_upper_blocks_in_place_and_reads_back_symmetric(d):
    from prunekit.calibrate.stats import add_upper_gram_, gram_bounds, symmetrized

    x = torch.randn(200, d, generator=torch.Generator().manual_seed(3))
    acc = torch.zeros(d, d)
    assert add_upper_gram_(acc, x[:120]) is acc
    add_upper_gram_(acc, x[120:])
    full = x.t() @ x
    b = gram_bounds(d)
    for i in range(len(b) - 1):
        for j in range(len(b) - 1):
            blk = acc[b[i]:b[i + 1], b[j]:b[j + 1]]
            if j < i:  # below the block diagonal: never computed (7/16 of the work saved at 8 blocks)
                assert torch.count_nonzero(blk) == 0
            else:  # 200-term float32 sums (two pieces added) against one product: K·eps relative, at scale Σ|x_i x_j|
                torch.testing.assert_close(blk, full[b[i]:b[i + 1], b[j]:b[j + 1]], **tol(torch.float32, k=200, scale=400))
    g = symmetrized(acc)
    assert torch.equal(g, g.t())  # mirrored, so exactly symmetric
    torch.testing.assert_close(g, full, **tol(torch.float32, k=200, scale=400))


def test_hessian_statistics_read_the_squared_norms_off_the_grams_diagonal():
    model = Shared()
    stats = InputStats({"a": model.a, "c": model.c}, hessian=True)
    xs = [torch.randn(4, 5, 3), torch.randn(2, 5, 3)]
    with stats, torch.no_grad():
        for x in xs:
            stats.new_call()
            model(x)
    acc = stats.grams["a"]
    # Σ x² is a view of the Gram accumulator's diagonal: no second pass over the inputs, no second sum
    assert stats.sq_norms["a"].untyped_storage().data_ptr() == acc.untyped_storage().data_ptr()
    flat = torch.cat([x.reshape(-1, 3) for x in xs])
    # 30 tokens accumulated call by call against one reduction: 30-term float32 sums in another order
    torch.testing.assert_close(stats.col_norms("a"), flat.norm(dim=0), **tol(torch.float32, k=30))
    torch.testing.assert_close(stats.gram("a"), flat.t() @ flat, **tol(torch.float32, k=30, scale=30))
    assert stats.n_tokens("a") == 30


def test_reading_a_gram_mirrors_it_in_place_and_more_rows_still_add_up():
    from prunekit.calibrate.stats import add_upper_gram_, mirror_upper_, symmetrized

    x = torch.randn(90, 300, generator=torch.Generator().manual_seed(4))
    acc = add_upper_gram_(torch.zeros(300, 300), x[:50])
    want = symmetrized(acc)
    assert mirror_upper_(acc) is acc and torch.equal(acc, want)  # the same values as the copy, no matrix-sized copy
    assert torch.equal(mirror_upper_(acc), want)  # idempotent
    add_upper_gram_(acc, x[50:])  # rows added after a read: the upper blocks stay the running sum
    g = mirror_upper_(acc)
    assert torch.equal(g, g.t())
    # 90-term float32 sums, in pieces, against one product: K·eps relative at scale Σ|x_i x_j|
    torch.testing.assert_close(g, x.t() @ x, **tol(torch.float32, k=90, scale=180))
