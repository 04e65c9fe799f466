"""The three-regime model's measurements on hand-made cases: the linear-path barrier on quadratic losses (exact),
BatchNorm re-estimation, linear CKA, sharpness at the minimum of a quadratic, and the regime taxonomy's rules."""

import math

import pytest
import torch
from torch import nn

from prunekit.analysis.regimes import (RegimeConfig, Transition, against_fixed_guess, classify, fit_barrier_threshold, linear_cka,
                                       linear_path, predicted_direction, prediction_accuracy, recompute_bn_, sharpness)


class Point(nn.Module):
    """A parameter vector θ (stored as a 1×n matrix, so sharpness perturbs it)."""

    def __init__(self, values):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([values], dtype=torch.float64))


def quadratic(diag):
    a = torch.tensor(diag, dtype=torch.float64)
    return lambda m: float(0.5 * (m.theta[0] * a * m.theta[0]).sum())


def test_barrier_on_an_indefinite_quadratic_is_exact():
    # L = ½ θᵀAθ, A = diag(2, −6); along θ(α) = (1 − α)a + αb the rise above the chord is −½α(1−α)·dᵀAd with
    # d = a − b = (2, −2): dᵀAd = 8 − 24 = −16, so the rise is 8α(1 − α), largest at α = ½: barrier 2
    report = linear_path(Point([1.0, 1.0]), Point([-1.0, 3.0]), quadratic([2.0, -6.0]), points=11)
    assert report.alphas[5] == 0.5
    assert report.losses[0] == pytest.approx(-2.0, abs=1e-12)  # ½(2·1 − 6·1)
    assert report.losses[-1] == pytest.approx(-26.0, abs=1e-12)  # ½(2·1 − 6·9)
    # float64 throughout; a few terms of size ≤ 30: 1e-12 is ~300 eps
    assert report.barrier == pytest.approx(2.0, abs=1e-12)
    assert report.mode_connectivity == pytest.approx(-2.0, abs=1e-12)  # a barrier: mc < 0
    assert all(r == pytest.approx(8 * t * (1 - t) + (-2.0 * (1 - t) - 26.0 * t), abs=1e-12)
               for t, r in zip(report.alphas, report.losses))


def test_a_convex_quadratic_has_no_barrier_but_a_valley():
    # A = diag(1, 1)·2: the rise is −½α(1−α)·2·|d|² = −4α(1−α) for d = (0, −2): −1 at α = ½
    report = linear_path(Point([0.0, -1.0]), Point([0.0, 1.0]), quadratic([2.0, 2.0]), points=5)
    assert report.barrier == 0.0
    assert report.mode_connectivity == pytest.approx(1.0, abs=1e-12)
    # a loss linear along the path: no barrier, mc 0
    flat = linear_path(Point([1.0, 0.0]), Point([0.0, 1.0]), lambda m: float(m.theta.sum() * 3 + m.theta[0, 0]))
    assert flat.barrier == pytest.approx(0.0, abs=1e-12) and flat.mode_connectivity == pytest.approx(0.0, abs=1e-12)


def test_linear_path_leaves_both_models_alone_and_refuses_mismatches():
    a, b = Point([1.0, 1.0]), Point([-1.0, 3.0])
    linear_path(a, b, quadratic([2.0, -6.0]))
    assert a.theta.tolist() == [[1.0, 1.0]] and b.theta.tolist() == [[-1.0, 3.0]]
    with pytest.raises(ValueError, match="must have one shape"):
        linear_path(a, Point([1.0, 2.0, 3.0]), quadratic([1.0, 1.0]))
    with pytest.raises(ValueError, match="different tensors"):
        linear_path(nn.Linear(2, 2), nn.Linear(2, 2, bias=False), lambda m: 0.0)
    with pytest.raises(ValueError, match="points must be"):
        linear_path(a, b, quadratic([1.0, 1.0]), points=2)
    with pytest.raises(ValueError, match="non-finite"):
        linear_path(a, b, lambda m: float("nan"))


def test_recompute_bn_averages_the_batches_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    x1, x2 = torch.randn(16, 3), torch.randn(16, 3) + 2
    with torch.no_grad():
        h1, h2 = net[0](x1), net[0](x2)
    assert recompute_bn_(net, [(x1, None), x2]) == 1
    want = (h1.mean(0) + h2.mean(0)) / 2  # momentum None: the cumulative average of the batch means
    assert torch.allclose(net[1].running_mean, want, atol=1e-6)  # float32, 16-term means of values of size ~2
    assert net[1].momentum == 0.1 and net.training  # momentum and the (train) mode restored
    assert recompute_bn_(nn.Linear(2, 2), []) == 0
    with pytest.raises(ValueError, match="no batch"):
        recompute_bn_(net, [])


