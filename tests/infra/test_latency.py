"""The timing routine (prunekit.infra.latency): interleaved, repeated, with spread and a noisy flag."""

import random
import subprocess
import sys
import time

import pytest
import torch

from prunekit.infra.latency import compare_latency, latency, time_interleaved
from prunekit.models import SmallCNN


@pytest.fixture(autouse=True)
def _real_budgets(monkeypatch):
    """These tests time things: the suite's cap on timing budgets (tests/conftest.py) is lifted here."""
    monkeypatch.delenv("PRUNEKIT_TIMING_BUDGET_S", raising=False)


def test_latency_times_and_restores_threads_and_layout():
    model = SmallCNN(widths=(4, 8, 8)).train()
    threads = torch.get_num_threads()
    result = latency(model, torch.randn(2, 1, 28, 28), runs=3, warmup=1, threads=1, channels_last=True)
    assert result.runs == 3 and result.threads == 1 and 0 < result.min_ms <= result.median_ms
    assert result.iqr_ms >= 0 and result.cpu_ms > 0
    assert torch.get_num_threads() == threads and model.training
    assert model.features[0].weight.is_contiguous()


def test_latency_rejects_bad_settings():
    with pytest.raises(ValueError, match="runs"):
        latency(SmallCNN(), torch.randn(1, 1, 28, 28), runs=0)
    with pytest.raises(ValueError, match="threads"):
        latency(SmallCNN(), torch.randn(1, 1, 28, 28), threads=0)


def _matmuls(times: int):
    a = torch.randn(192, 192)

    def run():
        for _ in range(times):
            a @ a

    return run


def test_quiet_workload_gives_the_true_ratio():
    cmp = time_interleaved({"one": _matmuls(4), "two": _matmuls(8)}, warmup=3, min_rounds=15, max_rounds=200,
                           budget_s=8, threads=1)
    ratio = cmp.ratio("two", "one")
    assert ratio.median == pytest.approx(2.0, rel=0.08)
    assert cmp.rounds >= 15 and cmp.threads == 1
    d = cmp.to_dict()
    assert set(d["timings"]) == {"one", "two"} and "two/one" in d["ratios"]


def test_injected_noise_is_reported_as_wide_and_flagged():
    rng = random.Random(0)

    def jittery():
        time.sleep(rng.choice([0.001, 0.001, 0.02]))  # wall time the process does not spend computing

    cmp = time_interleaved({"jittery": jittery}, warmup=1, min_rounds=12, max_rounds=12, threads=1)
    t = cmp.timings["jittery"]
    assert t.spread > 0.5 and t.noisy and cmp.noisy
    assert any("machine busy" in w for w in t.reasons())  # sleeping looks like losing the CPU: CPU time << wall time
    assert "±" in str(t)


def test_a_loaded_machine_is_flagged():
    import os

    hogs = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
            for _ in range(3 * (os.cpu_count() or 2))]
    try:
        time.sleep(1.5)  # the hogs are running, not starting
        # long enough (about a second of work) that the scheduler has to share the cores with the hogs
        cmp = time_interleaved({"work": _matmuls(60)}, warmup=2, min_rounds=40, max_rounds=40, threads=1)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    t = cmp.timings["work"]
    assert t.noisy and any("machine busy" in w for w in t.reasons()), (t.cpu_share, t.load)


def test_compare_latency_interleaves_models():
    small, big = SmallCNN(widths=(4, 8, 8)), SmallCNN(widths=(16, 32, 64))
    cmp = compare_latency({"dense": big, "pruned": small}, torch.randn(8, 1, 28, 28), max_rounds=8, budget_s=3)
    assert cmp.timings["dense"].runs == cmp.timings["pruned"].runs == cmp.rounds
    assert cmp.ratio("pruned", "dense").median < 1


def test_the_budget_cap_stops_a_timing_after_its_minimum_rounds(monkeypatch):
    def slow():
        time.sleep(0.02) if rng.random() < 0.5 else None  # never precise: only the budget stops it

    rng = random.Random(0)
    monkeypatch.setenv("PRUNEKIT_TIMING_BUDGET_S", "0.1")
    cmp = time_interleaved({"slow": slow}, warmup=0, min_rounds=5, max_rounds=500, budget_s=20, threads=1)
    # rounds take 0-20 ms: the 0.1 s cap stops it after at least the 5 minimum rounds, far before 500
    assert cmp.stopped == "budget" and 5 <= cmp.rounds < 100
    monkeypatch.setenv("PRUNEKIT_TIMING_BUDGET_S", "soon")
    with pytest.raises(ValueError, match="PRUNEKIT_TIMING_BUDGET_S must be a number of seconds > 0, got 'soon'"):
        time_interleaved({"slow": slow}, threads=1)


def test_stopwatch_gives_wall_and_this_processs_cpu_time_since_it_started():
    import time

    from prunekit.infra.latency import stopwatch

    spent = stopwatch()
    time.sleep(0.05)  # wall passes, CPU does not
    first = spent()
    end = time.process_time() + 0.05
    while time.process_time() < end:  # CPU passes
        pass
    second = spent()
    assert first["wall_s"] >= 0.05 and first["cpu_s"] < 0.04
    assert second["cpu_s"] >= 0.05 and second["wall_s"] >= second["cpu_s"] - 1e-3
