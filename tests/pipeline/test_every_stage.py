"""Every registered stage kind, method, exporter and structured unit, as timm tests every registered model: each
runs on a tiny model, its config round-trips through YAML, and its command-line form builds the same config as
its Python form. A new stage kind or method without an example here fails the first test."""

import argparse
import pickle

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from prunekit.cli import build_parser
from prunekit.cli.prune import build_stages
from prunekit.core.mask import get_mask
from prunekit.export import EXPORTERS
from prunekit.methods import METHODS
from prunekit.structured import TRANSFORMER_UNITS
from prunekit.models.hf import tiny_model
from prunekit.models.tiny import tiny_tokenizer, write_tiny_folder
from prunekit.pipeline import STAGES, Workspace, parse_stage, run_stages, stage_dict

# one example per stage kind: its fields, as a recipe or Python would write them
EXAMPLES = {
    "load": {},  # the model path is the fixture's
    "calibrate": {"nsamples": 4, "seqlen": 16, "seed": 1},
    "measure": {"label": "before", "windows": 2, "seqlen": 16, "macs": True},
    "prune": {"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"},
    "structured": {"what": "neurons", "sparsity": 0.5},
    "slice": {"sparsity": 0.25, "head": "untie"},
    "experts": {"sparsity": 0.5, "score": "frequency"},
    "loraprune": {"sparsity": 0.5, "steps": 3, "criterion": "gradient"},
    "recover": {"recover": "bias_norm", "steps": 2},
    "finetune": {"epochs": 0.05, "batch_size": 32},
    "data": {"score": "el2n", "epochs": 0, "select": {"strategy": "ccs", "keep": 0.5, "bins": 4}},
    "finalize": {},
    "save": {"format": "safetensors"},  # the output folder is the test's
    "export": {"to": "safetensors", "dtype": "bfloat16"},  # every exporter: test_every_exporter_...
    "tokens": {"method": "fastv", "keep": 0.5, "layer": 1},  # the tiny Llama has 2 blocks: layer 1 is the only one
    "shrink": {"target": "params=0.6", "candidates": 2, "distill": {"steps": 2, "batch_size": 2, "seqlen": 16}},
    "engine": {"rounds": 2, "threads": 1, "prompt_tokens": 8, "gen_tokens": 4, "text": None},  # after a GGUF export
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    fast = tiny_tokenizer()
    return write_tiny_folder(tmp_path_factory.mktemp("tiny"), tiny_model("llama", vocab_size=fast.vocab_size), fast)


def _fields(kind, folder, tmp_path):
    fields = dict(EXAMPLES[kind])
    if kind == "load":
        fields["model"] = str(folder / "model")
    if kind == "calibrate":
        fields["source"] = str(folder / "texts")
    if kind == "save":
        fields["out"] = str(tmp_path / "saved")
    if kind == "export":
        fields["out"] = str(tmp_path / "exported")
    if kind == "shrink":
        fields["distill"] = {**fields["distill"], "text": str(folder / "texts")}
    return fields


def test_every_stage_kind_has_an_example():
    assert sorted(EXAMPLES) == STAGES.names()


def _workspace(kind, folder):
    """A workspace holding what the stage reads: a tiny language model (an MoE one for experts, a loaded one
    for the stages that need a tokenizer), calibration windows, or a small classifier with its data."""
    from prunekit.experts import tiny_moe
    from prunekit.pipeline import LoadConfig
    from prunekit.pipeline.lm import _run_load

    ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    if kind in ("finetune", "data"):
        torch.manual_seed(0)

        def model_fn():
            return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        data = torch.utils.data.TensorDataset(torch.randn(256, 8), torch.randint(0, 3, (256,)))
        return Workspace(model=model_fn(), train_set=lambda seed: data, model_fn=model_fn, progress=False)
    if kind == "experts":
        return Workspace(model=tiny_moe("qwen3_moe"), calibration=ids, progress=False)
    ws = Workspace(progress=False, calibration=ids)
    if kind != "load":
        _run_load(ws, LoadConfig(model=str(folder / "model")))
    if kind in ("finalize", "save", "export"):
        run_stages([parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5})], ws)
    return ws


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_stage_runs_on_a_tiny_model_and_its_config_round_trips(kind, folder, tmp_path, monkeypatch):
    fields = _fields(kind, folder, tmp_path)
    parsed = parse_stage({"stage": kind, **fields})
    again = parse_stage(yaml.safe_load(yaml.safe_dump(stage_dict(*parsed))))
    assert again == parsed and type(parsed[1]).from_yaml(parsed[1].to_yaml()) == parsed[1]
    ws = _workspace(kind, folder)
    params = None if ws.model is None else sum(p.numel() for p in ws.model.parameters())
    before = []
    if kind == "engine":  # it measures a GGUF export in llama.cpp: here llama-bench's figures are made up
        from prunekit.metrics.engine_speed import BenchRun

        monkeypatch.setattr("prunekit.export.llama_cpp.llama_cpp_tool", lambda name: "/bin/true")
        monkeypatch.setattr("prunekit.metrics.engine_speed.run_llama_bench",
                            lambda path, **kw: BenchRun({"prefill": 400.0, "decode": 40.0}, 1.0, 1.0, 1))
        before = [parse_stage({"stage": "export", "to": "gguf", "quant": "f16", "out": str(tmp_path / "m.gguf")})]
    run_stages([*before, parsed], ws)
    record = ws.records[-1]
    assert record["stage"] == kind
    if kind == "load":
        assert ws.model is not None and ws.tokenizer is not None and record["model"] == fields["model"]
    elif kind == "calibrate":
        assert tuple(ws.calibration.shape) == (4, 16) and ws.meta["calibration"]["seed"] == 1
    elif kind == "measure":
        assert ws.columns["before"]["perplexity"] > 1 and ws.columns["before"]["macs_128_tokens"] > 0
    elif kind == "prune":
        w = ws.model.model.layers[0].mlp.up_proj.weight
        assert float((w == 0).float().mean()) == 0.5 and record["sparsity"] == pytest.approx(0.5)
    elif kind in ("structured", "slice", "experts", "loraprune"):
        assert sum(p.numel() for p in ws.model.parameters()) < params and ws.headlines
    elif kind == "recover":
        assert record["steps"] == 2 and record["mode"] == "bias_norm"
    elif kind == "finetune":
        assert record["steps"] >= 1 and record["final_loss"] > 0
    elif kind == "data":
        assert (record["kept"], record["of"]) == (128, 256) and len(ws.state["data selection"]["indices"]) == 128
    elif kind == "finalize":
        assert record["tensors"] > 0 and get_mask(ws.model.model.layers[0].mlp.up_proj) is None
    elif kind == "save":
        from transformers import AutoModelForCausalLM

        w = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").model.layers[0].mlp.up_proj.weight
        assert float((w == 0).float().mean()) == 0.5 and (tmp_path / "saved" / "prunekit.json").is_file()
    elif kind == "tokens":
        from prunekit.tokens import is_patched, unpatch_

        ids = ws.calibration[:1]
        with torch.no_grad():
            pruned = ws.model(ids).logits
        # block 0 caches the whole prompt, block 1 half of it (the last token always kept)
        assert is_patched(ws.model) and record["method"] == "fastv" and record["kv_cache_fraction"] == 0.75
        assert pruned.shape[1] == 8 and sum(p.numel() for p in ws.model.parameters()) == params
        unpatch_(ws.model)
        with torch.no_grad():
            assert ws.model(ids).logits.shape[1] == 16 and not is_patched(ws.model)
    elif kind == "shrink":
        from prunekit.shrink.budget import non_embedding_params

        shrunk = record["shrink"]
        assert shrunk["non_embedding_after"] == non_embedding_params(ws.model) <= 0.6 * shrunk["non_embedding_before"]
        assert len(shrunk["candidates"]) == 2 and all(c["loss"] > 0 for c in shrunk["candidates"])
        assert record["distill"]["steps"] == 2 and record["distill"]["tokens"] == 2 * 2 * 16
        assert record["distill"]["text"] == fields["distill"]["text"] and ws.meta["method"] == "shrink"
    elif kind == "export":
        from transformers import AutoModelForCausalLM

        back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
        w = back.model.layers[0].mlp.up_proj.weight
        assert w.dtype == torch.bfloat16 and float((w == 0).float().mean()) == 0.5
        assert record["to"] == "safetensors" and record["bytes"] > 0 and record["dtype"] == "bfloat16"
    elif kind == "engine":
        assert record["figures"]["llama_cpp_decode_tokens_per_s"] == pytest.approx(40.0)
        assert record["file"] == str(tmp_path / "m.gguf") and ws.meta["engine"]["figures"]["llama_cpp_quant"] == "f16"


