import pytest
import torch

from prunekit.metrics.generation import generation_speed
from prunekit.models.hf import tiny_model


class Tok:
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, return_tensors=None):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=torch.tensor([[ord(c) % 128 for c in text]]))

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(65 + int(i) % 26) for i in ids)


def test_counts_exactly_the_new_tokens():
    speed = generation_speed(tiny_model("llama"), Tok(), "hello", new_tokens=7)
    assert speed.tokens == 7 and len(speed.text) == 7
    assert speed.seconds > 0 and speed.tokens_per_s == pytest.approx(7 / speed.seconds)


def test_new_tokens_must_be_positive():
    with pytest.raises(ValueError, match="new_tokens"):
        generation_speed(tiny_model("llama"), Tok(), new_tokens=0)


def test_compare_generation_interleaves_and_reports_spread():
    from prunekit.metrics.generation import compare_generation

    speeds, cmp = compare_generation({"dense": tiny_model("llama"), "pruned": tiny_model("llama")}, Tok(), "hello",
                                     new_tokens=4, min_rounds=3, max_rounds=3)
    assert set(speeds) == {"dense", "pruned"} and cmp.rounds == 3
    for s in speeds.values():
        assert s.tokens == 4 and s.prompt_tokens == 5 and s.runs == 3 and s.iqr_s >= 0
        assert set(s.to_dict()) >= {"tokens_per_s", "spread", "noisy", "why"}
    assert cmp.ratio("pruned", "dense").median > 0


def test_compare_generation_gives_each_model_its_own_tokenizer():
    from prunekit.metrics.generation import compare_generation

    class Short(Tok):  # another vocabulary: the same prompt in fewer ids
        def __call__(self, text, return_tensors=None):
            out = super().__call__(text)
            out.input_ids = out.input_ids[:, :2]
            return out

    speeds, _ = compare_generation({"dense": tiny_model("llama"), "trimmed": tiny_model("llama")},
                                   {"dense": Tok(), "trimmed": Short()}, "hello", new_tokens=3, min_rounds=1,
                                   max_rounds=1)
    assert speeds["dense"].prompt_tokens == 5 and speeds["trimmed"].prompt_tokens == 2
    assert speeds["dense"].tokens == speeds["trimmed"].tokens == 3
