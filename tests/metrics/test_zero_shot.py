"""Zero-shot evaluation through lm-eval, offline, on a task file the test writes."""

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from prunekit.metrics.zero_shot import zero_shot  # noqa: E402
from prunekit.models.hf import tiny_model  # noqa: E402

DOCS = [{"question": "The sky is", "choices": [" blue", " green"], "label": 0},
        {"question": "Fire is", "choices": [" cold", " hot"], "label": 1},
        {"question": "Grass is", "choices": [" green", " purple"], "label": 0},
        {"question": "Snow is", "choices": [" white", " black"], "label": 0}]


def _tokenizer():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({chr(i): i for i in range(32, 127)} | {"[UNK]": 0}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[UNK]", pad_token="[UNK]")


def _task(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS))
    (tmp_path / "tiny.yaml").write_text(f"""task: prunekit_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return str(tmp_path)


def _own_accuracy(model, tok):
    right = 0
    for d in DOCS:
        ctx = tok(d["question"]).input_ids
        lls = []
        for c in d["choices"]:
            ids = torch.tensor([ctx + tok(c).input_ids])
            logp = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
            cont = ids[0, len(ctx):]
            lls.append(float(logp[len(ctx) - 1:].gather(-1, cont[:, None]).sum()))
        right += int(max(range(len(lls)), key=lls.__getitem__) == d["label"])
    return right / len(DOCS)


def test_zero_shot_matches_a_direct_computation(tmp_path):
    model, tok = tiny_model("llama", vocab_size=128).eval(), _tokenizer()
    out = zero_shot(model, tok, ["prunekit_tiny"], include_path=_task(tmp_path))
    with torch.no_grad():
        assert out["tasks"]["prunekit_tiny"]["acc"] == pytest.approx(_own_accuracy(model, tok))
    assert out["lm_eval_version"] and out["samples"]["prunekit_tiny"] == 4


@pytest.mark.slow  # indexes lm-eval's thousands of built-in task files before it can say "unknown"
def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['no_such_task'\]"):
        zero_shot(tiny_model("llama"), _tokenizer(), ["no_such_task"], include_path=_task(tmp_path))
