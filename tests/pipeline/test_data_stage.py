"""The data stage: score → select over prunekit.data, from Python and from a recipe; the finetune after it
trains on the kept examples."""

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.core.config import ConfigError
from prunekit.data import concept_clusters, embeddings_of, feature_extractor, score, select
from prunekit.pipeline import Workspace, parse_stage, run_stages

N = 96  # examples of the tiny data set: 8 features, 3 classes


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # a learnable rule, three classes
    return torch.utils.data.TensorDataset(x, y)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.features(x))


def _workspace(data, seed=0):
    torch.manual_seed(0)
    return Workspace(model=Net(), train_set=lambda s: data, model_fn=Net, seed=seed, progress=False)


# stage fields → how prunekit.data is called directly for the same selection
CASES = {
    "el2n-ccs": {"score": "el2n", "epochs": 1, "n_models": 2, "batch_size": 32,
                 "select": {"strategy": "ccs", "keep": 0.5, "beta": 0.1, "bins": 5}},
    "grand-hardest": {"score": "grand", "epochs": 0, "select": {"strategy": "hardest", "keep": 0.25}},
    "forgetting-easiest": {"score": "forgetting", "epochs": 2, "batch_size": 32,
                           "select": {"strategy": "easiest", "keep": 0.5, "seed": 4}},
    "loss-class_balanced": {"score": "loss", "epochs": 1, "batch_size": 32,
                            "select": {"strategy": "class_balanced", "keep": 0.5}},
    "prototypes-hardest": {"score": "prototypes", "n_clusters": 4, "select": {"strategy": "hardest", "keep": 0.3}},
    "density-density": {"score": "density", "n_clusters": 4, "select": {"strategy": "density", "keep": 0.4}},
    "random": {"score": "none", "select": {"strategy": "random", "keep": 0.3, "seed": 7}},
}


def _direct(fields, data, model, seed):
    """The indices prunekit.data gives for ``fields``, called as a user would."""
    sel = fields["select"]
    options = {k: v for k, v in sel.items() if k not in ("strategy", "keep")}
    labels = None
    if fields["score"] == "none":
        scores = np.zeros(len(data))
    elif fields["score"] in ("prototypes", "density"):
        x = embeddings_of(data, feature_extractor(model))
        if fields["score"] == "density":
            clusters = concept_clusters(x, n_clusters=fields["n_clusters"], seed=seed)
            scores, labels = clusters.per_example(), clusters.labels
        else:
            scores = score(x, "prototypes", n_clusters=fields["n_clusters"], seed=seed)
    else:
        scores = score(data, fields["score"], model_fn=Net, epochs=fields.get("epochs", 1.0),
                       n_models=fields.get("n_models", 1), batch_size=fields.get("batch_size", 128), seed=seed,
                       progress=False)
    if sel["strategy"] == "class_balanced":
        labels = data.tensors[1].numpy()
    return select(scores, keep=sel["keep"], strategy=sel["strategy"], labels=labels, **options)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_data_stage_keeps_the_same_indices_as_prunekit_data(case):
    data = _data()
    fields = CASES[case]
    stage = parse_stage({"stage": "data", **fields})
    ws = _workspace(data, seed=1)
    run_stages([stage], ws)
    got = ws.state["data selection"]["indices"]
    expected = _direct(fields, data, ws.model, seed=1)
    # the same seeded proxies and the same float64 scores: the selection is the same set of indices
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    record = ws.records[-1]
    assert record["stage"] == "data" and record["kept"] == len(expected) == round(fields["select"]["keep"] * N)
    assert record["of"] == N and "recorded, not trained on" in ws.headlines[-1]


def test_a_finetune_after_the_data_stage_trains_on_the_kept_examples_only():
    data = _data()
    stages = [parse_stage({"stage": "data", "score": "el2n", "epochs": 0, "select": {"strategy": "hardest", "keep": 0.5}}),
              parse_stage({"stage": "finetune", "epochs": 1, "batch_size": 16})]
    ws = run_stages(stages, _workspace(data))
    data_rec, fit_rec = ws.records
    # one epoch over the 48 kept examples in full batches of 16: 3 steps (the whole set would take 6)
    assert data_rec["kept"] == 48 and fit_rec["examples"] == 48 and fit_rec["steps"] == 3
    assert "not trained on" not in ws.headlines[0]
    from prunekit.pipeline.data import trained_on_selection

    sampler = trained_on_selection(ws)  # what the finetune drew its batches from: the kept indices, reshuffled
    assert sorted(sampler) == ws.state["data selection"]["indices"].tolist()


