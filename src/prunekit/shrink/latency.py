"""A measured latency table for the ``speed=`` target: how much one block's attention or MLP at a given width
adds to the time of decoding one token, timed on this machine (not derived from MACs).

How it is measured (:func:`measure_table`):

- The decode step is timed as the model runs it: greedy decoding with the KV cache, one new token at a time
  after a short prompt, batch 1, ``threads`` torch threads (1 by default, as llama.cpp-style CPU deployment
  of a small model often is), in **CPU time of the calling thread** (``time.thread_time``), which other
  processes on a shared machine do not inflate the way they inflate wall time; every model (the dense one
  and each probe) once per round, ``repeats`` rounds interleaved, the minimum of each kept.
- The dense model is timed whole: ``dense_s`` per token.
- For each width a block's attention (key/value groups) or MLP (neurons) may take, a *probe* is built from
  the model's own config class with ``probe_layers`` blocks, every block at that width and the other module
  dense, random weights (speed does not depend on their values); the per-block effect is (probe time −
  the all-dense probe's time) / ``probe_layers``. Effects are made monotone (a narrower module is never
  counted slower than a wider one).
- ``engine="llama.cpp"``: the same table timed where small models run. The dense model and every probe are
  written as GGUF files of type ``quant`` (q8_0 by default; the probes with a 300-token vocabulary, so they are a
  few MB; a K-quant such as q4_K_M is written f16 and converted by llama.cpp's ``llama-quantize``, whose
  fallbacks for rows 256 does not divide the table's notes count) into a temporary folder that is removed
  afterwards, and each is timed with ``llama-bench``
  (:mod:`prunekit.metrics.engine_speed`: decode of ``tokens`` tokens after a short prompt, ``threads`` threads,
  the files interleaved round by round, ``repeats`` rounds, the least per-token time of each kept) — so
  ``speed=1.5`` asks for 1.5× the dense model's decode speed in llama.cpp at that type. llama.cpp must be built
  (``make llama-cpp``), and the model must be one GGUF export writes (checked before anything is timed).
- A per-layer shape's predicted time per token is ``dense_s`` + the sum of its blocks' effects;
  ``speed=S`` asks for a predicted time ≤ ``dense_s`` / S. The report of a shrink gives the prediction and
  the CLI measures the result against the dense model, paired (:mod:`prunekit.metrics.generation`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

DEFAULT_TOKENS = 16
DEFAULT_REPEATS = 5
DEFAULT_PROBE_LAYERS = 4
PROBE_VOCAB = 256  # the probes' embedding and head: small, the same in every probe, so they cancel
ENGINES = ("transformers", "llama.cpp")
DEFAULT_ENGINE_QUANT = "q8_0"
ENGINE_PROMPT = 8  # llama-bench's prefill before the timed decode (it times both; the decode is read)


@torch.no_grad()
def decode_seconds(model: nn.Module, tokens: int = DEFAULT_TOKENS, repeats: int = DEFAULT_REPEATS,
                   threads: int | None = 1, prompt: int = 8, warmup: bool = True) -> float:
    """CPU seconds of the calling thread per decoded token (greedy, KV cache, batch 1), the least of ``repeats``
    (after one warm-up run when ``warmup``)."""
    from transformers import DynamicCache

    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    vocab = int(model.config.vocab_size)
    device = next(model.parameters()).device
    ids = torch.arange(prompt, device=device).remainder(vocab)[None]
    best = float("inf")
    try:
        for _ in range(repeats + int(warmup)):
            cache = DynamicCache(config=model.config)
            nxt = model(input_ids=ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            start = time.thread_time()
            for _ in range(tokens):
                nxt = model(input_ids=nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            best = min(best, (time.thread_time() - start) / tokens)
    finally:
        torch.set_num_threads(old)
        model.train(was_training)
    return best


@dataclass
class LatencyTable:
    """Per-token decode time of the dense model and each module width's effect per block (seconds)."""

    dense_s: float
    attention: dict[int, float]   # key/value groups → seconds added per block (≤ 0 for a cut)
    mlp: dict[int, float]         # neurons → seconds added per block
    block: float                  # seconds a dense block adds (its removal saves this much)
    dense_kv: int
    dense_ffn: int
    threads: int | None
    tokens: int
    repeats: int
    probe_layers: int
    measure_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    engine: str = "transformers"
    quant: str | None = None  # llama.cpp: the GGUF type every file was timed at

    def effect(self, kind: str, width: int) -> float:
        """Seconds per token one block adds at ``width`` (relative to the dense block)."""
        table = self.attention if kind == "attention" else self.mlp
        if width not in table:
            raise KeyError(f"the latency table has no {kind} width {width}; measure it first")
        return table[width]

    def fastest_s(self, layers: int, depth: bool = False) -> float:
        """Predicted time per token with every block at its fastest measured widths (``depth``: all but one
        block removed, the last one at its fastest widths)."""
        narrow = min(self.attention.values()) + min(self.mlp.values())
        if depth:
            return self.dense_s - (layers - 1) * self.block + narrow
        return self.dense_s + layers * narrow

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"dense_s": self.dense_s, "attention": {str(k): v for k, v in self.attention.items()},
                "mlp": {str(k): v for k, v in self.mlp.items()}, "block": self.block, "threads": self.threads, "tokens": self.tokens,
                "repeats": self.repeats, "probe_layers": self.probe_layers, "measure_seconds": self.measure_seconds,
                "notes": list(self.notes), "engine": self.engine, "quant": self.quant}


