"""Model-zoo coverage: prunekit.structured vs Torch-Pruning on every torchvision classification model,
a broad sample of timm families and tiny Hugging Face configs of a dozen-plus families.

For each model (random weights, small input), each tool removes 30% of the channels of every group
with the classifier kept (prunekit: ``prune_(model, x, sparsity=0.3, ignore=[classifier])``;
Torch-Pruning: ``MetaPruner(..., pruning_ratio=0.3, ignored_layers=[classifier])`` with group L2,
as a user would call them). Recorded: whether the pruned model runs with the same output shape,
MACs (``prunekit.structured.count_macs``: every convolution, linear layer, matmul and attention at the
torch-function level) and parameters before/after, wall and
CPU seconds, and — for Hugging Face models — whether ``save_pretrained`` + ``from_pretrained``
gives back the same outputs. ``--tool trace`` measures instead how three ways of reading the graph
fare on the same models: torch.fx symbolic tracing, a ``__torch_function__`` recording and a
``TorchDispatchMode`` (aten) recording (success, operations seen, seconds).

Results go to a JSON-lines file as they come (``--out``, default benchmarks/results/zoo.jsonl), so a
run can be stopped and resumed; each chunk of models runs in a fresh worker process with a time
limit per model. ``--report`` prints the totals table and writes docs/zoo.md.

    nice -n 10 python benchmarks/zoo.py --zoo torchvision --tool prunekit torch-pruning
    nice -n 10 python benchmarks/zoo.py --zoo timm hf --tool prunekit torch-pruning trace
    python benchmarks/zoo.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "zoo.jsonl"
SPARSITY = 0.3
TOOLS = ("prunekit", "torch-pruning", "trace")

# timm: a broad sample of families, each at a resolution it accepts (models that fix their input size
# get img_size= where timm allows it)
TIMM = [
    "resnet18", "resnet50d", "seresnext26d_32x4d", "resnext26ts", "res2net50_26w_4s", "resnest14d", "skresnet18",
    "regnetx_002", "regnety_002", "regnetz_b16", "efficientnet_b0", "tf_efficientnetv2_b0", "mobilenetv2_050",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "mnasnet_050", "tinynet_e", "lcnet_050", "ghostnet_100",
    "ghostnetv2_100", "mixnet_s", "rexnet_100", "hardcorenas_a", "fbnetc_100", "densenet121", "dpn68", "dla34",
    "cspresnet50", "cspdarknet53", "vovnet39a", "ese_vovnet19b_dw", "hrnet_w18_small", "inception_v3@96",
    "inception_v4@96", "xception41", "repvgg_a0", "mobileone_s0", "gernet_s", "nf_resnet26", "eca_nfnet_l0",
    "selecsls42b", "tresnet_m", "convnext_atto", "convnextv2_atto", "edgenext_xx_small", "efficientformer_l1@224",
    "efficientformerv2_s0", "efficientvit_b0", "efficientvit_m0", "fastvit_t8", "mobilevit_xxs", "mobilevitv2_050",
    "levit_128s", "vit_tiny_patch16_224", "deit_tiny_patch16_224", "deit3_small_patch16_224", "cait_xxs24_224",
    "xcit_nano_12_p16_224", "poolformer_s12", "poolformerv2_s12", "convmixer_768_32@32", "mixer_s16_224",
    "resmlp_12_224", "gmlp_ti16_224", "coat_lite_tiny", "crossvit_tiny_240@240", "pvt_v2_b0", "twins_svt_small",
    "swin_tiny_patch4_window7_224@224", "swinv2_cr_tiny_ns_224@224", "maxvit_nano_rw_256@256",
    "coatnet_nano_rw_224@224", "davit_tiny", "focalnet_tiny_srf", "tiny_vit_5m_224@224", "eva02_tiny_patch14_224",
    "beit_base_patch16_224", "visformer_tiny", "nest_tiny", "sequencer2d_s", "inception_next_tiny",
    "hgnetv2_b0", "rdnet_tiny", "starnet_s1", "mambaout_femto", "hiera_tiny_224@224", "repghostnet_050",
]


# the largest models run last (memory, time)
LAST = ("regnet_y_128gf", "vit_h_14", "regnet_y_32gf", "vit_l_16", "vit_l_32", "regnet_x_32gf", "convnext_large",
        "efficientnet_v2_l", "regnet_y_16gf", "regnet_x_16gf", "wide_resnet101_2", "vgg19_bn", "vgg19")


def torchvision_names() -> list[str]:
    from prunekit.models.vision import import_torchvision

    tv = import_torchvision()
    names = sorted(tv.models.list_models(module=tv.models))
    return [n for n in names if n not in LAST] + [n for n in reversed(LAST) if n in names]


def hf_models() -> dict[str, Any]:
    """Tiny configs: (model class, config, input kind) per family."""
    import transformers as tr

    lm = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64)
    gqa = dict(lm, num_key_value_heads=2)
    img = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
               patch_size=8, num_labels=10)
    return {
        "llama": (tr.LlamaForCausalLM, tr.LlamaConfig(**gqa), "ids"),
        "mistral": (tr.MistralForCausalLM, tr.MistralConfig(**gqa), "ids"),
        "qwen2": (tr.Qwen2ForCausalLM, tr.Qwen2Config(**gqa), "ids"),
        "qwen3": (tr.Qwen3ForCausalLM, tr.Qwen3Config(**gqa, head_dim=16), "ids"),
        "gemma": (tr.GemmaForCausalLM, tr.GemmaConfig(**gqa, head_dim=16), "ids"),
        "gemma2": (tr.Gemma2ForCausalLM, tr.Gemma2Config(**gqa, head_dim=16), "ids"),
        "gemma3": (tr.Gemma3ForCausalLM, tr.Gemma3TextConfig(**gqa, head_dim=16), "ids"),
        "phi3": (tr.Phi3ForCausalLM, tr.Phi3Config(**gqa, pad_token_id=0), "ids"),
        "smollm3": (tr.SmolLM3ForCausalLM, tr.SmolLM3Config(**gqa, pad_token_id=0), "ids"),
        "olmo": (tr.OlmoForCausalLM, tr.OlmoConfig(**gqa, pad_token_id=0), "ids"),
        "granite": (tr.GraniteForCausalLM, tr.GraniteConfig(**gqa), "ids"),
        "stablelm": (tr.StableLmForCausalLM, tr.StableLmConfig(**gqa), "ids"),
        "gpt2": (tr.GPT2LMHeadModel, tr.GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                   bos_token_id=0, eos_token_id=0), "ids"),
        "gpt_neox": (tr.GPTNeoXForCausalLM, tr.GPTNeoXConfig(**lm), "ids"),
        "opt": (tr.OPTForCausalLM, tr.OPTConfig(vocab_size=256, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                num_attention_heads=4, word_embed_proj_dim=64,
                                                max_position_embeddings=64, pad_token_id=1), "ids"),
        "falcon": (tr.FalconForCausalLM, tr.FalconConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=4), "ids"),
        "mixtral": (tr.MixtralForCausalLM, tr.MixtralConfig(**gqa, num_local_experts=4, num_experts_per_tok=2), "ids"),
        "qwen3_moe": (tr.Qwen3MoeForCausalLM, tr.Qwen3MoeConfig(**gqa, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                                moe_intermediate_size=64), "ids"),
        "bert": (tr.BertForSequenceClassification, tr.BertConfig(**lm), "ids"),
        "roberta": (tr.RobertaForSequenceClassification, tr.RobertaConfig(**dict(lm, max_position_embeddings=80),
                                                                           pad_token_id=1), "ids"),
        "distilbert": (tr.DistilBertForSequenceClassification, tr.DistilBertConfig(
            vocab_size=256, dim=64, hidden_dim=128, n_layers=2, n_heads=4, max_position_embeddings=64), "ids"),
        "vit": (tr.ViTForImageClassification, tr.ViTConfig(**img), "image"),
        "deit": (tr.DeiTForImageClassification, tr.DeiTConfig(**img), "image"),
        "dinov2": (tr.Dinov2ForImageClassification, tr.Dinov2Config(**{k: v for k, v in img.items()
                                                                         if k != "intermediate_size"}), "image"),
        "convnext": (tr.ConvNextForImageClassification, tr.ConvNextConfig(hidden_sizes=[16, 32, 64, 128],
                                                                          depths=[1, 1, 1, 1], num_labels=10), "image"),
        "resnet": (tr.ResNetForImageClassification, tr.ResNetConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                                                    embedding_size=16, num_labels=10), "image"),
    }


# --- building -------------------------------------------------------------------------------------
def build(zoo: str, name: str) -> tuple[Any, Any, list, bool]:
    """(model, example input, classifier modules, is_hf) with random weights, seeded."""
    import torch

    torch.manual_seed(0)
    if zoo == "torchvision":
        from prunekit.models.vision import classifier, torchvision_model

        model, x = torchvision_model(name)
        return model, x, classifier(model), False
    if zoo == "timm":
        from prunekit.models.vision import classifier, timm_model

        base, _, size = name.partition("@")
        model, x = timm_model(base, image_size=int(size) if size else 64)
        return model, x, classifier(model), False
    cls, config, kind = hf_models()[name]
    model = cls(config).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 32, 32, generator=gen) if kind == "image" else torch.randint(3, 256, (1, 16), generator=gen)
    head = model.get_output_embeddings() if kind == "ids" and hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "classifier", None) or getattr(model, "score", None)
    if isinstance(head, torch.nn.Module) and not isinstance(head, torch.nn.Linear):  # a head module: its last layer
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        head = linears[-1] if linears else head
    heads = [head] if isinstance(head, torch.nn.Module) else []
    if isinstance(getattr(model, "distillation_classifier", None), torch.nn.Module):
        heads.append(model.distillation_classifier)
    return model, x, heads, True


def logits(out: Any) -> Any:
    from prunekit.infra.calling import output_tensor

    return output_tensor(out)


# --- one measurement ------------------------------------------------------------------------------
def measure(zoo: str, name: str, tool: str) -> dict[str, Any]:
    import torch

    from prunekit.infra.calling import call_model
    from prunekit.structured import count_macs
    from prunekit.structured import count_params

    torch.set_num_threads(1)
    row: dict[str, Any] = {"zoo": zoo, "model": name, "tool": tool}
    model, x, heads, hf = build(zoo, name)
    if tool == "trace":
        return {**row, **trace_kinds(model, x)}
    with torch.no_grad():
        ref = logits(call_model(model, x))
    row.update(params_before=count_params(model), macs_before=count_macs(model, x))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if tool == "prunekit":
                import prunekit.structured as ps

                rep = ps.prune_(model, x, SPARSITY, ignore=heads)
                row.update(prunable=round(rep.prunable_fraction, 4), repaired=len(rep.repaired),
                           channels_removed=round(rep.channels_removed_fraction, 4),
                           top_pins=[r for r, _ in rep.pinned[:3]], config_changes=rep.config_changes)
            else:
                import torch_pruning as tp

                pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                              pruning_ratio=SPARSITY, ignored_layers=heads)
                pruner.step()
        row["warned"] = any("structured pruning" in str(w.message) for w in caught)
        row.update(seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
    except Exception as exc:
        row.update(status="fail", error=f"{type(exc).__name__}: {str(exc)[:300]}",
                   seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
        return row
    row.update(params_after=count_params(model))
    try:
        with torch.no_grad():
            out = logits(call_model(model.eval(), x))
        row.update(runs=True, shape_ok=tuple(out.shape) == tuple(ref.shape), macs_after=count_macs(model, x))
    except Exception as exc:
        row.update(runs=False, shape_ok=False, error=f"pruned model fails: {type(exc).__name__}: {str(exc)[:300]}")
    if row.get("runs") and row["macs_before"]:
        row["macs_removed"] = round(1 - row["macs_after"] / row["macs_before"], 4)
    if hf and row.get("runs"):
        row["reloads"] = reloads(model, x, out)
    row["status"] = "ok"
    return row


def reloads(model: Any, x: Any, out: Any) -> bool:
    import torch

    from prunekit.infra.calling import call_model

    try:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            again = type(model).from_pretrained(d).eval()
            with torch.no_grad():
                return bool(torch.allclose(logits(call_model(again, x)), out, atol=1e-4, rtol=1e-4))
    except Exception:
        return False


def trace_kinds(model: Any, x: Any) -> dict[str, Any]:
    """fx symbolic trace vs a __torch_function__ recording vs a TorchDispatchMode recording."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    from prunekit.infra.calling import call_model

    class Count(TorchFunctionMode):
        n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    class CountAten(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    row: dict[str, Any] = {"status": "ok"}
    t = time.perf_counter()
    try:
        torch.fx.symbolic_trace(model)
        row["fx"] = True
    except Exception as exc:
        row.update(fx=False, fx_error=f"{type(exc).__name__}: {str(exc)[:160]}")
    row["fx_seconds"] = round(time.perf_counter() - t, 3)
    for key, mode in (("function", Count), ("dispatch", CountAten)):
        t = time.perf_counter()
        try:
            with torch.no_grad(), mode() as m:
                call_model(model, x)
            row[f"{key}_ops"] = m.n
            row[key] = True
        except Exception as exc:
            row.update({key: False, f"{key}_error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        row[f"{key}_seconds"] = round(time.perf_counter() - t, 3)
    return row


# --- driver / worker ------------------------------------------------------------------------------
def done_keys(path: Path) -> set[tuple[str, str, str]]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        keys.add((r["zoo"], r["model"], r["tool"]))
    return keys


def append(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


class Timeout(BaseException):
    pass


def worker(jobs: list[tuple[str, str, str]], out: Path, limit: int) -> None:
    def alarm(signum: int, frame: Any) -> None:
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)
    for zoo, name, tool in jobs:
        _current(out).write_text(json.dumps([zoo, name, tool]))
        signal.alarm(limit)
        t0 = time.perf_counter()
        try:
            row = measure(zoo, name, tool)
        except Timeout:
            row = {"zoo": zoo, "model": name, "tool": tool, "status": "timeout", "seconds": limit,
                   "error": f"no result within {limit} s"}
        except Exception as exc:
            row = {"zoo": zoo, "model": name, "tool": tool, "status": "fail",
                   "error": f"{type(exc).__name__}: {str(exc)[:300]}", "trace": traceback.format_exc()[-600:],
                   "seconds": round(time.perf_counter() - t0, 3)}
        finally:
            signal.alarm(0)
        row["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        append(out, row)
        print(f"{zoo:12} {name:34} {tool:14} {row.get('status')} macs-{row.get('macs_removed', '-')} "
              f"{row.get('seconds', '-')} s", flush=True)


def drive(zoos: list[str], tools: list[str], out: Path, chunk: int, limit: int, only: list[str] | None,
          redo: bool = False) -> None:
    jobs = []
    for zoo in zoos:
        names = torchvision_names() if zoo == "torchvision" else TIMM if zoo == "timm" else list(hf_models())
        for name in names:
            if only and name not in only:
                continue
            jobs += [(zoo, name, tool) for tool in tools]
    done = set() if redo else done_keys(out)
    todo = [j for j in jobs if j not in done]
    print(f"{len(todo)} of {len(jobs)} measurements to do -> {out}", flush=True)
    while todo:
        batch, todo = todo[:chunk], todo[chunk:]
        seen = _lines(out)
        cmd = [sys.executable, __file__, "--worker", json.dumps(batch), "--out", str(out), "--limit", str(limit)]
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        finished = {(r["zoo"], r["model"], r["tool"]) for r in _rows(out)[seen:]}
        left = [j for j in batch if j not in finished]
        if proc.returncode != 0 and left:  # the worker died (memory, a crash in C): record it, go on
            cur = _current(out)
            dead = tuple(json.loads(cur.read_text())) if cur.exists() else left[0]
            append(out, {"zoo": dead[0], "model": dead[1], "tool": dead[2], "status": "crash",
                         "error": f"worker exited with {proc.returncode}"})
            todo = [j for j in left if j != dead] + todo


def _current(out: Path) -> Path:
    """Where a worker notes the measurement it is on (so a crash is pinned to a model): a temporary file
    beside no result, one per results file."""
    import hashlib

    return Path(tempfile.gettempdir()) / f"prunekit-zoo-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]}.current"


def _rows(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _lines(out: Path) -> int:
    return len(_rows(out))


# --- report ---------------------------------------------------------------------------------------
def pruned(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok" and bool(r.get("runs")) and bool(r.get("shape_ok")) and r.get("macs_removed", 0) >= 0.2


def report(path: Path, doc: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest: dict[tuple[str, str, str], dict] = {}
    for r in rows:
        latest[(r["zoo"], r["model"], r["tool"])] = r
    zoos = sorted({k[0] for k in latest}, key=["torchvision", "timm", "hf"].index)
    lines = ["| zoo | models | prunekit: runs | prunekit: ≥ 20% MACs | Torch-Pruning: runs | Torch-Pruning: ≥ 20% MACs | "
             "Torch-Pruning ≥ 20% but not prunekit | silent no-ops (prunekit) |", "|---|---|---|---|---|---|---|---|"]
    for zoo in zoos:
        names = sorted({k[1] for k in latest if k[0] == zoo})
        pk = [latest.get((zoo, n, "prunekit"), {}) for n in names]
        tp = [latest.get((zoo, n, "torch-pruning"), {}) for n in names]
        runs = lambda rs: sum(1 for r in rs if r.get("status") == "ok" and r.get("runs") and r.get("shape_ok"))  # noqa: E731
        behind = [n for n, a, b in zip(names, pk, tp) if pruned(b) and not pruned(a)]
        silent = [n for n, a in zip(names, pk) if a.get("runs") and a.get("macs_removed", 1) < 0.15 and not a.get("warned")]
        lines.append(f"| {zoo} | {len(names)} | {runs(pk)} | {sum(map(pruned, pk))} | {runs(tp)} | {sum(map(pruned, tp))} "
                     f"| {len(behind)}{' (' + ', '.join(behind) + ')' if behind else ''} | {len(silent)} |")
    hf = [k[1] for k in latest if k[0] == "hf" and k[2] != "trace"]
    if hf:
        reload = {tool: sum(1 for n in set(hf) if latest.get(("hf", n, tool), {}).get("reloads")) for tool in
                  ("prunekit", "torch-pruning")}
        lines.append(f"\nHugging Face models whose pruned copy reloads with `from_pretrained` and gives the same outputs: "
                     f"prunekit {reload['prunekit']} of {len(set(hf))}, Torch-Pruning {reload['torch-pruning']}.")
    table = "\n".join(lines)
    print(table)
    per = ["# Model zoo: prunekit vs Torch-Pruning, model by model", "",
           f"Generated by `python benchmarks/zoo.py --report` from `{path.relative_to(ROOT)}` (sparsity {SPARSITY} of "
           "channels, classifier kept, random weights, small inputs; MACs by `prunekit.structured.count_macs`, every "
           "convolution, linear layer, matmul and attention at the torch-function level, the same counter for both "
           "tools; seconds are wall time of the pruning call on a shared 2-core CPU, one thread, with a per-model limit "
           "of 300 s (120 s for the runs made last: Torch-Pruning on timm from mobilevitv2_050 on in the list's order, "
           "prunekit on the last 7 timm models, both tools on the Hugging Face models)). "
           "`≥20%` marks a pruned model that runs with the right output shape and lost at least 20% of its MACs. "
           "`warned`: the call issued a `StructuredPruningWarning` (less than half of what was asked went, or an "
           "operation pinned its channels).", "", "## Totals", "", table, ""]
    short = [(k[0], k[1], r) for k, r in sorted(latest.items()) if k[2] == "prunekit" and not pruned(r)]
    if short:
        per += ["## Where prunekit removes less than 20% of the MACs, and why", "",
                "| zoo | model | result | prunable | warned | first pin reasons (from the report) |", "|---|---|---|---|---|---|"]
        for zoo, n, r in short:
            why = "; ".join(r.get("top_pins") or []) or r.get("error", "")
            per.append(f"| {zoo} | {n} | {_cell(r)} | {r.get('prunable', '')} | {'yes' if r.get('warned') else 'no'} "
                       f"| {str(why).replace('|', '/')[:300]} |")
        per.append("")
    for zoo in zoos:
        per += [f"## {zoo}", "", "| model | prunekit MACs removed | params removed | s | prunable | notes | "
                "Torch-Pruning MACs removed | s | notes |", "|---|---|---|---|---|---|---|---|---|"]
        for n in sorted({k[1] for k in latest if k[0] == zoo}):
            a, b = latest.get((zoo, n, "prunekit"), {}), latest.get((zoo, n, "torch-pruning"), {})
            per.append(f"| {n} | {_cell(a)} | {_params(a)} | {a.get('seconds', '')} | {a.get('prunable', '')} | {_note(a)} "
                       f"| {_cell(b)} | {b.get('seconds', '')} | {_note(b)} |")
        per.append("")
    tr = [latest[k] for k in latest if k[2] == "trace"]
    if tr:
        per += ["## Reading the graph: fx trace vs `__torch_function__` vs `TorchDispatchMode`", "",
                "| zoo | models | fx traces | __torch_function__ records | TorchDispatchMode records | "
                "median ops (function / dispatch) | median s (fx / function / dispatch) |", "|---|---|---|---|---|---|---|"]
        for zoo in zoos:
            rs = [r for r in tr if r["zoo"] == zoo and r.get("status") == "ok"]
            if not rs:
                continue
            med = lambda k: sorted(r.get(k, 0) for r in rs)[len(rs) // 2]  # noqa: E731
            per.append(f"| {zoo} | {len(rs)} | {sum(bool(r.get('fx')) for r in rs)} | {sum(bool(r.get('function')) for r in rs)} "
                       f"| {sum(bool(r.get('dispatch')) for r in rs)} | {med('function_ops')} / {med('dispatch_ops')} "
                       f"| {med('fx_seconds')} / {med('function_seconds')} / {med('dispatch_seconds')} |")
        per.append("")
    doc.write_text("\n".join(per) + "\n")
    print(f"wrote {doc}")


def _cell(r: dict[str, Any]) -> str:
    if not r:
        return "–"
    if r.get("status") != "ok":
        return r.get("status", "?")
    if not r.get("runs"):
        return "does not run"
    if not r.get("shape_ok"):
        return "wrong shape"
    v = r.get("macs_removed", 0)
    return f"{v:.1%}" + (" ✓" if v >= 0.2 else "")


def _params(r: dict[str, Any]) -> str:
    if r.get("params_after") and r.get("params_before"):
        return f"{1 - r['params_after'] / r['params_before']:.1%}"
    return ""


def _note(r: dict[str, Any]) -> str:
    bits = []
    if r.get("error"):
        bits.append(str(r["error"]).replace("|", "/").replace("\n", " ")[:90])
    if r.get("warned"):
        bits.append("warned")
    if "reloads" in r:
        bits.append("reloads" if r["reloads"] else "does not reload")
    if r.get("repaired"):
        bits.append(f"{r['repaired']} groups kept by the check")
    return "; ".join(bits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", nargs="+", default=["torchvision", "timm", "hf"], choices=["torchvision", "timm", "hf"])
    p.add_argument("--tool", nargs="+", default=["prunekit", "torch-pruning"], choices=TOOLS)
    p.add_argument("--only", nargs="+", default=None, help="only these model names")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--chunk", type=int, default=8, help="measurements per worker process")
    p.add_argument("--limit", type=int, default=300, help="seconds per measurement before it counts as a timeout")
    p.add_argument("--redo", action="store_true", help="measure again even where results exist (the latest counts)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="print the totals and write docs/zoo.md")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "zoo.md")
    args = p.parse_args()
    if args.worker:
        worker([tuple(j) for j in json.loads(args.worker)], args.out, args.limit)
    elif args.report:
        report(args.out, args.doc)
    else:
        drive(args.zoo, args.tool, args.out, args.chunk, args.limit, args.only, args.redo)


if __name__ == "__main__":
    main()