def test_rs2_draws_a_fresh_random_subset_each_epoch():
    data = _data()
    stages = [parse_stage({"stage": "data", "score": "none", "sampler": "rs2",
                           "select": {"strategy": "random", "keep": 0.25, "seed": 2}}),
              parse_stage({"stage": "finetune", "epochs": 2, "batch_size": 8})]
    ws = run_stages(stages, _workspace(data))
    from prunekit.data import RS2Sampler
    from prunekit.pipeline.data import trained_on_selection

    sampler = trained_on_selection(ws)
    assert isinstance(sampler, RS2Sampler) and (sampler.keep, sampler.seed) == (0.25, 2)
    first, second = sampler.subset(0), sampler.subset(1)
    assert len(first) == 24 and not set(first) & set(second)  # RS2 walks one permutation: no repeat
    assert ws.records[1]["examples"] == 24 and ws.records[1]["steps"] == 6  # 2 epochs of 3 batches


def test_a_data_stage_that_cannot_work_is_refused_before_the_model_changes():
    data = _data()
    ws = _workspace(data)
    dense = ws.model.head.weight.detach().clone()
    prune = parse_stage({"stage": "prune", "method": "magnitude", "sparsity": 0.5})
    small = [prune, parse_stage({"stage": "data", "score": "none", "select": {"strategy": "random", "keep": 0.1}}),
             parse_stage({"stage": "finetune", "batch_size": 32})]
    with pytest.raises(ValueError, match="keeps 10 examples, fewer than one finetune batch of 32"):
        run_stages(small, ws)
    no_proxy = Workspace(model=ws.model, train_set=lambda s: data, progress=False)
    with pytest.raises(ValueError, match="trains proxy models: the workspace needs model_fn"):
        run_stages([prune, parse_stage({"stage": "data", "score": "el2n"})], no_proxy)
    with pytest.raises(ValueError, match="needs a classification task"):
        run_stages([prune, parse_stage({"stage": "data"})], Workspace(model=ws.model, progress=False))
    assert torch.equal(ws.model.head.weight, dense) and not ws.records


@pytest.mark.parametrize("fields, match", [
    ({"score": "none", "select": {"strategy": "ccs", "keep": 0.3}}, "strategy ccs ranks scores"),
    ({"select": {"strategy": "random", "keep": 0.3}}, "strategy random ignores the scores"),
    ({"score": "none", "sampler": "rs2", "select": {"strategy": "ccs", "keep": 0.3}}, "sampler rs2"),
    ({"score": "el2n", "select": {"strategy": "density", "keep": 0.3}}, "use it with score: density"),
    ({"score": "forgetting", "epochs": 0.5}, "whole epochs"),
    ({"select": {"strategy": "ccs", "keep": 0.3, "bta": 1}}, "unknown option 'bta' .did you mean 'beta'"),
    ({"select": {"keep": 1.5}}, r"keep must be a number in \(0, 1\]"),
])
def test_a_bad_data_stage_is_a_config_error_naming_the_field(fields, match):
    with pytest.raises(ConfigError, match=match):
        parse_stage({"stage": "data", **fields})


def test_the_stage_offers_every_score_of_prunekit_data():
    from prunekit.data import SCORES
    from prunekit.pipeline.data import SCORE_NAMES

    assert SCORE_NAMES == (*SCORES, "none")


def test_two_data_stages_are_refused():
    stage = parse_stage({"stage": "data", "score": "none", "select": {"strategy": "random", "keep": 0.5}})
    with pytest.raises(ValueError, match="one data stage"):
        run_stages([stage, stage], Workspace(progress=False))


RECIPE = """name: tiny-data
task: {task: classify, model: mlp, data: digits, train_size: 300, epochs: 1, lr: 0.1, batch_size: 64, test_size: 100}
stages:
  - {stage: data, score: el2n, epochs: 0, batch_size: 64, select: {strategy: hardest, keep: 0.5}}
  - {stage: finetune, epochs: 1, batch_size: 50}
sweep:
  data.select: [{strategy: hardest, keep: 0.5}, {strategy: class_balanced, keep: 0.5}]
measure: [accuracy]
baseline: false
"""


def test_a_recipe_runs_the_data_stage_and_stores_what_it_kept(tmp_path):
    from prunekit.recipe import Recipe

    runs = pk.bench.run(Recipe.from_yaml(RECIPE), db=str(tmp_path / "r.db"), progress=False, say=lambda t: None)
    assert [r.status for r in runs] == ["ok", "ok"], [r.error for r in runs]
    for r, strategy in zip(runs, ("hardest", "class_balanced")):
        data_rec, fit_rec = r.figures["stages"]
        assert (data_rec["stage"], data_rec["strategy"], data_rec["kept"], data_rec["of"]) == ("data", strategy, 150, 300)
        assert fit_rec["examples"] == 150 and fit_rec["steps"] == 3 and 0 < r.figures["accuracy"] <= 1
    assert runs[0].figures["stages"][0]["indices_hash"] != runs[1].figures["stages"][0]["indices_hash"]