def _cli_config(kind, fields, folder, tmp_path):
    """The config the command line builds for ``kind`` from the options that say ``fields``."""
    entry = STAGES.get(kind)
    argv = ["prune", "--model", str(folder / "model"), "--out", str(tmp_path / "cli"), "--quiet"]
    by_field = {fld: flag for flag, fld in entry.flags.items()}
    for fld, value in fields.items():
        if kind == "experts" and fld == "method":
            argv += ["--merge-experts"] if value == "expert_merge" else []
        elif fld in by_field and by_field[fld] not in argv:
            argv += [by_field[fld]] + ([] if value is True else [str(value)])
    if entry.trigger and entry.trigger not in argv:
        argv += [entry.trigger, str(fields.get(entry.flags[entry.trigger]))]
    if kind == "prune":
        argv += ["--calib", "none"]  # magnitude needs no calibration
    stages = build_stages(build_parser().parse_args(argv))
    return next(cfg for k, cfg in stages if k == kind)


@pytest.mark.parametrize("kind", [k for k in sorted(EXAMPLES) if STAGES.get(k).flags and k != "measure"])
def test_the_command_line_builds_the_same_config_as_python(kind, folder, tmp_path):
    fields = _fields(kind, folder, tmp_path)
    if kind == "save":
        fields["out"] = str(tmp_path / "cli")
    python = parse_stage({"stage": kind, **fields})[1]
    assert _cli_config(kind, fields, folder, tmp_path) == python


