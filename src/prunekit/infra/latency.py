"""Timings that survive a busy machine: one routine for every speed figure prunekit prints or stores.

:func:`time_interleaved` times several callables (a dense and a pruned model, say) in the same
process, interleaved round by round (A B, then B A, ...) so that a change of machine load hits all of
them alike. After warm-up it repeats rounds until the median of every callable is known to a stated
relative precision, or a time budget or round limit is reached. It reports, for each callable, the
median and interquartile range of wall time, the median process CPU time, and for each pair the
ratio of their times with its own spread (the median of per-round ratios). A measurement is flagged
``noisy`` when its spread is wide or when the process did not get the CPU it asked for (CPU time
well below wall time × threads: other work took the cores) — and the flag says why, so that a
table can print ``±35%, machine busy`` instead of a clean-looking number.

:func:`latency` is the one-model form, used by ``summary``, the CLI and the benchmarks.

``PRUNEKIT_TIMING_BUDGET_S`` (seconds) caps every measurement's time budget: the test suite sets it, as
its tiny models' timings only need to exist, and a user can set it for a quick look; it never lowers
``min_rounds``.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .calling import call_model

NOISY_IQR = 0.15      # IQR above this share of the median: the figure is noisy
BUSY_CPU_SHARE = 0.8  # CPU time below this share of wall time × threads: the machine is busy


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Timing:
    """Repeated timings of one callable, in milliseconds."""

    name: str
    wall_ms: list[float]
    cpu_ms: list[float]
    threads: int
    load: float | None = None  # the 1-minute load average around the measurement (its highest reading)
    cores: int = field(default_factory=lambda: _cores())

    @property
    def runs(self) -> int:
        return len(self.wall_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def min_ms(self) -> float:
        return min(self.wall_ms)

    @property
    def iqr_ms(self) -> float:
        return _quantile(self.wall_ms, 0.75) - _quantile(self.wall_ms, 0.25)

    @property
    def spread(self) -> float:
        """Interquartile range as a share of the median."""
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0

    @property
    def cpu_median_ms(self) -> float:
        return statistics.median(self.cpu_ms)

    @property
    def cpu_share(self) -> float:
        """Total CPU time / (total wall time × threads): about 1 when the cores were ours, lower when
        other work took them (a short run fits in one time slice, so the total, not each run, tells)."""
        wall = sum(self.wall_ms) * self.threads
        return min(sum(self.cpu_ms) / wall, 1.0) if wall > 0 else 1.0

    @property
    def busy_load(self) -> bool:
        """Whether other processes kept more than half the cores busy (load average beyond our threads)."""
        return self.load is not None and self.load - self.threads > 0.5 * self.cores

    @property
    def rel_precision(self) -> float:
        """Approximate relative standard error of the median (≈ 0.93 · IQR / √n, for a normal spread)."""
        return 0.93 * self.spread / math.sqrt(self.runs)

    def reasons(self, noisy_iqr: float = NOISY_IQR, busy_share: float = BUSY_CPU_SHARE) -> list[str]:
        """Why this timing cannot be trusted (empty when it can)."""
        why = []
        if self.spread > noisy_iqr:
            why.append(f"±{self.spread / 2:.0%}")
        if self.cpu_share < busy_share:
            why.append(f"machine busy: {self.cpu_share:.0%} of the CPU time asked for")
        elif self.busy_load:
            why.append(f"machine busy: load {self.load:.1f} on {self.cores} cores")
        return why

    @property
    def noisy(self) -> bool:
        return bool(self.reasons())

    def to_dict(self) -> dict[str, Any]:
        """Summary figures (not the raw runs) as plain data."""
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "spread": self.spread, "min_ms": self.min_ms,
                "cpu_median_ms": self.cpu_median_ms, "cpu_share": self.cpu_share, "runs": self.runs,
                "threads": self.threads, "load": self.load, "cores": self.cores, "noisy": self.noisy,
                "why": self.reasons()}

    def __str__(self) -> str:
        flag = f" ({', '.join(self.reasons())})" if self.noisy else ""
        return f"{self.median_ms:.1f} ms ±{self.iqr_ms / 2:.1f}{flag}"


def combined_flag(timings: list[Timing]) -> str:
    """One short flag for several timings of one comparison: the widest spread and whether the
    machine was busy ('' when every timing can be trusted)."""
    parts = []
    widest = max((t.spread for t in timings), default=0.0)
    if widest > NOISY_IQR:
        parts.append(f"±{widest / 2:.0%}")
    if any(t.cpu_share < BUSY_CPU_SHARE or t.busy_load for t in timings):
        parts.append("machine busy")
    return ", ".join(parts)


@dataclass
class Ratio:
    """The ratio of two callables' times, from paired rounds: median and interquartile range."""

    numerator: str
    denominator: str
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def iqr(self) -> float:
        return _quantile(self.values, 0.75) - _quantile(self.values, 0.25)

    def to_dict(self) -> dict[str, Any]:
        return {"numerator": self.numerator, "denominator": self.denominator, "median": self.median, "iqr": self.iqr}

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator} = {self.median:.3f} ±{self.iqr / 2:.3f}"


