"""What a recipe's task gives its runs: the dense model, the data stages need, the measurements and
the protocol card. One class per task kind: language models on text, classifiers on images."""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from ..infra.latency import combined_flag, compare_latency, latency
from ..metrics.summary import ModelSummary, summary
from ..recipe.schema import ClassifyTask, LMTask
from .protocol import file_fingerprint, machine, tensor_hash, tokenizer_hash, versions

Say = Callable[[str], None]


def size_figures(s: ModelSummary) -> dict[str, Any]:
    """Parameter, sparsity and size figures of a summary."""
    return {"params": s.params, "nonzeros": s.nonzeros, "sparsity": s.sparsity, "scope_sparsity": s.scope_sparsity,
            "dense_bytes": s.dense_bytes, "sparse_bytes": s.sparse_bytes}


def layer_sparsities(s: ModelSummary) -> dict[str, float]:
    """Per-layer weight sparsity of the layers in scope (or masked)."""
    return {r.name: r.sparsity for r in s.layers if r.in_scope or r.masked}


def speed_figures(dense: nn.Module, model: nn.Module | None, example: Any, threads: int | None) -> dict[str, Any]:
    """Forward latency of ``model`` beside the dense model, timed interleaved (the dense alone for a baseline)."""
    if model is None:
        t = latency(dense, example, runs=30, threads=threads)
        return {"latency_ms": t.median_ms, "latency_iqr_ms": t.iqr_ms, "latency_cpu_ms": t.cpu_ms,
                "latency_noisy": t.noisy, "latency_why": t.flag}
    cmp = compare_latency({"dense": dense, "pruned": model}, example, max_rounds=30, threads=threads)
    p, d, r = cmp.timings["pruned"], cmp.timings["dense"], cmp.ratio("pruned", "dense")
    return {"latency_ms": p.median_ms, "latency_iqr_ms": p.iqr_ms, "latency_cpu_ms": p.cpu_median_ms,
            "latency_dense_ms": d.median_ms, "latency_ratio": r.median, "latency_ratio_iqr": r.iqr,
            "latency_noisy": cmp.noisy, "latency_why": combined_flag([p, d])}


class LMContext:
    """A language-model task: one dense model, calibration windows per seed, fixed evaluation windows."""

    def __init__(self, task: LMTask, *, progress: bool = True, say: Say = print) -> None:
        from ..models.hf import resolve_model_path

        self.task, self.progress, self.say = task, progress, say
        self.path = resolve_model_path(task.model)
        self._lm = None
        self._calib: dict[int, torch.Tensor] = {}
        self._eval: torch.Tensor | None = None
        self._text_hashes: dict[str, str | None] = {}

    def identity(self) -> dict[str, Any]:
        """What decides a run's key besides its config (cheap: no model is loaded)."""
        t = self.task
        ev = t.evaluation
        source = ev.source or t.calibration.source
        return {"task": "lm", "model": t.model, "model_hash": file_fingerprint(self.path),
                "calibration": {**t.calibration.to_dict(), "text_hash": self._text_hash(t.calibration.source)},
                "evaluation": {"source": source, "windows": ev.windows, "seqlen": ev.seqlen or t.calibration.seqlen,
                               "text_hash": self._text_hash(source)},
                "versions": versions(), "machine": machine(device=t.device)}

    def _text_hash(self, source: str) -> str | None:
        """The hash of a text source's contents, read once per context (a changed file changes the run key)."""
        from ..datasets.text import text_fingerprint

        if source not in self._text_hashes:
            self._text_hashes[source] = text_fingerprint(source)
        return self._text_hashes[source]

    @property
    def lm(self):
        if self._lm is None:
            from ..models.hf import load_model

            self.say(f"loading {self.task.model} ...")
            self._lm = load_model(self.task.model)
            self._lm.model.eval()
        return self._lm

    def dense(self, seed: int) -> nn.Module:
        return self.lm.model

    def calibration(self, seed: int) -> torch.Tensor:
        if seed not in self._calib:
            from ..datasets.text import calibration_windows

            c = self.task.calibration
            self._calib[seed] = calibration_windows(self.lm.tokenizer, c.source, c.nsamples, c.seqlen, seed,
                                                    default=False, say=self.say)
        return self._calib[seed]

    def evaluation(self) -> torch.Tensor:
        if self._eval is None:
            from ..datasets.text import eval_windows

            ev = self.identity()["evaluation"]
            self._eval = eval_windows(self.lm.tokenizer, ev["source"], ev["windows"], ev["seqlen"], default=False,
                                      say=self.say)
        return self._eval

    def protocol(self, seed: int) -> dict[str, Any]:
        card = self.identity()
        card["tokenizer_hash"] = tokenizer_hash(self.lm.tokenizer)
        card["calibration"] = {**card["calibration"], "seed": seed, "tokens_hash": tensor_hash(self.calibration(seed))}
        card["evaluation"] = {**card["evaluation"], "tokens_hash": tensor_hash(self.evaluation())}
        return card

    def stage_inputs(self, seed: int) -> dict[str, Any]:
        """Keyword inputs of ``prune_`` for this task."""
        return {"calibration": self.calibration(seed)}

    def measure(self, model: nn.Module, seed: int, measures: list[str], baseline: bool) -> dict[str, Any]:
        from ..metrics.generation import compare_generation
        from ..metrics.perplexity import perplexity

        dense = self.dense(seed)
        vocab = int(getattr(model.config, "vocab_size", 1000))
        example = {"input_ids": torch.randint(0, vocab, (1, 128), generator=torch.Generator().manual_seed(0))}
        s = summary(model, example_inputs=example if "macs" in measures else None)
        out: dict[str, Any] = size_figures(s)
        if "macs" in measures:
            out.update(macs=s.macs, effective_macs=s.effective_macs, macs_tokens=128)
        if "perplexity" in measures:
            out["perplexity"] = perplexity(model, self.evaluation(), progress=self.progress)
        if "latency" in measures:
            out.update(speed_figures(dense, None if baseline else model, example, threads=None))
        if "generation" in measures:
            models = {"dense": dense} if baseline else {"dense": dense, "pruned": model}
            speeds, cmp = compare_generation(models, self.lm.tokenizer, new_tokens=self.task.gen_tokens)
            mine = speeds["dense" if baseline else "pruned"]
            out.update(tokens_per_s=mine.tokens_per_s, generation_spread=mine.spread, generation_noisy=mine.noisy,
                       generation_tokens=mine.tokens, prompt_tokens=mine.prompt_tokens)
            if not baseline:
                out["tokens_per_s_dense"] = speeds["dense"].tokens_per_s
        if "layers" in measures:
            out["layers"] = layer_sparsities(s)
        return out


