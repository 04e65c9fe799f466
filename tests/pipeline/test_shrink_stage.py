"""The shrink stage: a recipe's shrink → export runs, and bad input (an unreachable target, a family the shrink
cannot follow, distillation with no text, a stage order the plan cannot see) is refused before any stage changes
the model or writes a file."""

import pytest
import torch

from prunekit.models.tiny import tiny_model, tiny_tokenizer, write_tiny_folder
from prunekit.pipeline import Workspace, check_stages, parse_stage, run_stages


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    fast = tiny_tokenizer()
    return write_tiny_folder(tmp_path_factory.mktemp("tiny"), tiny_model("llama", vocab_size=fast.vocab_size), fast)


def _loaded(folder, calibrate=True):
    ws = Workspace(progress=False)
    stages = [parse_stage({"stage": "load", "model": str(folder / "model")})]
    if calibrate:
        stages.append(parse_stage({"stage": "calibrate", "source": str(folder / "texts"), "nsamples": 4,
                                   "seqlen": 16}))
    else:
        ws.calibration = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    return run_stages(stages, ws)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before):
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_a_recipe_shrinks_distils_on_the_calibration_source_and_exports_gguf(folder, tmp_path):
    from prunekit.export import load_artifact
    from prunekit.recipe import parse_stage as recipe_stage

    ws = _loaded(folder)
    out = tmp_path / "shrunk.gguf"
    stages = [recipe_stage({"stage": "shrink", "target": "params=0.6", "axes": ["heads", "neurons", "depth"],
                            "candidates": 1, "distill": {"steps": 2, "batch_size": 2, "seqlen": 16}}),
              recipe_stage({"stage": "export", "to": "gguf", "quant": "q8_0", "out": str(out)})]
    run_stages(stages, ws)
    shrink, export = ws.records[-2], ws.records[-1]
    assert shrink["distill"]["text"] == str(folder / "texts")  # no distill.text: the calibrate stage's source
    assert shrink["shrink"]["shape_after"]["hidden"] == 64  # hidden was not among the axes
    assert export["path"] == str(out) and out.stat().st_size == export["bytes"] > 0
    back = load_artifact(out).model
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in ws.model.parameters())


@pytest.mark.parametrize("fields, match", [
    ({"target": "params=0.01"}, "cannot be reached"),
    ({"target": "params=0.01", "search": "per-layer"}, "cannot be reached"),
    ({"distill": {"steps": 2}}, "distillation needs text and none is given: set distill.text"),
    ({"distill": {"steps": 2, "seqlen": 1_000_000, "text": "TEXTS"}}, "fewer than 1000000 tokens"),
    ({"distill": {"steps": 2, "objective": "next_token"}}, "distillation needs text and none is given"),
    ({"schedule": "adapt", "rounds": 2, "distill": {"steps": 2}}, "distillation needs text and none is given"),
])
def test_bad_input_is_refused_before_any_stage_changes_the_model(folder, tmp_path, fields, match):
    ws = _loaded(folder, calibrate=False)  # no calibrate stage: no calibration source for distillation to read
    before = _weights(ws.model)
    if "distill" in fields and fields["distill"].get("text") == "TEXTS":
        fields = {**fields, "distill": {**fields["distill"], "text": str(folder / "texts")}}
    stages = [parse_stage({"stage": "shrink", **fields}),
              parse_stage({"stage": "export", "to": "gguf", "out": str(tmp_path / "m.gguf")})]
    with pytest.raises(ValueError, match=match):
        run_stages(stages, ws)
    assert _unchanged(ws.model, before) and not any(tmp_path.iterdir()) and not ws.records[2:]


def test_a_family_the_shrink_cannot_follow_is_refused_before_any_change(tmp_path):
    tok = tiny_tokenizer()
    root = write_tiny_folder(tmp_path / "gpt2", tiny_model("gpt2", vocab_size=tok.vocab_size), tok)
    ws = _loaded(root)
    before = _weights(ws.model)
    with pytest.raises(ValueError, match="supports the Hugging Face decoders"):
        run_stages([parse_stage({"stage": "shrink", "target": "params=0.6"})], ws)
    assert _unchanged(ws.model, before)


