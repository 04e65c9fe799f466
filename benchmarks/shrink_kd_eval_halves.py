"""Held-out perplexity of dense and the distilled student in transformers, two ways: every token of 32 windows of
512 (prunekit's eval), and only the second half of each window (what llama-perplexity scores)."""
import json, math, sys, torch
sys.path.insert(0, "/work/main/src")
import torch.nn.functional as F
from prunekit.datasets.text import eval_windows
from prunekit.models.hf import load_model
from prunekit.shrink.distill import load_student
torch.set_num_threads(2)
lm = load_model("smollm2-135m")
from transformers import AutoModelForCausalLM
student = AutoModelForCausalLM.from_pretrained("/work/runs/kd/work/student", dtype=torch.float32).eval()
w = eval_windows(lm.tokenizer, "pydocs", 32, 512, default=True, say=lambda t: None)
out = {}
for name, m in (("dense", lm.model.eval()), ("student", student)):
    nll_all = nll_half = 0.0; n_all = n_half = 0
    with torch.no_grad():
        for i in range(0, len(w), 4):
            b = w[i:i + 4]
            logits = m(input_ids=b).logits[:, :-1].float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="none").view(b.shape[0], -1)
            nll_all += nll.sum().item(); n_all += nll.numel()
            nll_half += nll[:, 255:].sum().item(); n_half += nll[:, 255:].numel()
    out[name] = {"all_tokens": math.exp(nll_all / n_all), "second_half": math.exp(nll_half / n_half)}
for k in ("all_tokens", "second_half"):
    out[f"ratio_{k}"] = out["student"][k] / out["dense"][k]
print(json.dumps(out, indent=1))
json.dump(out, open("/work/runs/kd/evalcheck.json", "w"), indent=1)