def test_the_command_line_measures_as_python_would(folder, tmp_path):
    argv = ["prune", "--model", str(folder / "model"), "--calib", str(folder / "texts"), "--ppl", str(folder / "texts"),
            "--eval-windows", "2", "--seqlen", "16", "--out", str(tmp_path / "o"), "--structured", "neurons"]
    measures = [cfg for k, cfg in build_stages(build_parser().parse_args(argv)) if k == "measure"]
    expected = [parse_stage({"stage": "measure", "source": str(folder / "texts"), "windows": 2, "seqlen": 16,
                             "macs": True, "label": label, "key": key, "timing": timing})[1]
                for label, key, timing in (("before", "before", "reference"), ("after", "after", "compare"))]
    assert measures == expected


# ------------------------------------------------------------------------------------ every structured unit

# what half of each unit leaves of the tiny Llama (2 blocks, 4 query heads in 2 GQA groups of 16, 128 neurons):
# (config field, value before, value after)
UNIT_EXAMPLES = {"heads": [("num_attention_heads", 4, 2), ("num_key_value_heads", 2, 1)],
                 "neurons": [("intermediate_size", 128, 64)],
                 "layers": [("num_hidden_layers", 2, 1)]}


def test_every_structured_unit_has_an_example():
    assert sorted(UNIT_EXAMPLES) == TRANSFORMER_UNITS.names()


@pytest.mark.parametrize("what", TRANSFORMER_UNITS.names())
def test_every_structured_unit_runs_as_a_stage_and_the_model_reloads(what, folder, tmp_path):
    from transformers import AutoModelForCausalLM

    fields = {"what": what, "sparsity": 0.5}
    stage = parse_stage({"stage": "structured", **fields})
    assert parse_stage(yaml.safe_load(yaml.safe_dump(stage_dict(*stage)))) == stage
    assert _cli_config("structured", fields, folder, tmp_path) == stage[1]
    ws = _workspace("structured", folder)
    config = ws.model.config
    assert [getattr(config, name) for name, _, _ in UNIT_EXAMPLES[what]] == [b for _, b, _ in UNIT_EXAMPLES[what]]
    run_stages([stage], ws)
    record = ws.records[-1]
    assert [getattr(config, name) for name, _, _ in UNIT_EXAMPLES[what]] == [a for _, _, a in UNIT_EXAMPLES[what]]
    assert record["params_after"] == sum(p.numel() for p in ws.model.parameters()) < record["params_before"]
    assert record["reloadable"] and ws.headlines
    ws.model.save_pretrained(tmp_path / "m")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = ws.calibration[:1]
    with torch.no_grad():
        # the same float32 weights and the same kernels in one process: equal up to float32 rounding
        assert torch.allclose(back(ids).logits, ws.model.eval()(ids).logits, atol=1e-5)