def _probe(config: Any, layers: int, kv: int | None = None, ffn: int | None = None,
           vocab: int = PROBE_VOCAB) -> nn.Module:
    from transformers import AutoModelForCausalLM

    c = copy.deepcopy(config)
    c.num_hidden_layers = layers
    c.vocab_size = vocab
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):  # special ids beyond the probe's vocabulary
        if isinstance(getattr(c, name, None), int) and getattr(c, name) >= vocab:
            setattr(c, name, 0)
    for name in ("layer_types",):  # per-layer lists sized to the old depth
        if isinstance(getattr(c, name, None), list):
            setattr(c, name, getattr(c, name)[:layers])
    if hasattr(c, "prunekit_layer_shapes"):
        delattr(c, "prunekit_layer_shapes")
    if kv is not None:
        rep = c.num_attention_heads // c.num_key_value_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        c.head_dim, c.num_key_value_heads, c.num_attention_heads = head_dim, kv, kv * rep
    if ffn is not None:
        c.intermediate_size = ffn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(c, dtype=torch.float32).eval()


def _monotone(effects: dict[int, float]) -> dict[int, float]:
    out, low = {}, float("inf")
    for w in sorted(effects, reverse=True):
        low = min(low, effects[w])
        out[w] = low
    return out


def check_engine(engine: str, quant: str | None = None) -> str | None:
    """The engine validated, and for llama.cpp its GGUF type (default q8_0) and that ``llama-bench`` is built;
    one clear error otherwise. Times nothing."""
    if engine not in ENGINES:
        raise ValueError(f"the speed engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "transformers":
        if quant is not None:
            raise ValueError("a GGUF type applies to the llama.cpp engine; transformers times the model's own dtype")
        return None
    from ..export.gguf import parse_quant
    from ..export.llama_cpp import k_quant_type, llama_cpp_home, llama_cpp_tool
    from .search import is_k_quant

    if is_k_quant(quant):
        quant = k_quant_type(str(quant))
        if llama_cpp_tool("llama-quantize") is None:
            raise FileNotFoundError(f"speed= timed in llama.cpp at {quant} needs llama.cpp's llama-quantize (the gguf "
                                    f"package writes no K-quants), which is not built in {llama_cpp_home() / 'bin'}: "
                                    "run 'make llama-cpp'")
    else:
        quant = parse_quant(quant or DEFAULT_ENGINE_QUANT)
    if quant == "source":
        raise ValueError("the llama.cpp latency table times one GGUF type for every file: name it (f16, q8_0, q4_0 …)")
    if llama_cpp_tool("llama-bench") is None:
        raise FileNotFoundError(f"speed= timed in llama.cpp needs llama.cpp's llama-bench, which is not built in "
                                f"{llama_cpp_home() / 'bin'}: run 'make llama-cpp' (once; tens of minutes), or time "
                                "in transformers")
    return quant


def _probes(c: Any, kv_widths: Iterable[int], ffn_widths: Iterable[int], probe_layers: int,
            vocab: int = PROBE_VOCAB) -> dict[tuple[str, int], nn.Module]:
    dense_kv = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    dense_ffn = int(c.intermediate_size)
    half = max(1, probe_layers // 2)
    probes: dict[tuple[str, int], nn.Module] = {("base", probe_layers): _probe(c, probe_layers, vocab=vocab)}
    if probe_layers > half:
        probes[("base", half)] = _probe(c, half, vocab=vocab)
    for kv in sorted(set(kv_widths) - {dense_kv}, reverse=True):
        probes[("attention", kv)] = _probe(c, probe_layers, kv=kv, vocab=vocab)
    for f in sorted(set(ffn_widths) - {dense_ffn}, reverse=True):
        probes[("mlp", f)] = _probe(c, probe_layers, ffn=f, vocab=vocab)
    return probes


def _table(model: nn.Module, best: dict[tuple[str, int], float], threads: int | None, tokens: int, repeats: int,
           probe_layers: int, started: float, **extra: Any) -> LatencyTable:
    """The table from every model's least seconds per token (``("dense", 0)``, ``("base", layers)``, probes)."""
    c = model.config
    dense_kv = int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    dense_ffn = int(c.intermediate_size)
    half = max(1, probe_layers // 2)
    base = best[("base", probe_layers)]
    block = max(0.0, (base - best[("base", half)]) / (probe_layers - half)) if probe_layers > half else 0.0
    attention = {dense_kv: 0.0, **{k[1]: (v - base) / probe_layers for k, v in best.items() if k[0] == "attention"}}
    mlp = {dense_ffn: 0.0, **{k[1]: (v - base) / probe_layers for k, v in best.items() if k[0] == "mlp"}}
    return LatencyTable(best[("dense", 0)], _monotone(attention), _monotone(mlp), block, dense_kv, dense_ffn, threads,
                        tokens, repeats, probe_layers, time.perf_counter() - started, **extra)


def time_gguf(files: dict[str, Any], *, tokens: int, repeats: int, threads: int) -> dict[str, float]:
    """Seconds per decoded token of each GGUF file in llama.cpp: ``llama-bench`` (``tokens`` decoded after an
    :data:`ENGINE_PROMPT`-token prompt, ``threads`` threads), the files interleaved in ``repeats`` rounds (at least
    2), the least of each file's rounds."""
    from ..metrics.engine_speed import engine_speed

    speed = engine_speed(files, rounds=max(2, repeats), prompt_tokens=ENGINE_PROMPT, gen_tokens=tokens,
                         threads=threads)
    return {name: min(speed.timings[name]["decode"].wall_ms) / 1000.0 for name in files}


def _measure_llama_cpp(model: nn.Module, kv_widths: Iterable[int], ffn_widths: Iterable[int], threads: int | None,
                       tokens: int, repeats: int, probe_layers: int, quant: str) -> LatencyTable:
    import tempfile
    from pathlib import Path

    from ..export.gguf import plan_gguf, write_gguf
    from ..export.llama_cpp import quantize_gguf
    from ..models.tiny import tiny_tokenizer
    from .search import is_k_quant

    started = time.perf_counter()
    k_quant = is_k_quant(quant)
    fallbacks: dict[str, int] = {}

    def write(m: nn.Module, plan: Any, path: Path) -> None:
        if not k_quant:
            write_gguf(m, plan, path)
            return
        f16 = path.with_name(path.stem + "-f16.gguf")  # llama-quantize converts the f16 file to the K-quant
        write_gguf(m, plan, f16)
        fallbacks[path.stem] = len(quantize_gguf(f16, path, quant, threads=1).fallbacks)
        f16.unlink()

    threads = 1 if threads is None else threads
    tok = tiny_tokenizer(bos_token="<eos>")  # llama-bench feeds token ids, never text: any tokenizer will do
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if vocab < len(tok):
        raise ValueError(f"timing in llama.cpp writes the model with a stand-in byte-level tokenizer of {len(tok)} "
                         f"tokens, and this model's vocabulary has only {vocab}; time it in transformers")
    write_type = "f16" if k_quant else quant
    dense_plan = plan_gguf(model, tok, write_type)  # a family GGUF cannot hold is refused here, before any file
    probes = _probes(model.config, kv_widths, ffn_widths, probe_layers, vocab=len(tok))
    with tempfile.TemporaryDirectory(prefix="prunekit-latency-") as tmp:
        files: dict[str, Path] = {"dense-0": Path(tmp) / "dense-0.gguf"}
        write(model, dense_plan, files["dense-0"])
        for (kind, width), probe in probes.items():
            files[f"{kind}-{width}"] = Path(tmp) / f"{kind}-{width}.gguf"
            write(probe, plan_gguf(probe, tok, write_type), files[f"{kind}-{width}"])
        seconds = time_gguf({n: str(f) for n, f in files.items()}, tokens=tokens, repeats=repeats, threads=threads)
    best = {(n.rsplit("-", 1)[0], int(n.rsplit("-", 1)[1])): s for n, s in seconds.items()}
    from ..export.llama_cpp import llama_cpp_version

    notes = [f"timed in {llama_cpp_version()} (llama-bench), GGUF {quant}, {threads} thread(s)"]
    if any(fallbacks.values()):
        notes.append(f"llama-quantize wrote {fallbacks.get('dense-0', 0)} tensor(s) of the dense model and some of the "
                     f"probes' ({sum(fallbacks.values())} in all) in a fallback type: rows 256 does not divide")
    return _table(model, best, threads, tokens, repeats, probe_layers, started, engine="llama.cpp", quant=quant,
                  notes=notes)


def measure_table(model: nn.Module, kv_widths: Iterable[int], ffn_widths: Iterable[int], *, threads: int | None = 1,
                  tokens: int = DEFAULT_TOKENS, repeats: int = DEFAULT_REPEATS,
                  probe_layers: int = DEFAULT_PROBE_LAYERS, engine: str = "transformers",
                  quant: str | None = None) -> LatencyTable:
    """Time the dense model and a probe per width (see the module docstring) in ``engine`` (``transformers``, in
    this process; ``llama.cpp``: GGUF files of type ``quant`` timed with llama-bench); changes nothing."""
    quant = check_engine(engine, quant)
    if engine == "llama.cpp":
        return _measure_llama_cpp(model, kv_widths, ffn_widths, threads, tokens, repeats, probe_layers, quant)
    started = time.perf_counter()
    dtype = next(model.parameters()).dtype
    probes = _probes(model.config, kv_widths, ffn_widths, probe_layers)
    models = {("dense", 0): model, **{k: p.to(dtype) for k, p in probes.items()}}
    for m in models.values():
        decode_seconds(m, tokens, 0, threads, warmup=True)
    best = {k: float("inf") for k in models}
    for _ in range(repeats):  # interleaved rounds: a load change hits every model alike
        for k, m in models.items():
            best[k] = min(best[k], decode_seconds(m, tokens, 1, threads, warmup=False))
    return _table(model, best, threads, tokens, repeats, probe_layers, started)
