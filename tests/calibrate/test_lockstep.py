import threading

import pytest
import torch

from prunekit.calibrate.lockstep import Lockstep


def _no_lockstep_threads():
    return not any(t.name.startswith("lockstep-") for t in threading.enumerate())


def test_calls_run_one_at_a_time_in_order_and_meet_at_every_rendezvous():
    step, log = Lockstep(), []

    def call(i):
        def run():
            log.append(f"{i} start")
            for key in ("a", "b"):
                step.pause(key)
                log.append(f"{i} after {key}")
            return i * 10
        return run

    out = step.run([call(i) for i in range(3)], lambda key: log.append(f"act {key}"))
    assert out == [0, 10, 20]
    assert log == ["0 start", "1 start", "2 start", "act a",
                   "0 after a", "1 after a", "2 after a", "act b",
                   "0 after b", "1 after b", "2 after b"]
    assert _no_lockstep_threads()


def test_calls_see_no_grad_and_a_pause_outside_a_call_is_refused():
    step = Lockstep()
    assert step.run([lambda: torch.is_grad_enabled()] * 2, lambda key: None) == [False, False]
    with pytest.raises(RuntimeError, match="outside a lockstep call"):
        step.pause("x")


def test_calls_that_take_different_paths_are_refused_and_unwound():
    step, unwound = Lockstep(), []

    def call(key):
        def run():
            try:
                step.pause(key)
            finally:
                unwound.append(key)
        return run

    with pytest.raises(ValueError, match="different paths"):
        step.run([call("q"), call("k")], lambda key: None)
    assert sorted(unwound) == ["k", "q"] and _no_lockstep_threads()


@pytest.mark.parametrize("where", ["act", "call"])
def test_a_failure_is_raised_after_every_paused_call_is_unwound(where):
    step, unwound, acted = Lockstep(), [], []

    def call(i):
        def run():
            try:
                step.pause("a")
                if where == "call" and i == 1:
                    raise KeyError("boom in call 1")
                step.pause("b")
            finally:
                unwound.append(i)
        return run

    def act(key):
        acted.append(key)
        if where == "act":
            raise RuntimeError("boom in act")

    with pytest.raises(RuntimeError if where == "act" else KeyError, match="boom"):
        step.run([call(i) for i in range(3)], act)
    assert sorted(unwound) == [0, 1, 2] and acted == ["a"] and _no_lockstep_threads()
