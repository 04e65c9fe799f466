"""Speed and perplexity of GGUF files measured in llama.cpp itself (where ``make llama-cpp`` built its tools).

:func:`engine_speed` runs ``llama-bench`` on several GGUF files (a dense and a shrunk model, say) with the
same threads, interleaved round by round (A B, then B A, ...) as :mod:`prunekit.infra.latency` does for
in-process timings, so that a change of machine load hits every file alike. Each round is one
``llama-bench`` run per file (prefill of ``prompt_tokens`` and decode of ``gen_tokens``, after llama-bench's
own warm-up); the per-round figures become :class:`~prunekit.infra.latency.Timing` objects (milliseconds
per token), so the spread, the ``noisy`` flag and its reasons follow the house conventions, and each file's
tokens/s is compared with the first file's as a paired ratio (the median of per-round ratios, with its
spread). CPU time is the tool process's own (its share of wall × threads tells a busy machine).

:func:`llama_perplexity` runs ``llama-perplexity`` on a text file and returns its final estimate.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..infra.latency import Ratio, Timing, _load, combined_flag

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class BenchRow:
    """One test of one ``llama-bench -o json`` run: prompt (``n_gen`` 0) or generation (``n_prompt`` 0)."""

    model: str
    n_prompt: int
    n_gen: int
    threads: int
    tokens_per_s: float
    samples_ts: tuple[float, ...]

    @property
    def phase(self) -> str:
        return "prefill" if self.n_gen == 0 else "decode"


def parse_bench_json(text: str) -> list[BenchRow]:
    """The rows of ``llama-bench -o json`` output; a ValueError naming what is missing otherwise."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"llama-bench printed no JSON ({exc}); its output began {text[:120]!r}") from exc
    if not isinstance(data, list) or not data:
        raise ValueError("llama-bench's JSON holds no test rows")
    rows = []
    for d in data:
        try:
            rows.append(BenchRow(str(d["model_filename"]), int(d["n_prompt"]), int(d["n_gen"]), int(d["n_threads"]),
                                 float(d["avg_ts"]), tuple(float(x) for x in d.get("samples_ts", []))))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a llama-bench JSON row lacks {exc}; got keys {sorted(d)[:12]}") from exc
    for r in rows:
        if r.n_prompt and r.n_gen:
            raise ValueError(f"a llama-bench row mixes prefill and decode (pg test: {r.n_prompt}, {r.n_gen}); "
                             "run -p and -n tests only")
    return rows


@dataclass
class BenchRun:
    """One ``llama-bench`` process: its tokens/s per phase, wall seconds and CPU seconds (the child's)."""

    tokens_per_s: dict[str, float]
    wall_s: float
    cpu_s: float
    threads: int


def _tool(name: str) -> Path:
    from ..export.llama_cpp import llama_cpp_home, llama_cpp_tool

    tool = llama_cpp_tool(name)
    if tool is None:
        raise FileNotFoundError(f"{name} is not built in {llama_cpp_home() / 'bin'}; run 'make llama-cpp'")
    return tool


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr or proc.stdout or "").strip().splitlines() if line.strip()]
    return " | ".join(lines[-2:])