def test_linear_cka_by_hand_and_its_invariances():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # XᵀX = 2I (‖·‖_F = 2√2); y = the first column: yᵀy = 2, yᵀX = (2, 0): CKA = 4 / (2√2 · 2) = 1/√2
    assert linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    torch.manual_seed(0)
    z = torch.randn(50, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    assert linear_cka(z, 3 * z @ q + 7) == pytest.approx(1.0, abs=1e-12)  # rotation, scale and shift
    with pytest.raises(ValueError, match="same n"):
        linear_cka(z, z[:10])
    with pytest.raises(ValueError, match="constant"):
        linear_cka(z, torch.ones(50, 2))


def test_sharpness_at_the_minimum_of_a_quadratic_is_k_r2_norm2():
    # L = k‖θ − θ*‖² at θ = θ*: a perturbation of norm r‖θ*‖ raises it by exactly k·r²·‖θ*‖² (every draw)
    star = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # ‖θ*‖ = 5
    for k in (10.0, 0.1):
        m = Point([3.0, 4.0])
        rise = sharpness(m, lambda mod: float(k * (mod.theta - star).square().sum()), radius=0.1, samples=3)
        assert rise == pytest.approx(k * 0.01 * 25, rel=1e-9)  # float64; the noise's norm is rescaled exactly
        assert m.theta.tolist() == [[3.0, 4.0]]  # put back
    with pytest.raises(ValueError, match="radius"):
        sharpness(Point([1.0]), lambda m: 0.0, radius=0)


def test_regimes_and_the_predicted_direction():
    cfg = RegimeConfig(barrier_threshold=0.1, cka_threshold=0.8)
    assert classify(0.5, 0.99, cfg) == "I"
    assert classify(0.05, 0.5, cfg) == "II-A"
    assert classify(0.05, 0.85, cfg) == "II-B"
    assert [predicted_direction(r) for r in ("I", "II-A", "II-B")] == [1, -1, -1]
    with pytest.raises(ValueError, match="regime must be"):
        predicted_direction("III")


def test_prediction_accuracy_and_the_fitted_threshold():
    # barrier 0.3 and 0.2: raising the temperature helped; barrier 0.01 and 0.0: it hurt
    ts = [Transition(0.1, 1, 2, 0.3, 0.9, +0.02), Transition(0.1, 2, 3, 0.2, 0.9, +0.01),
          Transition(0.5, 1, 2, 0.01, 0.9, -0.01), Transition(0.5, 2, 3, 0.0, 0.9, -0.03)]
    assert prediction_accuracy(ts, RegimeConfig(barrier_threshold=0.1)) == (1.0, 4)
    assert prediction_accuracy(ts, RegimeConfig(barrier_threshold=0.25)) == (0.75, 4)  # 0.2 now regime II: a miss
    fitted = fit_barrier_threshold(ts)
    assert fitted.barrier_threshold == pytest.approx(0.105)  # the midpoint between 0.01 and 0.2
    assert prediction_accuracy(ts, fitted)[0] == 1.0
    with pytest.raises(ValueError, match="no transitions"):
        prediction_accuracy([], fitted)


def test_the_rule_against_a_fixed_guess_is_an_exact_sign_test_on_the_disagreements():
    cfg = RegimeConfig(barrier_threshold=0.1)
    # regime I steps (barrier 0.3, 0.2) predict "raise", as the guess does: no disagreement there
    ts = [Transition(0.1, 1, 2, 0.3, 0.9, +0.02), Transition(0.1, 2, 3, 0.2, 0.9, -0.01),
          # regime II steps predict "lower": disagreements; the rule is right on the two losses, the guess on the gain
          Transition(0.5, 1, 2, 0.01, 0.9, -0.01), Transition(0.5, 2, 3, 0.0, 0.9, -0.03),
          Transition(0.5, 3, 4, 0.0, 0.9, +0.02), Transition(0.5, 4, 5, 0.0, 0.9, 0.0)]  # no change: neither
    rule, guess, p = against_fixed_guess(ts, cfg, +1)
    assert (rule, guess) == (2, 1)
    assert p == pytest.approx(4 / 8)  # P(X >= 2 | n = 3, 1/2) = (3 + 1) / 8
    # against "always lower" the disagreements are the regime I steps: one gain (rule), one loss (guess)
    assert against_fixed_guess(ts, cfg, -1) == (1, 1, pytest.approx(3 / 4))
    assert against_fixed_guess(ts[:2], RegimeConfig(barrier_threshold=0.1), +1) == (0, 0, 1.0)  # never disagree
    with pytest.raises(ValueError, match="guess must be"):
        against_fixed_guess(ts, cfg, 0)