@dataclass
class Comparison:
    """Interleaved timings of several callables, their pairwise ratios and the conditions."""

    timings: dict[str, Timing]
    rounds: int
    warmup: int
    threads: int
    seconds: float
    load_before: float | None
    load_after: float | None
    stopped: str  # "precision", "budget" or "max_rounds"
    target_precision: float
    ratios: dict[str, Ratio] = field(default_factory=dict)

    @property
    def noisy(self) -> bool:
        return any(t.noisy for t in self.timings.values())

    def ratio(self, numerator: str, denominator: str) -> Ratio:
        """The paired ratio numerator/denominator of two timed callables."""
        key = f"{numerator}/{denominator}"
        if key not in self.ratios:
            a, b = self.timings[numerator].wall_ms, self.timings[denominator].wall_ms
            self.ratios[key] = Ratio(numerator, denominator, [x / y for x, y in zip(a, b) if y > 0])
        return self.ratios[key]

    def to_dict(self) -> dict[str, Any]:
        names = list(self.timings)
        pairs = {f"{a}/{names[0]}": self.ratio(a, names[0]).to_dict() for a in names[1:]}
        return {"timings": {n: t.to_dict() for n, t in self.timings.items()}, "ratios": pairs, "rounds": self.rounds,
                "warmup": self.warmup, "threads": self.threads, "seconds": self.seconds,
                "load_before": self.load_before, "load_after": self.load_after, "stopped": self.stopped,
                "target_precision": self.target_precision, "noisy": self.noisy}

    def __str__(self) -> str:
        lines = [f"{name:<16} {t}" for name, t in self.timings.items()]
        names = list(self.timings)
        lines += [str(self.ratio(a, names[0])) for a in names[1:]]
        lines.append(f"{self.rounds} interleaved rounds, {self.threads} thread(s), stopped on {self.stopped}")
        return "\n".join(lines)