def test_the_structured_stage_removes_any_networks_channels_as_structured_prune_does():
    import copy

    from prunekit.structured import prune_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    x = torch.randn(2, 3, 8, 8)
    stage = parse_stage({"stage": "structured", "what": "channels", "sparsity": 0.5, "ignore": ["7"]})
    assert parse_stage(yaml.safe_load(yaml.safe_dump(stage_dict(*stage)))) == stage
    direct = copy.deepcopy(model)
    prune_(direct, x, sparsity=0.5, ignore=["7"])
    ws = run_stages([stage], Workspace(model=model, example_inputs=x, progress=False))
    params = sum(p.numel() for p in model.parameters())
    assert ws.records[0]["params_after"] == params == sum(p.numel() for p in direct.parameters())
    assert model[0].out_channels == direct[0].out_channels == 8 and model[7].out_features == 4
    with pytest.raises(ValueError, match="records the model's graph on example inputs"):
        run_stages([stage], Workspace(model=model, progress=False))


def test_structured_layers_without_calibration_is_refused_before_loading():
    from prunekit.pipeline import check_stages

    stages = [parse_stage({"stage": "structured", "what": "layers", "sparsity": 0.5})]
    with pytest.raises(ValueError, match="ranks blocks on calibration text"):
        check_stages(stages, calibrated=False)
    check_stages(stages, calibrated=True)


# ---------------------------------------------------------------------------------------- every exporter

EXPORT_EXAMPLES = {"safetensors": ({"dtype": "float32"}, "exported"), "compressed": ({}, "exported"),
                   "gguf": ({"quant": "q8_0"}, "exported.gguf")}


def test_every_exporter_has_an_example():
    assert sorted(EXPORT_EXAMPLES) == EXPORTERS.names()


@pytest.mark.parametrize("to", EXPORTERS.names())
def test_every_exporter_runs_as_a_stage_after_pruning_and_round_trips(to, folder, tmp_path):
    from prunekit.export import load_artifact
    from prunekit.export.save import compressed_reader

    fields, name = EXPORT_EXAMPLES[to]
    out = tmp_path / name
    stage = parse_stage({"stage": "export", "to": to, "out": str(out), **fields})
    assert parse_stage(yaml.safe_load(yaml.safe_dump(stage_dict(*stage)))) == stage
    assert type(stage[1]).from_yaml(stage[1].to_yaml()) == stage[1] == pickle.loads(pickle.dumps(stage[1]))
    ws = _workspace("load", folder)
    from prunekit.pipeline import LoadConfig
    from prunekit.pipeline.lm import _run_load

    _run_load(ws, LoadConfig(model=str(folder / "model")))
    up = ws.model.model.layers[0].mlp.up_proj
    dense = up.weight.detach().clone()
    stages = [parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5, "pattern": "2:4"}), stage]
    if to == "compressed" and compressed_reader() is None:
        # nothing here reads the sparse layouts back: refused before the prune stage changes the model
        with pytest.raises(ValueError, match="compressed-tensors <= 0.14"):
            run_stages(stages, ws)
        assert torch.equal(up.weight, dense) and not out.exists() and not ws.records
        return
    run_stages(stages, ws)
    record = ws.records[-1]
    assert record["stage"] == "export" and record["to"] == to and record["path"] == str(out)
    assert record["bytes"] == (out.stat().st_size if to == "gguf" else record["bytes"]) > 0
    back = load_artifact(out).model.model.layers[0].mlp.up_proj.weight.float()
    # the pruned half stays exactly zero (zero is exact in every format); q8_0 may round further tiny weights
    # to zero, float32 safetensors keeps every kept weight exactly
    zeros = float((back == 0).float().mean())
    assert zeros >= 0.5 if to == "gguf" else zeros == 0.5
    if to == "safetensors":
        assert torch.equal(back, get_mask(up).to(back.dtype) * dense)


