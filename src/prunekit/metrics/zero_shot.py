"""Zero-shot task accuracy through lm-eval (EleutherAI's lm-evaluation-harness), on the model in memory.

    scores = zero_shot(model, tokenizer, ["hellaswag", "arc_easy"], limit=200)
    scores = zero_shot(model, tokenizer, ["my_task"], include_path="tasks/")   # local task YAML files

The model is evaluated as it is (pruned, with masks or finalized), not reloaded from disk; lm-eval's
own task definitions decide prompts and metrics. Hub tasks need their data sets (a network, or
``HF_DATASETS_OFFLINE`` with a local cache); a local task (``dataset_path: json``) needs nothing.
The lm-eval version is returned with the scores so that it can go in a protocol card.
"""

from __future__ import annotations

from typing import Any


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError("zero-shot evaluation needs lm-eval: pip install 'prunekit[eval]' (or lm-eval)") from exc
    return lm_eval, HFLM, TaskManager


def zero_shot(model: Any, tokenizer: Any, tasks: list[str], *, include_path: str | None = None,
              limit: int | float | None = None, num_fewshot: int = 0, batch_size: int = 1,
              seed: int = 0) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate`` on ``tasks`` with the in-memory ``model``; returns
    ``{"tasks": {name: {metric: value}}, "lm_eval_version": ..., "limit": ..., "num_fewshot": ...}``."""
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    lm_eval, HFLM, TaskManager = _lm_eval()
    manager = None
    if include_path:  # indexing lm-eval's thousands of built-in task files takes long: try the folder alone first
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if any(t not in set(manager.all_tasks) for t in tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        hint = "" if include_path else " (pass include_path= for a folder of local task YAML files)"
        raise ValueError(f"unknown lm-eval task(s) {unknown}{hint}")
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, random_seed=seed, numpy_random_seed=seed,
                                      torch_random_seed=seed, fewshot_random_seed=seed, log_samples=False)
    finally:
        model.train(was_training)
    scores = {}
    for name, metrics in res["results"].items():
        scores[name] = {k.split(",")[0]: v for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not k.startswith("sample_len") and "stderr" not in k}
        stderr = {k.split(",")[0]: v for k, v in metrics.items() if "stderr" in k and isinstance(v, (int, float))}
        if stderr:
            scores[name]["stderr"] = stderr
    return {"tasks": scores, "lm_eval_version": getattr(lm_eval, "__version__", "?"), "limit": limit,
            "num_fewshot": num_fewshot, "samples": {n: m.get("sample_len") for n, m in res["results"].items()}}