@pytest.mark.parametrize("stages, match", [
    ([{"stage": "prune", "method": "magnitude", "sparsity": 0.5}, {"stage": "shrink"}],
     "must come before stage prune"),
    ([{"stage": "shrink", "target": "speed=1.5", "search": "uniform"}], "searched per layer"),
    ([{"stage": "shrink", "axes": ["hidden"], "distill": {"hidden_weight": 1.0, "text": "pydocs"}}],
     "hidden axis cuts"),
    ([{"stage": "shrink", "search": "per-layer", "axes": ["hidden"]}], "per-layer search cuts heads, neurons, depth"),
    ([{"stage": "shrink", "speed_engine": "llama.cpp"}], "target params=0.6 counts parameters"),
    ([{"stage": "shrink", "target": "speed=1.5", "speed_quant": "f16"}], "set speed_engine llama.cpp"),
    ([{"stage": "shrink", "distill": {"objective": "next_token", "ce_weight": 0.5, "text": "pydocs"}}],
     "objective next_token trains on that cross-entropy alone"),
    ([{"stage": "shrink", "rounds": 2}], "rounds count the cuts of schedule adapt"),
    ([{"stage": "shrink", "schedule": "adapt", "search": "uniform", "distill": {"steps": 4}}],
     "schedule adapt cuts per layer in every round"),
    ([{"stage": "shrink", "schedule": "adapt", "target": "speed=1.5", "distill": {"steps": 4}}],
     "speed= is measured on the model as it is"),
    ([{"stage": "shrink", "schedule": "adapt"}], "there is no distill block"),
    ([{"stage": "shrink", "schedule": "adapt", "rounds": 3, "distill": {"steps": 2}}],
     "there is distill.steps 2: give a distill block with at least 3 steps"),
    ([{"stage": "shrink", "width_multiple": -256}], "width multiple must be a positive integer"),
])
def test_a_stage_list_that_cannot_run_is_refused_before_loading(stages, match):
    parsed = [parse_stage(s) for s in stages]
    with pytest.raises(ValueError, match=match):
        check_stages(parsed, calibrated=True)


def test_a_lora_rank_of_zero_is_refused_when_parsed():
    from prunekit.core.config import ConfigError

    with pytest.raises(ConfigError, match="lora_rank"):
        parse_stage({"stage": "shrink", "distill": {"train": "lora", "lora_rank": 0}})


def test_adapt_schedule_with_next_token_training_cuts_in_rounds_without_a_teacher(folder, monkeypatch):
    import math

    import prunekit.pipeline.shrink as stage
    from prunekit.shrink.budget import non_embedding_params

    ws = _loaded(folder)
    dense = non_embedding_params(ws.model)

    real = stage.copy.deepcopy

    def no_model_copy(x, *a, **k):
        if isinstance(x, torch.nn.Module):
            raise AssertionError("plain next-token training copied the model as a teacher it never reads")
        return real(x, *a, **k)

    monkeypatch.setattr(stage.copy, "deepcopy", no_model_copy)
    run_stages([parse_stage({"stage": "shrink", "schedule": "adapt", "rounds": 2, "score_windows": 2,
                             "distill": {"steps": 3, "batch_size": 2, "seqlen": 16, "objective": "next_token"}})], ws)
    record = ws.records[-1]
    assert record["search"] == "per-layer" and record["schedule"] == "adapt"  # search auto: per layer for adapt
    rounds = record["shrink"]["rounds"]
    assert [r["target"] for r in rounds] == ["params=0.8000", "params=0.6000"]
    assert [r["distill"]["steps"] for r in rounds] == [2, 1]  # 3 steps split over 2 rounds, the first gets the extra
    assert record["distill"]["tokens"] == 3 * 2 * 16 and record["distill"]["text"] == str(folder / "texts")
    assert record["shrink"]["non_embedding_before"] == dense
    assert non_embedding_params(ws.model) == record["shrink"]["non_embedding_after"] <= math.floor(0.6 * dense)
    assert ws.meta["shrink"] == record["shrink"]


def test_shrink_needs_calibration_text():
    with pytest.raises(ValueError, match=r"stage 0 \(shrink\) ranks heads, neurons, channels and blocks"):
        check_stages([parse_stage({"stage": "shrink"})], calibrated=False)


def test_the_distillation_seed_is_the_runs_unless_set():
    from prunekit.pipeline.shrink import _distill_config

    cfg = parse_stage({"stage": "shrink", "distill": {"steps": 3}})[1]
    assert cfg.distill.seed is None and _distill_config(Workspace(seed=7), cfg).seed == 7
    cfg = parse_stage({"stage": "shrink", "distill": {"steps": 3, "seed": 2}})[1]
    assert _distill_config(Workspace(seed=7), cfg).seed == 2


def test_the_width_multiple_follows_a_k_quant_speed_quant_unless_set():
    from prunekit.pipeline.shrink import width_multiple

    def cfg(**fields):
        return parse_stage({"stage": "shrink", "target": "speed=1.5", "speed_engine": "llama.cpp", **fields})[1]

    assert width_multiple(cfg()) == 32 and width_multiple(cfg(speed_quant="q4_K_M")) == 256
    assert width_multiple(cfg(speed_quant="q6_k", width_multiple=512)) == 512
    with pytest.raises(ValueError, match="shrink's width_multiple 64 leaves rows"):
        width_multiple(cfg(speed_quant="q6_k", width_multiple=64))
