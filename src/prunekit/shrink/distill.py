"""Recovery by logit distillation: train the shrunk model (student) to match the unpruned model's (teacher)
next-token distributions, as Minitron does, on text streamed in windows — or, as alternatives, with
hidden-state losses added, with LoRA adapters only, or by plain next-token fine-tuning with no teacher.

The loss (``objective="kd"``) is KL(teacher ‖ student) of the temperature-softened next-token distributions,
averaged over tokens and multiplied by T² (Hinton et al., 2015); ``objective="next_token"`` is the
cross-entropy of the text's next tokens (no teacher needed). ``hidden_weight`` > 0 adds Minitron's
intermediate-state loss: for every student block j (of Ls) the normalised squared error between its output
and the output of teacher block round(j·Lt/Ls) (the last blocks always paired), mean over blocks — the two
must share the residual width. ``ce_weight`` > 0 adds the text's next-token cross-entropy to the KD loss
(the mix DistilBERT trains with: the student learns the data as well as the teacher's distribution, and can
then beat the teacher on the training text's domain). ``train="full"``: every parameter trains; ``train="lora"``: rank-``lora_rank``
adapters on every projection of the blocks (plus biases and norms, as PERP does), merged into the weights
at the end. AdamW, linear warm-up then cosine decay, gradients clipped. Text comes from :class:`WindowStream`: documents shuffled by
the seed and tokenized one at a time as the windows are needed, so the corpus's tokens are never all held
(its text is: :func:`text_stream` reads the source's documents first).

Checkpoints (``checkpoint=`` a folder, every ``checkpoint_every`` steps and at the end) hold the student
as a Hugging Face folder (``from_pretrained`` reads it), the optimizer and schedule, the step and the
losses; each is written as a fresh folder swapped in whole (:func:`prunekit.infra.atomic.output_folder`),
so a process killed at any moment (``kill -9`` included) leaves the previous checkpoint intact.
``resume=True`` continues after the last one: the stream skips the windows already used, so a resumed run
takes the same steps on the same text as one never interrupted.
"""

from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.config import Config
from ..train.recovery_lm import loss_ends, optimizer_step_

CHECKPOINT_KIND = "shrink-distill-checkpoint"
STATE_FILE = "training.pt"


class DistillConfig(Config):
    """Settings of logit distillation (see :func:`distill_`)."""

    steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    seqlen: int = Field(256, ge=2)
    lr: float = Field(2e-4, gt=0)
    warmup: float = Field(0.1, ge=0, lt=1)
    temperature: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = 0
    objective: Literal["kd", "next_token"] = "kd"
    hidden_weight: float = Field(0.0, ge=0)
    ce_weight: float = Field(0.0, ge=0)
    train: Literal["full", "lora"] = "full"
    lora_rank: int = Field(8, ge=1)
    # bf16: the teacher's and student's forwards (and so the backward's products) under bf16 autocast, weights,
    # optimizer state and losses in float32. On a CPU with native bf16 (AVX512_BF16, AMX) 1.6-1.9x the tokens/s
    # of fp32 on SmolLM2 (measured); where the CPU has none it is emulated and slower.
    precision: Literal["fp32", "bf16"] = "fp32"

    @property
    def needs_teacher(self) -> bool:
        """Whether the loss reads a teacher's outputs."""
        return self.objective == "kd" or self.hidden_weight > 0

    @property
    def tokens(self) -> int:
        """Tokens the whole run reads."""
        return self.steps * self.batch_size * self.seqlen