def run_llama_bench(path: str | Path, *, prompt_tokens: int = 128, gen_tokens: int = 32, threads: int = 1,
                    repetitions: int = 1, timeout: float = 600) -> BenchRun:
    """One ``llama-bench`` run of ``path``: prefill ``prompt_tokens`` and decode ``gen_tokens`` tokens
    ``repetitions`` times each with ``threads`` threads; tokens/s per phase and the process's wall/CPU time."""
    cmd = [str(_tool("llama-bench")), "-m", str(path), "-p", str(prompt_tokens), "-n", str(gen_tokens),
           "-t", str(threads), "-r", str(repetitions), "-o", "json"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-bench could not run {path}: {_tail(proc)}")
    rows = parse_bench_json(proc.stdout)
    speeds = {r.phase: r.tokens_per_s for r in rows}
    missing = [p for p, n in (("prefill", prompt_tokens), ("decode", gen_tokens)) if n and p not in speeds]
    if missing:
        raise ValueError(f"llama-bench gave no {', '.join(missing)} row for {path}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return BenchRun(speeds, wall, cpu, rows[0].threads)


@dataclass
class EngineSpeed:
    """llama.cpp figures of several GGUF files measured interleaved: per file and phase a
    :class:`Timing` in ms per token (so tokens/s = 1000 / median), and each file's paired speed-up over the
    first file per phase (tokens/s ratio, median of rounds, with its spread)."""

    files: dict[str, str]
    bytes: dict[str, int]
    timings: dict[str, dict[str, Timing]]
    speedups: dict[str, dict[str, Ratio]]
    rounds: int
    threads: int
    prompt_tokens: int
    gen_tokens: int
    engine: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def tokens_per_s(self, name: str, phase: str) -> float:
        """The median tokens/s of file ``name`` in ``phase`` (prefill or decode)."""
        return 1000.0 / self.timings[name][phase].median_ms

    @property
    def noisy(self) -> bool:
        return any(t.noisy for per in self.timings.values() for t in per.values())

    def to_dict(self) -> dict[str, Any]:
        models = {}
        for name, per in self.timings.items():
            models[name] = {"file": self.files[name], "bytes": self.bytes[name]}
            for phase, t in per.items():
                models[name][f"{phase}_tokens_per_s"] = self.tokens_per_s(name, phase)
                models[name][phase] = {**t.to_dict(), "tokens_per_s_runs": [1000.0 / x for x in t.wall_ms]}
        ratios = {name: {phase: {"median": r.median, "iqr": r.iqr, "of": f"{name}/{r.denominator}",
                                 "values": list(r.values)} for phase, r in per.items()}
                  for name, per in self.speedups.items()}
        return {"engine": self.engine, "models": models, "speedups": ratios, "rounds": self.rounds,
                "threads": self.threads, "prompt_tokens": self.prompt_tokens, "gen_tokens": self.gen_tokens,
                "seconds": self.seconds, "noisy": self.noisy, "notes": list(self.notes)}

    def __str__(self) -> str:
        names = list(self.timings)
        lines = [f"{'model':<18} {'MB':>8} {'prefill tok/s':>16} {'decode tok/s':>16}  speed-up (prefill, decode)"]
        for n in names:
            cells = []
            for phase in PHASES:
                t = self.timings[n][phase]
                cells.append(f"{self.tokens_per_s(n, phase):9.1f} ±{t.spread / 2:4.0%}")
            ups = self.speedups.get(n)
            up = ", ".join(f"{ups[p].median:.2f}× ±{ups[p].iqr / 2:.2f}" for p in PHASES) if ups else "(baseline)"
            flag = combined_flag(list(self.timings[n].values()))
            lines.append(f"{n:<18} {self.bytes[n] / 1e6:8.1f} {cells[0]:>16} {cells[1]:>16}  {up}"
                         + (f"  [{flag}]" if flag else ""))
        lines.append(f"{self.engine}: llama-bench, {self.rounds} interleaved rounds, {self.threads} thread(s), "
                     f"prefill {self.prompt_tokens} / decode {self.gen_tokens} tokens")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _check_files(files: Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    if not files:
        raise ValueError("engine_speed needs at least one GGUF file")
    out = {}
    for name, f in files.items():
        p = Path(f).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{name}: {p} is not a file; llama.cpp measures GGUF files (prunekit export --to gguf)")
        with open(p, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ValueError(f"{name}: {p} is not a GGUF file (no GGUF magic); export it with "
                                 "'prunekit export MODEL --to gguf --out FILE.gguf'")
        out[name] = p
    return out


def pair_rounds(runs: Mapping[str, list[BenchRun]], threads: int, load: float | None = None
                ) -> tuple[dict[str, dict[str, Timing]], dict[str, dict[str, Ratio]]]:
    """Per-round runs → a Timing per file and phase (ms per token; CPU share from the process; ``load`` the
    1-minute load average around the runs) and, for every file after the first, the paired per-round
    tokens/s ratio over the first file."""
    names = list(runs)
    timings: dict[str, dict[str, Timing]] = {}
    for n in names:
        timings[n] = {}
        for phase in PHASES:
            wall = [1000.0 / r.tokens_per_s[phase] for r in runs[n]]
            # the process's CPU share stands for the share during the timed tokens (load time included)
            share = [min(r.cpu_s / (r.wall_s * r.threads), 1.0) if r.wall_s > 0 else 1.0 for r in runs[n]]
            timings[n][phase] = Timing(f"{n} {phase}", wall, [w * s for w, s in zip(wall, share)], threads, load)
    speedups: dict[str, dict[str, Ratio]] = {}
    base = names[0]
    for n in names[1:]:
        speedups[n] = {}
        for phase in PHASES:
            values = [a.tokens_per_s[phase] / b.tokens_per_s[phase] for a, b in zip(runs[n], runs[base])]
            speedups[n][phase] = Ratio(n, base, values)
    return timings, speedups


def engine_speed(files: Mapping[str, str | os.PathLike], *, rounds: int = 5, prompt_tokens: int = 128,
                 gen_tokens: int = 32, threads: int = 1, repetitions: int = 1, progress: bool = False,
                 timeout: float = 600) -> EngineSpeed:
    """Prefill and decode tokens/s of the GGUF ``files`` (``{"dense": "a.gguf", "shrunk": "b.gguf"}``) in
    llama.cpp: ``rounds`` interleaved rounds of one ``llama-bench`` run per file (order reversed every other
    round), ``threads`` threads each; speed-ups are paired against the first file. Checked before anything
    runs: the files (GGUF magic), the settings, and that llama-bench is built."""
    for flag, value, low in (("rounds", rounds, 2), ("prompt_tokens", prompt_tokens, 1), ("gen_tokens", gen_tokens, 1),
                             ("threads", threads, 1), ("repetitions", repetitions, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{flag} must be an integer of at least {low}, got {value!r}")
    paths = _check_files(files)
    _tool("llama-bench")
    from ..export.llama_cpp import llama_cpp_version

    names = list(paths)
    runs: dict[str, list[BenchRun]] = {n: [] for n in names}
    start = time.perf_counter()
    loads = [_load()]
    from tqdm import tqdm

    bar = tqdm(total=rounds * len(names), desc="llama-bench", unit="run", disable=not progress, leave=False)
    try:
        for r in range(rounds):
            for n in (names if r % 2 == 0 else names[::-1]):
                runs[n].append(run_llama_bench(paths[n], prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                                               threads=threads, repetitions=repetitions, timeout=timeout))
                bar.update(1)
    finally:
        bar.close()
    loads.append(_load())
    known = [x for x in loads if x is not None]
    timings, speedups = pair_rounds(runs, threads, max(known) if known else None)
    return EngineSpeed({n: str(p) for n, p in paths.items()}, {n: p.stat().st_size for n, p in paths.items()},
                       timings, speedups, rounds, threads, prompt_tokens, gen_tokens,
                       f"llama.cpp ({llama_cpp_version()})", time.perf_counter() - start)


_PPL = re.compile(r"Final estimate: PPL = ([-+0-9.eE]+|[-+]?inf|nan) \+/- ([-+0-9.eE]+|[-+]?inf|nan)", re.IGNORECASE)


@dataclass
class EnginePerplexity:
    """``llama-perplexity``'s final estimate over a text file, with its standard error and settings."""

    perplexity: float
    stderr: float
    ctx: int
    chunks: int | None
    threads: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks")
_RUNNING = re.compile(r"\[(\d+)\]([-+0-9.eE]+|[-+]?inf|nan),", re.IGNORECASE)


def parse_perplexity(text: str, after: int | None = None) -> tuple[float, float]:
    """``(ppl, ±)`` from llama-perplexity's output. Its final estimate equals the running estimate after the
    last chunk, so when the final line is missing (see :func:`llama_perplexity`) but the last chunk's running
    value is there, that value is returned with ± NaN; a ValueError when neither is there. ``after``: the running
    estimate after that many chunks instead (± NaN), what a run of exactly ``after`` chunks would report."""
    if after is not None:
        running = {int(i): float(v) for i, v in _RUNNING.findall(text)}
        if after in running:
            return running[after], math.nan
        tail = [line for line in text.strip().splitlines() if line.strip()][-2:]
        raise ValueError(f"llama-perplexity printed no running estimate after chunk {after}: {' | '.join(tail)}")
    m = _PPL.search(text)
    if m is not None:
        return float(m.group(1)), float(m.group(2))
    total = _CHUNKS.search(text)
    running = {int(i): float(v) for i, v in _RUNNING.findall(text)}
    if total is not None and int(total.group(1)) in running:
        return running[int(total.group(1))], math.nan
    tail = [line for line in text.strip().splitlines() if line.strip()][-2:]
    raise ValueError(f"llama-perplexity printed no final estimate: {' | '.join(tail)}")


def llama_perplexity(path: str | os.PathLike, text_file: str | os.PathLike, *, ctx: int = 512,
                     chunks: int | None = None, threads: int = 1, timeout: float = 3600) -> EnginePerplexity:
    """Perplexity of GGUF ``path`` on ``text_file`` as llama.cpp computes it (``llama-perplexity``: windows of
    ``ctx`` tokens, each scored on its second half; ``chunks`` windows at most)."""
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 8:
        raise ValueError(f"ctx must be an integer of at least 8, got {ctx!r}")
    _check_files({"model": path})
    if not Path(text_file).is_file():
        raise FileNotFoundError(f"{text_file} is not a file; llama-perplexity reads a text file")
    import tempfile

    cmd = [str(_tool("llama-perplexity")), "-m", str(path), "-f", str(text_file), "-c", str(ctx), "-t", str(threads),
           "-b", str(ctx)]
    if chunks is not None:
        cmd += ["--chunks", str(chunks)]
    t0 = time.perf_counter()
    # llama.cpp logs from a worker thread and can exit before its last lines are written (the final estimate
    # went missing in about 1 run of 3 here, exit code 0; with a tiny model, whose run ends at once, the last
    # chunk's running estimate went missing every time): read the log file and both pipes, fall back to the last
    # chunk's running estimate, and run again (at most twice more) when even that is missing — asking, with
    # ``chunks`` set, for one chunk more and reading the running estimate after ``chunks`` (the same figure)
    for attempt in range(3):
        extra = chunks is not None and attempt > 0
        run = [*cmd[:-1], str(chunks + 1)] if extra else cmd
        with tempfile.TemporaryDirectory(prefix="prunekit-llama-log-") as tmp:
            log = Path(tmp) / "perplexity.log"
            proc = subprocess.run([*run, "--log-file", str(log)], capture_output=True, text=True, errors="replace",
                                  timeout=timeout)
            logged = log.read_text(errors="replace") if log.is_file() else ""
        if proc.returncode != 0:
            raise RuntimeError(f"llama-perplexity could not run {path}: {_tail(proc)}")
        try:
            ppl, err = parse_perplexity(logged + "\n" + proc.stdout + "\n" + proc.stderr,
                                        after=chunks if extra else None)
            break
        except ValueError:
            if attempt == 2:
                raise
    return EnginePerplexity(ppl, err, ctx, chunks, threads, time.perf_counter() - t0)


def heldout_text_file(path: str | os.PathLike, source: str | Path = "pydocs", chars: int = 400_000, *,
                      default: bool = False) -> Path:
    """Write the evaluation split of ``source`` (documents prunekit never calibrates or distils on; see
    :mod:`prunekit.datasets.text`) as plain text to ``path``, at most ``chars`` characters, for llama-perplexity."""
    from ..datasets.text import documents, split_documents

    docs = split_documents(documents(source, default=default, say=lambda t: None), "evaluation")
    text = "\n\n".join(d.text for d in docs)[:chars]
    if not text.strip():
        raise ValueError(f"the evaluation split of {str(source)!r} holds no text")
    Path(path).write_text(text, encoding="utf-8")
    return Path(path)


def gguf_figures(files: Mapping[str, str | os.PathLike], text_source: str | Path | None = "pydocs", *,
                 ctx: int = 512, chunks: int | None = 16, rounds: int = 5, prompt_tokens: int = 128,
                 gen_tokens: int = 32, threads: int = 1, progress: bool = False) -> dict[str, Any]:
    """Everything llama.cpp says about the GGUF ``files`` (the first is the baseline of the speed-ups): their
    interleaved speed (:func:`engine_speed`) and, unless ``text_source`` is None, their perplexity on its
    evaluation split (:func:`llama_perplexity`, ``chunks`` windows of ``ctx`` tokens). The text file lives in
    a temporary folder removed afterwards. Returns ``{"speed": ..., "perplexity": {name: ...}}``."""
    import tempfile

    _check_files(files)
    speed = engine_speed(files, rounds=rounds, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, threads=threads,
                         progress=progress)
    ppl: dict[str, Any] = {}
    if text_source is not None:
        with tempfile.TemporaryDirectory(prefix="prunekit-ppl-") as tmp:
            text = heldout_text_file(Path(tmp) / "heldout.txt", text_source, default=text_source == "pydocs")
            for name, f in files.items():
                ppl[name] = llama_perplexity(f, text, ctx=ctx, chunks=chunks, threads=threads).to_dict()
    return {"speed": speed, "perplexity": ppl}


__all__ = ["gguf_figures", "heldout_text_file", "BenchRow", "BenchRun", "EnginePerplexity", "EngineSpeed", "engine_speed", "llama_perplexity",
           "pair_rounds", "parse_bench_json", "parse_perplexity", "run_llama_bench"]