def test_an_export_stage_is_refused_before_any_work_when_its_out_is_the_model(folder, tmp_path):
    ws = _workspace("load", folder)
    from prunekit.pipeline import LoadConfig
    from prunekit.pipeline.lm import _run_load

    _run_load(ws, LoadConfig(model=str(folder / "model")))
    dense = ws.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    stages = [parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5}),
              parse_stage({"stage": "export", "to": "safetensors", "out": str(folder), "overwrite": True})]
    with pytest.raises(ValueError, match="holds the input the model"):
        run_stages(stages, ws)
    assert torch.equal(ws.model.model.layers[0].mlp.up_proj.weight, dense) and (folder / "model").is_dir()


def test_a_recipe_lists_an_export_stage_but_not_a_save_stage(tmp_path):
    from prunekit.core.config import ConfigError
    from prunekit.recipe import parse_stage as recipe_stage

    kind, cfg = recipe_stage({"stage": "export", "to": "gguf", "quant": "q4_0", "out": str(tmp_path / "m.gguf")})
    assert kind == "export" and (cfg.to, cfg.quant, cfg.overwrite) == ("gguf", "q4_0", False)
    with pytest.raises(ConfigError, match="task's part in a recipe.*export"):
        recipe_stage({"stage": "save", "out": str(tmp_path / "s")})


def test_a_tokens_stage_the_model_cannot_take_is_refused_before_any_work(folder):
    ws = _workspace("tokens", folder)
    dense = ws.model.model.layers[0].mlp.up_proj.weight.detach().clone()
    stages = [parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5}),
              parse_stage({"stage": "tokens", "method": "fastv", "layer": 2})]  # only 2 blocks: layer 1 at most
    with pytest.raises(ValueError, match="layer must be in 1 … 1"):
        run_stages(stages, ws)
    from prunekit.tokens import is_patched

    assert torch.equal(ws.model.model.layers[0].mlp.up_proj.weight, dense) and not is_patched(ws.model)
    two = [parse_stage({"stage": "tokens", "method": "fastv", "layer": 1})] * 2
    with pytest.raises(ValueError, match="one token patch"):
        run_stages(two, ws)


def test_two_outputs_at_one_path_and_compressed_after_removal_are_refused_before_loading(tmp_path):
    two = [parse_stage({"stage": "export", "to": "gguf", "out": str(tmp_path / "a.gguf")}),
           parse_stage({"stage": "export", "to": "gguf", "out": str(tmp_path / "a.gguf"), "overwrite": True})]
    with pytest.raises(ValueError, match="are the same path"):
        run_stages(two, Workspace(progress=False))
    removed = [parse_stage({"stage": "structured", "what": "heads", "sparsity": 0.5}),
               parse_stage({"stage": "export", "to": "compressed", "out": str(tmp_path / "c")})]
    with pytest.raises(ValueError, match="stage structured removes weights"):
        run_stages(removed, Workspace(progress=False))
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ every method


def _method_workspace(name):
    """A tiny Llama with calibration windows for the calibrated methods; a small classifier with data, a loss
    and example inputs for the others (data-driven and data-free criteria)."""
    if METHODS.config(name).needs_calibration:
        ids = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
        return Workspace(model=tiny_model("llama", hidden=64, layers=2), calibration=ids, progress=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    data = [(torch.randn(16, 8), torch.randint(0, 3, (16,))) for _ in range(2)]
    return Workspace(model=model, data=data, loss_fn=F.cross_entropy, example_inputs=torch.randn(2, 8), progress=False)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_as_a_stage_and_its_cli_form_matches(name, folder, tmp_path):
    kind, cfg = parse_stage({"stage": "prune", "method": name, "sparsity": 0.5})
    assert parse_stage(yaml.safe_load(yaml.safe_dump(stage_dict(kind, cfg)))) == (kind, cfg)
    ws = run_stages([(kind, cfg)], _method_workspace(name))
    # per-layer counts are exact; over the scope the total is within one weight per layer of the target
    assert ws.records[0]["sparsity"] == pytest.approx(0.5, abs=0.01)
    argv = ["prune", "--model", str(folder / "model"), "--method", name, "--sparsity", "0.5", "--out",
            str(tmp_path / "o"), "--calib", str(folder / "texts")]
    cli = dict(build_stages(build_parser().parse_args(argv)))["prune"]
    assert cli == cfg
