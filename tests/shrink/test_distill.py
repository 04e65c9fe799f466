"""Logit distillation: the loss is the KL it claims to be, training lowers it, the text stream is deterministic,
and a run killed with SIGKILL resumes from its checkpoint to the same weights as a run never interrupted."""

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prunekit.models.tiny import tiny_model, tiny_tokenizer
from prunekit.shrink import prune_hidden_
from prunekit.shrink.distill import (
    DistillConfig, WindowStream, distill_, fingerprint, kd_loss, load_student, read_checkpoint,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_kd_loss_is_the_kl_of_the_softened_distributions():
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    assert kd_loss(t, t).item() == pytest.approx(0, abs=1e-6)
    T = 2.0
    p = F.softmax(t / T, -1)
    manual = (p * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    # float32 sums over 11 classes and 10 tokens: agreement to ~1e-6
    assert kd_loss(s, t, T).item() == pytest.approx(manual.item(), rel=1e-5)


def _pair():
    teacher = tiny_model("llama", layers=2, seed=0)
    student = tiny_model("llama", layers=2, seed=0)
    prune_hidden_(student, 48, importance="magnitude")
    return student, teacher


def test_distillation_lowers_the_kl_and_reports_its_cost():
    student, teacher = _pair()
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = kd_loss(student(windows).logits, teacher(windows).logits).item()
    report = distill_(student, teacher, windows, steps=30, batch_size=4, seqlen=16, lr=3e-3, progress=False)
    with torch.no_grad():
        after = kd_loss(student(windows).logits, teacher(windows).logits).item()
    assert after < 0.7 * before
    assert report.tokens == 30 * 4 * 16 and report.tokens_per_s > 0 and report.peak_rss_bytes > 2**20
    assert report.cpu_seconds > 0 and len(report.losses) == 30
    # the teacher is read under no_grad: its flags and mode are the caller's and stay as they were
    assert all(p.requires_grad for p in teacher.parameters())


def test_the_teacher_is_left_as_it_was_and_a_copy_of_it_can_be_trained_next():
    """A benchmark distilled two students from one dense model in one process: the first run froze the teacher's
    parameters, so the second student (a copy of the dense model) had nothing to train."""
    import copy

    student, teacher = _pair()
    teacher.train()
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    distill_(student, teacher, windows, steps=2, batch_size=2, seqlen=16, lr=1e-3, progress=False)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(weights[k], v) for k, v in teacher.state_dict().items())
    second = copy.deepcopy(teacher)
    prune_hidden_(second, 48, importance="magnitude")
    report = distill_(second, teacher, windows, steps=2, batch_size=2, seqlen=16, lr=1e-3, progress=False)
    assert report.steps == 2 and all(torch.isfinite(torch.tensor(report.losses)))


def test_a_student_with_nothing_to_train_is_refused_before_it_changes():
    student, teacher = _pair()
    student.requires_grad_(False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="no trainable parameter"):
        distill_(student, teacher, windows, steps=2, batch_size=2, seqlen=16, lr=1e-3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_a_non_finite_loss_is_an_error_before_the_weights_change():
    # a teacher that outputs NaN makes the KL NaN; the step must stop before the student's weights turn to NaN
    student, teacher = _pair()
    with torch.no_grad():
        teacher.lm_head.weight.fill_(float("nan"))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    windows = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"distillation \(step 1, lr 0.001\) loss became nan"):
        distill_(student, teacher, windows, steps=3, batch_size=2, seqlen=16, lr=1e-3, progress=False)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # untouched: same tensors


def test_window_stream_is_deterministic_and_lazy():
    tok = tiny_tokenizer()
    texts = [f"{i}{i} " * 12 for i in range(6)]  # documents with no token in common
    a = WindowStream(tok, texts, 8, seed=3, start=0)
    b = WindowStream(tok, texts, 8, seed=3, start=0)
    wa = [w for w, _ in zip(a, range(40))]  # more windows than one pass holds: it cycles
    wb = [w for w, _ in zip(b, range(40))]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert all(w.shape == (8,) and int(w[0]) == 0 for w in wa)
    c = [w for w, _ in zip(WindowStream(tok, texts, 8, seed=4, start=0), range(40))]
    assert not all(torch.equal(x, y) for x, y in zip(wa, c))  # another seed, another order


def test_bad_distillation_input_is_refused():
    student, teacher = _pair()
    with pytest.raises(ValueError, match="seqlen"):
        distill_(student, teacher, torch.randint(0, 128, (4, 16)), steps=1, seqlen=8, progress=False)
    with pytest.raises(ValueError, match="needs text"):
        distill_(student, teacher, None, steps=1, progress=False)
    with pytest.raises(ValueError, match="checkpoint folder"):
        distill_(student, teacher, torch.randint(0, 128, (4, 16)), steps=1, seqlen=16, resume=True, progress=False)
    with pytest.raises(ValueError, match="steps"):
        DistillConfig.parse(steps=0)
    other = tiny_model("llama", vocab_size=64)
    with pytest.raises(ValueError, match="different vocabularies"):
        distill_(student, other, torch.randint(0, 64, (4, 16)), steps=1, seqlen=16, progress=False)


SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from prunekit.models.tiny import tiny_model
    from prunekit.shrink import prune_hidden_
    from prunekit.shrink.distill import distill_, load_student
    mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    teacher = tiny_model("llama", layers=2, seed=0)
    if mode == "resume":
        student = load_student(ckpt)
    else:
        student = tiny_model("llama", layers=2, seed=0)
        prune_hidden_(student, 48, importance="magnitude")
    windows = torch.randint(0, 128, (10, 16), generator=torch.Generator().manual_seed(0))
    kill = (lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == 7 else None) if mode == "kill" else None
    report = distill_(student, teacher, windows, steps=12, batch_size=2, seqlen=16, lr=1e-3, checkpoint_every=3,
                      checkpoint=None if mode == "plain" else ckpt, resume=mode == "resume", run={"test": 1},
                      progress=False, on_step=kill)
    torch.save({"state": student.state_dict(), "resumed_from": report.resumed_from}, out)
""")


def _run(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    ckpt = tmp_path / "ckpt"
    killed = _run(tmp_path, "kill", str(ckpt), str(tmp_path / "never.pt"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    assert read_checkpoint(ckpt)["step"] == 6  # checkpoints at 3 and 6; killed after step 7
    resumed = _run(tmp_path, "resume", str(ckpt), str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr
    plain = _run(tmp_path, "plain", str(ckpt), str(tmp_path / "plain.pt"))
    assert plain.returncode == 0, plain.stderr
    a, b = torch.load(tmp_path / "resumed.pt"), torch.load(tmp_path / "plain.pt")
    assert a["resumed_from"] == 6 and b["resumed_from"] == 0
    # the same float32 operations in the same order on one thread: identical up to rounding
    assert max((a["state"][k] - b["state"][k]).abs().max().item() for k in b["state"]) < 1e-6
    assert read_checkpoint(ckpt)["step"] == 12


def test_resume_refuses_another_run_or_other_weights(tmp_path):
    student, teacher = _pair()
    windows = torch.randint(0, 128, (4, 16))
    distill_(student, teacher, windows, steps=2, batch_size=2, seqlen=16, checkpoint=tmp_path / "c", run={"a": 1},
             progress=False)
    again = load_student(tmp_path / "c")
    assert fingerprint(again) == pytest.approx(fingerprint(student), rel=1e-9)
    with pytest.raises(ValueError, match="different run"):
        distill_(again, teacher, windows, steps=4, batch_size=2, seqlen=16, checkpoint=tmp_path / "c", run={"a": 2},
                 resume=True, progress=False)
    with pytest.raises(ValueError, match="not the checkpoint's"):
        distill_(_pair()[0], teacher, windows, steps=4, batch_size=2, seqlen=16, checkpoint=tmp_path / "c",
                 run={"a": 1}, resume=True, progress=False)
    with pytest.raises(ValueError, match="no distillation checkpoint"):
        read_checkpoint(tmp_path)


def _per_layer_pair():
    # a student of the teacher's width (per-layer cut: fewer MLP neurons, one block fewer), so hidden states compare
    from prunekit.shrink import LayerShapes, apply_layer_shapes_, layer_shapes_of

    teacher = tiny_model("llama", layers=4, seed=0)
    student = tiny_model("llama", layers=4, seed=0)
    s = layer_shapes_of(student)
    apply_layer_shapes_(student, LayerShapes((2, 1, 0, 2), (64, 96, 0, 32), s.queries_per_group, s.head_dim),
                        calibration=torch.randint(0, 128, (2, 16)))
    return student, teacher


def test_hidden_state_loss_pairs_blocks_and_is_zero_for_the_same_model():
    from prunekit.shrink.distill import hidden_loss, teacher_layer

    assert [teacher_layer(j, 3, 4) for j in range(3)] == [0, 2, 3]  # round(4/3)=1, round(8/3)=3, 4 → 0-based
    assert [teacher_layer(j, 2, 2) for j in range(2)] == [0, 1]
    teacher = tiny_model("llama", layers=2, seed=0)
    ids = torch.randint(0, 128, (2, 8))
    with torch.no_grad():
        h = teacher(ids, output_hidden_states=True).hidden_states
    assert hidden_loss(h, h).item() == 0.0
    noisy = tuple(x + 0.1 * x.std() * torch.randn_like(x) for x in h)
    assert 0 < hidden_loss(noisy, h).item() < 0.1  # ~0.01 relative squared error per block


def test_hidden_state_distillation_lowers_both_losses():
    from prunekit.shrink.distill import hidden_loss

    student, teacher = _per_layer_pair()
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))

    def losses():
        with torch.no_grad():
            s, t = student(windows, output_hidden_states=True), teacher(windows, output_hidden_states=True)
        return kd_loss(s.logits, t.logits).item(), hidden_loss(s.hidden_states, t.hidden_states).item()

    kl0, h0 = losses()
    cfg = DistillConfig(steps=30, batch_size=4, seqlen=16, lr=3e-3, hidden_weight=1.0)
    report = distill_(student, teacher, windows, cfg, progress=False)
    kl1, h1 = losses()
    assert kl1 < 0.7 * kl0 and h1 < h0 and len(report.losses) == 30


def test_hidden_state_loss_refuses_a_student_of_another_width_before_training():
    student, teacher = _pair()  # hidden 64 → 48
    before = fingerprint(student)
    with pytest.raises(ValueError, match="student's width is 48 and the teacher's 64"):
        distill_(student, teacher, torch.randint(0, 128, (4, 16)), steps=2, batch_size=2, seqlen=16, hidden_weight=1.0,
                 progress=False)
    assert fingerprint(student) == before


def test_lora_recovery_trains_adapters_and_merges_them_into_plain_weights():
    from torch.nn.utils import parametrize

    student, teacher = _per_layer_pair()
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    embed = student.model.embed_tokens.weight.clone()
    q = student.model.layers[0].self_attn.q_proj.weight.clone()
    with torch.no_grad():
        kl0 = kd_loss(student(windows).logits, teacher(windows).logits).item()
    distill_(student, teacher, windows, steps=30, batch_size=4, seqlen=16, lr=3e-3, train="lora", lora_rank=4,
             progress=False)
    with torch.no_grad():
        kl1 = kd_loss(student(windows).logits, teacher(windows).logits).item()
    assert kl1 < kl0
    assert not any(parametrize.is_parametrized(m) for m in student.modules())  # merged: a plain model again
    assert torch.equal(student.model.embed_tokens.weight, embed)  # only the blocks' projections had adapters
    assert not torch.equal(student.model.layers[0].self_attn.q_proj.weight, q)
    with pytest.raises(ValueError, match="LoRA recovery .* runs without checkpoint="):
        distill_(student, teacher, windows, steps=2, batch_size=2, seqlen=16, train="lora", checkpoint="/nonexistent",
                 progress=False)


def test_next_token_fine_tuning_needs_no_teacher_and_lowers_the_text_loss():
    student, _ = _per_layer_pair()
    windows = torch.randint(0, 16, (8, 16), generator=torch.Generator().manual_seed(0))  # 16 ids: learnable

    def ce():
        with torch.no_grad():
            logits = student(windows).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()

    before = ce()
    distill_(student, None, windows, steps=30, batch_size=4, seqlen=16, lr=3e-3, objective="next_token", progress=False)
    assert ce() < 0.8 * before
    with pytest.raises(ValueError, match="reads a teacher"):
        distill_(student, None, windows, steps=2, batch_size=2, seqlen=16, progress=False)


def test_ce_weight_adds_the_texts_cross_entropy_to_the_kl():
    from prunekit.shrink.distill import _loss

    student, teacher = _pair()
    batch = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        s, t = student(batch).logits, teacher(batch).logits
        kl = kd_loss(s, t).item()
        ce = F.cross_entropy(s[:, :-1].reshape(-1, s.shape[-1]), batch[:, 1:].reshape(-1)).item()
        mixed = _loss(student, teacher, batch, DistillConfig(ce_weight=0.5)).item()
        plain = _loss(student, teacher, batch, DistillConfig()).item()
    # float32 sums over 128 classes and 32 tokens: agreement to ~1e-5
    assert plain == pytest.approx(kl, rel=1e-5)
    assert mixed == pytest.approx(kl + 0.5 * ce, rel=1e-5)


def test_bf16_precision_runs_the_products_in_bf16_and_keeps_float32_weights():
    student, teacher = _per_layer_pair()
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    seen = []
    hook = student.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        kl0 = kd_loss(student(windows).logits, teacher(windows).logits).item()
    seen.clear()
    report = distill_(student, teacher, windows, DistillConfig(steps=30, batch_size=4, seqlen=16, lr=3e-3,
                                                               precision="bf16"), progress=False)
    hook.remove()
    with torch.no_grad():
        kl1 = kd_loss(student(windows).logits, teacher(windows).logits).item()
    assert set(seen) == {torch.bfloat16} and len(seen) == 30  # every step's products in bf16
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert kl1 < 0.7 * kl0 and len(report.losses) == 30 and all(math.isfinite(x) for x in report.losses)


def test_precision_is_checked_before_training():
    with pytest.raises(ValueError, match="precision"):
        DistillConfig(precision="fp16")


@pytest.mark.parametrize("fields", [{"train": "lora", "lora_rank": 2}, {"hidden_weight": 1.0, "ce_weight": 0.5},
                                    {"objective": "next_token"}])
def test_bf16_precision_works_with_every_recovery(fields):
    student, teacher = _per_layer_pair()
    windows = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    cfg = DistillConfig(steps=3, batch_size=2, seqlen=16, lr=1e-3, precision="bf16", **fields)
    report = distill_(student, None if cfg.objective == "next_token" else teacher, windows, cfg, progress=False)
    assert len(report.losses) == 3 and all(math.isfinite(x) for x in report.losses)
    assert all(p.dtype == torch.float32 for p in student.parameters())