@dataclass
class DistillReport:
    """What :func:`distill_` trained, how fast, and with how much memory."""

    steps: int
    tokens: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    lr: float
    temperature: float
    resumed_from: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per wall second (of this process's part of the run)."""
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data; losses summarised by the means of the first and last tenth of the steps."""
        d = asdict(self)
        return {**d, "tokens_per_s": self.tokens_per_s, **loss_ends(d.pop("losses"))}

    def __str__(self) -> str:
        d = self.to_dict()
        loss = f", KL {d['loss_first']:.3f} → {d['loss_last']:.3f}" if self.losses else ""
        resumed = f", resumed after step {self.resumed_from}" if self.resumed_from else ""
        return (f"distillation: {self.steps} steps, {self.tokens:,} tokens, {self.seconds:.0f} s wall "
                f"({self.cpu_seconds:.0f} s CPU), {self.tokens_per_s:,.0f} tokens/s, peak memory "
                f"{self.peak_rss_bytes / 2**30:.2f} GiB{loss}{resumed}")


class WindowStream:
    """Windows of ``seqlen`` token ids from documents, shuffled by ``seed`` each pass over them, tokenized
    lazily (one document at a time). Each window starts with ``start`` when given (the BOS token a
    tokenizer adds), as the calibration and evaluation windows do."""

    def __init__(self, tokenizer: Any, texts: list[str], seqlen: int, seed: int = 0, start: int | None = None) -> None:
        if not texts:
            raise ValueError("distillation needs text: the source gave no documents")
        if seqlen < 2:
            raise ValueError(f"seqlen must be at least 2, got {seqlen}")
        self.tokenizer, self.texts, self.seqlen, self.seed, self.start = tokenizer, texts, seqlen, seed, start

    def __iter__(self) -> Iterator[Tensor]:
        buffer: list[int] = []
        epoch = 0
        while True:
            order = torch.randperm(len(self.texts), generator=torch.Generator().manual_seed(self.seed + epoch))
            produced = False
            for i in order.tolist():
                buffer.extend(self.tokenizer(self.texts[i] + "\n\n", add_special_tokens=False)["input_ids"])
                while len(buffer) >= self.seqlen:
                    window = torch.tensor(buffer[:self.seqlen], dtype=torch.long)
                    del buffer[:self.seqlen]
                    if self.start is not None:
                        window[0] = self.start
                    produced = True
                    yield window
            if not produced and epoch > 0:
                raise ValueError(f"the distillation text holds fewer than {self.seqlen} tokens; give more text")
            epoch += 1


def text_stream(tokenizer: Any, source: str, seqlen: int, seed: int = 0) -> WindowStream:
    """A :class:`WindowStream` over the calibration split of a text source (``pydocs``, a file, a folder; see
    :mod:`prunekit.datasets.text`): the evaluation split stays held out."""
    from ..datasets.text import documents, split_documents, start_token

    docs = split_documents(documents(source), "calibration")
    return WindowStream(tokenizer, [d.text for d in docs], seqlen, seed, start_token(tokenizer))


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher ‖ student) of the softened next-token distributions, mean over tokens, times T²."""
    v = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, v).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


def teacher_layer(j: int, student_layers: int, teacher_layers: int) -> int:
    """The teacher block whose output student block ``j`` (0-based) is compared with: round((j+1)·Lt/Ls) − 1."""
    return max(0, round((j + 1) * teacher_layers / student_layers) - 1)


def hidden_loss(student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...]) -> Tensor:
    """Mean over student blocks of ‖h_s − h_t‖² / ‖h_t‖² (per token, then averaged), each student block's output
    against its teacher block's (:func:`teacher_layer`); ``*_hidden`` as ``output_hidden_states`` gives them
    (the embedding output first, which is skipped)."""
    ls, lt = len(student_hidden) - 1, len(teacher_hidden) - 1
    losses = []
    for j in range(ls):
        s = student_hidden[j + 1].float()
        t = teacher_hidden[teacher_layer(j, ls, lt) + 1].float()
        losses.append(((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-12)).mean())
    return torch.stack(losses).mean()


def fingerprint(model: nn.Module) -> float:
    """Σ of every parameter (float64): ties a checkpoint's weights to its optimizer state."""
    return float(sum(p.detach().double().sum() for p in {id(p): p for p in model.parameters()}.values()))


def read_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The metadata of a distillation checkpoint folder (its ``prunekit.json``); a ValueError if it is none."""
    path = Path(folder) / "prunekit.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{folder} holds no distillation checkpoint (no readable prunekit.json); start without "
                         "--resume") from None
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{folder} is a prunekit folder but not a distillation checkpoint")
    return meta


def load_student(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The student saved in a checkpoint folder, read with stock ``from_pretrained`` (per-layer shapes: with
    :func:`prunekit.shrink.perlayer.load_shrunk`)."""
    from .perlayer import load_shrunk

    read_checkpoint(folder)
    return load_shrunk(folder, dtype=dtype).train()


def _schedule(cfg: DistillConfig) -> Callable[[int], float]:
    warm = max(1, round(cfg.warmup * cfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cfg.steps - warm)))

    return factor


