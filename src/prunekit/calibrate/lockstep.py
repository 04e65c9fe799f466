"""Several calls run as one: each batch's call in a thread of its own, one thread running at a time, every
call pausing at each rendezvous until all have reached it.

The one-pass engine (:mod:`.onepass`) needs a layer's statistics over *every* calibration window before it
prunes that layer, and the layer's forward right after, without running the block again. Called on all
windows at once, the block holds every intermediate tensor of every window at its peak (the MLP's
inner activations, the attention's). :class:`Lockstep` calls the block on one batch of windows at a time
instead: the call of batch 0 runs until a target layer's forward pre-hook :meth:`pause`\\ s it, then the
call of batch 1 runs to the same point, and so on; once all have paused at that layer, the main thread
acts (prunes it) and the calls go on, in the same order, to the next layer. Each call keeps its state
(the continuation of a forward) on its own thread's stack, so nothing runs twice; only the tensors alive
at a rendezvous add up over the batches, while the transient ones exist for one batch at a time.

The order of everything is fixed (batch 0, 1, … at every step), so results do not depend on thread
scheduling, and one thread computes at any moment (the one-thread CPU figures hold). A failure in any
call or in the main thread's action unwinds every paused call before it is raised.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

_DONE = object()  # the mark of a call that has returned (or failed)


class _Abort(BaseException):
    """Raised inside a paused call to unwind it when the walk fails elsewhere."""


class Lockstep:
    """Runs ``calls`` (one per batch) in lockstep; :meth:`pause` is what a hook inside a call calls."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._turn: int | None = None  # the batch whose call may run; None: the main thread's turn
        self._points: list[Any] = []
        self._abort = False
        self.running: int | None = None  # the batch whose call is running now (what a hook is called for)

    def pause(self, key: str) -> None:
        """Called from inside a batch's call: stop at rendezvous ``key`` until every batch has reached it and
        the main thread has acted on it."""
        i = self.running
        if i is None:
            raise RuntimeError("Lockstep.pause called outside a lockstep call")
        with self._cond:
            self._points[i] = key
            self._turn = None
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn == i)
            self.running = i
        if self._abort:
            raise _Abort

    def _give_turn(self, i: int) -> None:
        with self._cond:
            self.running = i
            self._turn = i
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._turn is None)

    def run(self, calls: list[Callable[[], Any]], act: Callable[[str], None]) -> list[Any]:
        """Run every call to its next rendezvous, batch 0 first; when all paused at the same ``key``, call
        ``act(key)`` in this thread; repeat until every call has returned. Returns their results in order.

        Raises a ValueError when the calls pause at different rendezvous (their batches took different paths
        through the block); re-raises the first failure of a call or of ``act``, after unwinding the others."""
        n = len(calls)
        self._points = [None] * n
        self._abort = False
        results: list[Any] = [None] * n
        errors: list[BaseException | None] = [None] * n

        def body(i: int) -> None:
            with self._cond:
                self._cond.wait_for(lambda: self._turn == i)
            try:
                if not self._abort:
                    with torch.no_grad():  # grad mode is per thread
                        results[i] = calls[i]()
            except _Abort:
                pass
            except BaseException as e:  # handed to the main thread
                errors[i] = e
            with self._cond:
                self._points[i] = _DONE
                self._turn = None
                self._cond.notify_all()

        threads = [threading.Thread(target=body, args=(i,), daemon=True, name=f"lockstep-{i}") for i in range(n)]
        for t in threads:
            t.start()
        try:
            while True:
                for i in range(n):
                    if self._points[i] is not _DONE:
                        self._give_turn(i)
                    if errors[i] is not None:
                        raise errors[i]
                if all(p is _DONE for p in self._points):
                    return results
                if any(p is _DONE for p in self._points) or len(set(self._points)) != 1:
                    names = ["returned" if p is _DONE else repr(p) for p in self._points]
                    raise ValueError(f"the calibration batches took different paths through the block (paused at "
                                     f"{', '.join(names)}); the one-pass engine needs every batch to call the same "
                                     "layers in the same order: use sequential='block'")
                act(self._points[0])
        finally:
            self._abort = True
            for i, t in enumerate(threads):
                while t.is_alive() and self._points[i] is not _DONE:
                    self._give_turn(i)
                t.join()
            self.running = None