class ClassifyContext:
    """A classification task: data loaded once, a dense model trained per seed."""

    def __init__(self, task: ClassifyTask, *, progress: bool = True, say: Say = print) -> None:
        self.task, self.progress, self.say = task, progress, say
        self._data = None
        self._dense: dict[int, nn.Module] = {}

    def identity(self) -> dict[str, Any]:
        t = self.task
        return {"task": "classify", "model": t.model, "model_hash": None,
                "data": {"name": t.data, "train_size": t.train_size, "test_size": t.test_size},
                "training": {"epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "widths": t.widths},
                "versions": versions(), "machine": machine()}

    def _load(self):
        if self._data is None:
            from ..datasets import load_digits, load_fashion_mnist

            t = self.task
            train, test = ((load_fashion_mnist("train"), load_fashion_mnist("test")) if t.data == "fashion-mnist"
                           else (load_digits("train"), load_digits("test")))
            if t.test_size is not None and t.test_size < len(test):
                test = Subset(test, list(range(t.test_size)))
            self._data = (train, test)
        return self._data

    def train_set(self, seed: int):
        train, _ = self._load()
        n = self.task.train_size
        if n is None or n >= len(train):
            return train
        idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
        return Subset(train, idx.tolist())

    def _build(self) -> nn.Module:
        from ..models.registry import reference_model

        ref = reference_model(self.task.model)
        if self.task.widths is None:
            return ref.build()
        return ref.build(widths=tuple(self.task.widths))

    def build(self) -> nn.Module:
        """A fresh model of the task's architecture (the data stage's proxy models)."""
        return self._build()

    def dense(self, seed: int) -> nn.Module:
        if seed not in self._dense:
            from ..train import fit

            torch.manual_seed(seed)
            model = self._build()
            t = self.task
            self.say(f"training {t.model} on {t.data} (seed {seed}, {t.epochs} epochs) ...")
            fit(model, self.train_set(seed), epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, seed=seed,
                progress=self.progress)
            self._dense[seed] = model.eval()
        return self._dense[seed]

    def example(self, batch: int = 1) -> torch.Tensor:
        from ..models.registry import reference_model

        return torch.zeros(batch, *reference_model(self.task.model).input_shape)

    def stage_inputs(self, seed: int) -> dict[str, Any]:
        batches = list(DataLoader(self.train_set(seed), batch_size=self.task.batch_size, shuffle=False))
        return {"data": batches[: self.task.calibration_batches], "loss_fn": F.cross_entropy,
                "example_inputs": self.example(8)}

    def protocol(self, seed: int) -> dict[str, Any]:
        card = self.identity()
        train = self.train_set(seed)
        idx = torch.tensor(getattr(train, "indices", range(len(train))))
        _, test = self._load()
        card["data"] = {**card["data"], "train_indices_hash": tensor_hash(idx), "test_examples": len(test), "seed": seed}
        return card

    def measure(self, model: nn.Module, seed: int, measures: list[str], baseline: bool) -> dict[str, Any]:
        from ..metrics import accuracy

        _, test = self._load()
        s = summary(model, example_inputs=self.example(1) if "macs" in measures else None)
        out: dict[str, Any] = size_figures(s)
        if "accuracy" in measures:
            out["accuracy"] = accuracy(model, test)
        if "macs" in measures:
            out.update(macs=s.macs, effective_macs=s.effective_macs)
        if "latency" in measures:
            out.update(speed_figures(self.dense(seed), None if baseline else model,
                                     self.example(self.task.latency_batch), threads=1))
            out["latency_batch"] = self.task.latency_batch
        if "layers" in measures:
            out["layers"] = layer_sparsities(s)
        return out


def make_context(task: LMTask | ClassifyTask, *, progress: bool = True, say: Say = print):
    """The context of a recipe's task."""
    return (LMContext if task.task == "lm" else ClassifyContext)(task, progress=progress, say=say)


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for one run (the dense model stays untouched)."""
    return copy.deepcopy(model)