def _save_checkpoint(folder: Path, student: nn.Module, opt: Any, sched: Any, step: int, losses: list[float],
                     run: dict[str, Any], spent: dict[str, float], extra: dict[str, Any] | None = None) -> None:
    from .. import __version__
    from ..infra.atomic import output_folder

    with output_folder(folder, overwrite=True) as tmp:
        student.save_pretrained(tmp)
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step, "losses": losses,
                    "spent": spent}, tmp / STATE_FILE)
        meta = {"prunekit_version": __version__, "kind": CHECKPOINT_KIND, "step": step, "run": run, "fingerprint": fingerprint(student),
                "extra": extra or {}}
        (tmp / "prunekit.json").write_text(json.dumps(meta, indent=2) + "\n")


def distill_(student: nn.Module, teacher: nn.Module | None, windows: Any, config: DistillConfig | dict | None = None, *,
             checkpoint: str | Path | None = None, resume: bool = False, run: dict[str, Any] | None = None,
             progress: bool = True, on_step: Callable[[int], None] | None = None, extra: dict[str, Any] | None = None,
             **fields: Any) -> DistillReport:
    """Train ``student`` in place to match ``teacher``'s next-token distributions on ``windows`` (an iterable of
    token-id windows, e.g. :func:`text_stream`; or a (n, seqlen) tensor, cycled). ``config`` or its keyword
    ``fields``: steps, batch_size, seqlen, lr, warmup, temperature, checkpoint_every, seed … (see
    :class:`DistillConfig`). With ``checkpoint`` a folder is written every ``checkpoint_every`` steps; with
    ``resume`` the student must be the checkpoint's (:func:`load_student`) and training continues after its
    step. ``run`` (plain data describing the run) is stored in checkpoints and must match on resume; ``extra``
    (plain data) is stored beside it for the caller (:func:`read_checkpoint` returns both).
    ``on_step(step)`` is called after each step. ``teacher`` may be None for ``objective="next_token"`` without
    hidden-state loss. Checked before anything changes."""
    cfg = config if isinstance(config, DistillConfig) else DistillConfig.parse(config or {}, **fields)
    if isinstance(config, DistillConfig) and fields:
        cfg = config.replace(**fields)
    run = dict(run or {})
    folder = Path(checkpoint) if checkpoint is not None else None
    if resume and folder is None:
        raise ValueError("resume needs the checkpoint folder to continue from (checkpoint=, --checkpoint DIR)")
    if cfg.needs_teacher and teacher is None:
        raise ValueError("this recovery reads a teacher (objective 'kd' or hidden_weight > 0); pass the unpruned model "
                         "as teacher, or use objective='next_token' with hidden_weight=0")
    if cfg.train == "lora" and folder is not None:
        raise ValueError("checkpoints hold fully trained students; LoRA recovery (train='lora') runs without "
                         "checkpoint=")
    if teacher is not None and cfg.objective == "kd":
        vocab_s = student.get_output_embeddings().weight.shape[0]
        vocab_t = teacher.get_output_embeddings().weight.shape[0]
        if vocab_s != vocab_t:
            raise ValueError(f"student and teacher predict different vocabularies ({vocab_s} and {vocab_t} tokens); "
                             "logit distillation needs the same one")
    if cfg.hidden_weight > 0:
        h_s, h_t = int(student.config.hidden_size), int(teacher.config.hidden_size)  # type: ignore[union-attr]
        if h_s != h_t:
            raise ValueError(f"hidden-state distillation compares residual streams, but the student's width is {h_s} "
                             f"and the teacher's {h_t}; use hidden_weight=0 for a model whose hidden width was cut")
    state = None
    done = 0
    if resume:
        assert folder is not None
        meta = read_checkpoint(folder)
        if meta.get("run") != run:
            raise ValueError(f"the checkpoint in {folder} was written by a different run ({meta.get('run')}); resume "
                             "with the same settings, or start afresh in another folder")
        if not math.isclose(meta["fingerprint"], fingerprint(student), rel_tol=1e-9, abs_tol=1e-6):
            raise ValueError(f"the student's weights are not the checkpoint's in {folder}; load them with "
                             "prunekit.shrink.distill.load_student")
        state = torch.load(folder / STATE_FILE, weights_only=True)
        done = int(state["step"])
        if done > cfg.steps:
            raise ValueError(f"the checkpoint is at step {done}, beyond the {cfg.steps} steps asked for")
    stream = window_iter(windows, cfg)
    for _ in range(done * cfg.batch_size):  # the windows earlier steps used
        next(stream)

    if cfg.train == "lora":
        from ..train.recovery import trainable_params_

        params = trainable_params_(student, "lora", cfg.lora_rank, {"include": ["model.layers.*"]})
    else:
        params = [p for p in student.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the student has no trainable parameter (every requires_grad is False); unfreeze it "
                             "(model.requires_grad_(True)) or train LoRA adapters (train='lora')")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg))
    losses: list[float] = []
    spent = {"seconds": 0.0, "cpu_seconds": 0.0}
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        losses = list(state["losses"])
        spent = dict(state["spent"])
    teacher_was_training = teacher is not None and teacher.training
    if teacher is not None:
        teacher.eval()  # its forward runs under no_grad; its parameters' flags are the caller's and stay as they are
    device = next(student.parameters()).device
    tokens_per_step = cfg.batch_size * cfg.seqlen
    start, cpu = time.perf_counter(), time.process_time()
    bar = tqdm(total=cfg.tokens, initial=done * tokens_per_step, unit="tok", unit_scale=True, desc="distill",
               disable=not progress, leave=False, smoothing=0.1)
    student.train()
    try:
        for step in range(done, cfg.steps):
            batch = torch.stack([next(stream) for _ in range(cfg.batch_size)]).to(device)
            loss = _loss(student, teacher, batch, cfg)
            losses.append(optimizer_step_(loss, opt, sched, params, cfg.max_grad_norm,
                                          f"distillation (step {step + 1}, lr {cfg.lr:g})"))
            bar.update(tokens_per_step)
            bar.set_postfix(kl=f"{losses[-1]:.3f}", step=f"{step + 1}/{cfg.steps}")
            if folder is not None and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                now = {"seconds": spent["seconds"] + time.perf_counter() - start,
                       "cpu_seconds": spent["cpu_seconds"] + time.process_time() - cpu}
                _save_checkpoint(folder, student, opt, sched, step + 1, losses, run, now, extra)
            if on_step is not None:
                on_step(step + 1)
    finally:
        bar.close()
        student.eval()
        if teacher_was_training:
            teacher.train()
        if cfg.train == "lora":
            from ..train.recovery import merge_lora_

            merge_lora_(student)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return DistillReport(cfg.steps - done, (cfg.steps - done) * tokens_per_step, seconds, cpu_seconds, peak, cfg.lr,
                         cfg.temperature, done, losses)