def stopwatch() -> Callable[[], dict[str, float]]:
    """Start a clock; the function returned gives ``{"wall_s", "cpu_s"}`` spent since (CPU: this process's)."""
    wall, cpu = time.perf_counter(), time.process_time()
    return lambda: {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


BUDGET_ENV = "PRUNEKIT_TIMING_BUDGET_S"


def budget_cap() -> float | None:
    """The cap on every timing budget that ``PRUNEKIT_TIMING_BUDGET_S`` sets, or None when it is unset."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return None
    try:
        cap = float(text)
    except ValueError:
        cap = float("nan")
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"{BUDGET_ENV} must be a number of seconds > 0, got {text!r}; unset it for no cap")
    return cap


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 2, min_rounds: int = 5,
                     max_rounds: int = 200, target_precision: float = 0.02, budget_s: float = 20.0,
                     threads: int | None = 1) -> Comparison:
    """Time every callable in ``fns`` round by round, interleaved, until each median is known to
    ``target_precision`` (relative standard error) after at least ``min_rounds`` rounds, or
    ``budget_s`` seconds or ``max_rounds`` rounds have passed. ``threads`` fixes torch's intra-op
    threads for the measurement (``None`` keeps the current setting); it is reported. ``budget_s`` is capped
    by ``PRUNEKIT_TIMING_BUDGET_S`` when that is set."""
    if not fns:
        raise ValueError("time_interleaved needs at least one callable")
    if warmup < 0 or min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need warmup >= 0 and 1 <= min_rounds <= max_rounds; got warmup={warmup}, "
                         f"min_rounds={min_rounds}, max_rounds={max_rounds}")
    if not 0 < target_precision < 1 or not budget_s > 0:
        raise ValueError(f"target_precision must be in (0, 1) and budget_s positive; got {target_precision}, {budget_s}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    cap = budget_cap()
    if cap is not None:
        budget_s = min(budget_s, cap)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used = torch.get_num_threads()
    names = list(fns)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    load_before = _load()
    start = time.perf_counter()
    stopped = "max_rounds"
    try:
        for _ in range(warmup):
            for n in names:
                fns[n]()
        for r in range(max_rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                c0, t0 = time.process_time(), time.perf_counter()
                fns[n]()
                t1, c1 = time.perf_counter(), time.process_time()
                wall[n].append((t1 - t0) * 1e3)
                cpu[n].append((c1 - c0) * 1e3)
            if r + 1 >= min_rounds:
                timings = [Timing(n, wall[n], cpu[n], used, cores=1) for n in names]
                if all(t.rel_precision <= target_precision for t in timings):
                    stopped = "precision"
                    break
                if time.perf_counter() - start > budget_s:
                    stopped = "budget"
                    break
    finally:
        torch.set_num_threads(old_threads)
    load_after = _load()
    loads = [x for x in (load_before, load_after) if x is not None]
    load = max(loads) if loads else None
    return Comparison({n: Timing(n, wall[n], cpu[n], used, load) for n in names}, len(wall[names[0]]), warmup,
                      used, time.perf_counter() - start, load_before, load_after, stopped, target_precision)


@dataclass
class Latency:
    """Timings of one model on one input, in milliseconds: the median and spread of wall time, the
    median CPU time, and whether the figure can be trusted."""

    median_ms: float
    min_ms: float
    runs: int
    threads: int
    iqr_ms: float = 0.0
    cpu_ms: float = 0.0
    noisy: bool = False
    why: list[str] = field(default_factory=list)

    @classmethod
    def from_timing(cls, t: Timing) -> "Latency":
        return cls(t.median_ms, t.min_ms, t.runs, t.threads, t.iqr_ms, t.cpu_median_ms, t.noisy, t.reasons())

    @property
    def flag(self) -> str:
        """'' for a trusted figure, else e.g. '±35%, machine busy'."""
        return ", ".join(w.split(":")[0] for w in self.why)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        flag = f" ({', '.join(self.why)})" if self.noisy else ""
        return f"{self.median_ms:.1f} ms ±{self.iqr_ms / 2:.1f}{flag}"


def forward_fn(model: nn.Module, example_inputs: Any) -> Callable[[], Any]:
    """A callable that runs one inference forward pass of ``model`` on ``example_inputs``."""

    def run() -> Any:
        with torch.inference_mode():
            return call_model(model, example_inputs)

    return run


class _Prepared:
    """Put models in eval mode (and channels-last) for timing, and back afterwards."""

    def __init__(self, models: list[nn.Module], channels_last: bool) -> None:
        self.models, self.channels_last = models, channels_last

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.models]
        for m in self.models:
            m.eval()
            if self.channels_last:
                m.to(memory_format=torch.channels_last)

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.models, self.modes):
            if self.channels_last:
                m.to(memory_format=torch.contiguous_format)
            m.train(mode)


def _cl(x: Any, channels_last: bool) -> Any:
    if channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def latency(model: nn.Module, example_inputs: Any, *, runs: int = 20, warmup: int = 3, threads: int | None = 1,
            channels_last: bool = False, budget_s: float = 10.0, target_precision: float = 0.02) -> Latency:
    """Forward-pass latency of ``model`` on ``example_inputs`` (eval mode, ``torch.inference_mode``):
    after ``warmup`` passes, between 3 and ``runs`` timed passes — fewer once the median is known to
    ``target_precision`` or ``budget_s`` is spent — with ``threads`` intra-op threads (``None`` keeps
    torch's setting). ``channels_last`` times the model and a 4-D input in channels-last layout (the
    model is converted in place, and back afterwards)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    with _Prepared([model], channels_last):
        cmp = time_interleaved({"model": forward_fn(model, _cl(example_inputs, channels_last))}, warmup=warmup,
                               min_rounds=min(3, runs), max_rounds=runs, budget_s=budget_s,
                               target_precision=target_precision, threads=threads)
    return Latency.from_timing(cmp.timings["model"])


def compare_latency(models: dict[str, nn.Module], example_inputs: Any, *, warmup: int = 2, max_rounds: int = 50,
                    budget_s: float = 20.0, target_precision: float = 0.02, threads: int | None = 1,
                    channels_last: bool = False) -> Comparison:
    """Forward-pass latency of several models (e.g. ``{"dense": a, "pruned": b}``) on the same input,
    timed interleaved; ``result.ratio("pruned", "dense")`` is the paired ratio with its spread."""
    with _Prepared(list(models.values()), channels_last):
        x = _cl(example_inputs, channels_last)
        return time_interleaved({n: forward_fn(m, x) for n, m in models.items()}, warmup=warmup,
                                min_rounds=min(5, max_rounds), max_rounds=max_rounds, budget_s=budget_s,
                                target_precision=target_precision, threads=threads)
