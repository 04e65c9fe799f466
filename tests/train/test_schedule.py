import pytest

from prunekit.train.schedule import check_window, cubic, linear, resolve_schedule, sparsity_at


def test_cubic_schedule_matches_zhu_and_gupta():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 with s_i=0, s_f=0.9, t0=0, window 100.
    for t in (0, 10, 50, 90, 100):
        want = 0.9 + (0 - 0.9) * (1 - t / 100) ** 3
        assert sparsity_at(t, initial=0, final=0.9, start_step=0, end_step=100) == pytest.approx(want)
    assert sparsity_at(500, initial=0, final=0.9, start_step=0, end_step=100) == pytest.approx(0.9)


def test_before_start_the_initial_sparsity_holds_and_linear_is_linear():
    assert sparsity_at(5, initial=0.2, final=0.8, start_step=10, end_step=20) == 0.2
    assert sparsity_at(15, initial=0.2, final=0.8, start_step=10, end_step=20, schedule=linear) == pytest.approx(0.5)
    assert cubic(0.5) == pytest.approx(0.875)


def test_custom_schedule_and_bad_ones():
    assert sparsity_at(5, initial=0, final=0.5, start_step=0, end_step=10, schedule=lambda p: p ** 2) == 0.125
    with pytest.raises(ValueError, match="must map"):
        sparsity_at(5, initial=0, final=0.5, start_step=0, end_step=10, schedule=lambda p: 2.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        resolve_schedule("exponential")


def test_end_before_start_is_an_error():
    with pytest.raises(ValueError, match=r"end_step \(5\) must come after start_step \(10\)"):
        check_window(10, 5, 1)
    with pytest.raises(ValueError, match="every"):
        check_window(0, 5, 0)