def _loss(student: nn.Module, teacher: nn.Module | None, batch: Tensor, cfg: DistillConfig) -> Tensor:
    """The training loss of one batch (see the module docstring)."""
    hidden = cfg.hidden_weight > 0
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        out = student(input_ids=batch, use_cache=False, output_hidden_states=hidden)
        ref = None
        if cfg.needs_teacher:
            assert teacher is not None
            with torch.no_grad():
                ref = teacher(input_ids=batch, use_cache=False, output_hidden_states=hidden)
    if cfg.objective == "kd":
        assert ref is not None
        loss = kd_loss(out.logits, ref.logits, cfg.temperature)
    else:
        logits = out.logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    if cfg.objective == "kd" and cfg.ce_weight > 0:
        logits = out.logits[:, :-1].float()
        loss = loss + cfg.ce_weight * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    if hidden:
        assert ref is not None
        loss = loss + cfg.hidden_weight * hidden_loss(out.hidden_states, ref.hidden_states)
    return loss


def window_iter(windows: Any, cfg: DistillConfig) -> Iterator[Tensor]:
    """An endless iterator of (seqlen,) windows from a stream or a (n, seqlen) tensor (cycled in order)."""
    if isinstance(windows, Tensor):
        if windows.dim() != 2 or windows.shape[0] == 0 or windows.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"windows must be token ids of shape (n, seqlen), got {tuple(windows.shape)}")
        if windows.shape[1] != cfg.seqlen:
            raise ValueError(f"windows hold {windows.shape[1]} tokens each but seqlen is {cfg.seqlen}")
        rows = windows.long()

        def cycle() -> Iterator[Tensor]:
            while True:
                yield from rows
        return cycle()
    if windows is None:
        raise ValueError("distillation needs text: pass windows= (a text_stream or token ids)")
    if isinstance(windows, WindowStream) and windows.seqlen != cfg.seqlen:
        raise ValueError(f"the stream cuts {windows.seqlen}-token windows but seqlen is {cfg.seqlen}")
    return iter(windows)
