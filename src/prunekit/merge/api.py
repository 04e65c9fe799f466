"""``merge``: merge fine-tuned models into their base, streaming tensor by tensor from safetensors.

Three passes over the tensors, each holding one tensor per model at a time: (1) the deltas'
magnitudes are measured (and, for a model-wide trim, counted in a histogram), (2) only for TIES'
model-wide trim, the values next to the threshold are gathered to make it exact, (3) each tensor is
merged and streamed into the output's safetensors files, which keep the base's file layout.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..core.atomic import check_output_folder, output_folder, remove_scratch, scratch_folder
from ..core.meta import write_meta
from .config import MergeConfig, merge_config
from .sources import INDEX, SafetensorsWriter, TensorFolder, TensorInfo, check_mergeable
from .tensors import (MagnitudeHistogram, MergeCounts, Trim, is_merged, merge_tensor, merge_tensor_groups,
                      needs_model_thresholds,
                      row_groups)

# DARE's authors report it works when deltas are small (their SFT models: |δ| within about 0.002–0.005)
# and fails on large ones; warn above this share of large entries.
LARGE_DELTA = 0.005
LARGE_SHARE_WARN = 0.05
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_SKIP_FILES = {INDEX, "pytorch_model.bin.index.json", "prunekit.json", "report.txt"}


@dataclass
class DeltaStats:
    """How large one model's delta ``θ_ft − θ_base`` is, over the merged tensors."""

    model: str
    numel: int = 0
    changed: float = 0.0  # share of entries that differ from the base
    mean_abs: float = 0.0
    median_abs: float = 0.0
    max_abs: float = 0.0
    relative_norm: float = 0.0  # ‖δ‖ / ‖θ_base‖
    large_share: float = 0.0  # share of |δ| > LARGE_DELTA
    kept: float | None = None  # share of the changed entries left after sparsifying (methods that sparsify)


@dataclass
class MergeReport:
    """What :func:`merge` did: the config, the models, the deltas' sizes, what was merged, time and memory."""

    method: str
    config: dict[str, Any]
    base: str
    models: list[str]
    out: str
    tensors_merged: int
    tensors_copied: int
    params_merged: int
    deltas: list[DeltaStats] = field(default_factory=list)
    thresholds: list[float | None] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready)."""
        return asdict(self)

    def __str__(self) -> str:
        density = self.config.get("density")
        head = (f"{self.method}" + (f" at density {density:g}" if density is not None else "") +
                f" ({self.config.get('semantics', 'paper')} semantics, seed {self.config.get('seed')}): "
                f"{len(self.models)} model(s) into {self.base} → {self.out}; {self.tensors_merged} tensors merged "
                f"({self.params_merged:,} parameters), {self.tensors_copied} copied; {self.seconds:.1f} s, "
                f"peak RSS {self.peak_rss_mb:,.0f} MB")
        rows = [f"{'model':<28} {'changed':>8} {'mean|δ|':>10} {'median|δ|':>10} {'max|δ|':>9} "
                f"{'‖δ‖/‖θ‖':>9} {'|δ|>0.005':>10} {'kept':>7}"]
        for d in self.deltas:
            kept = f"{d.kept:.3f}" if d.kept is not None else "-"
            rows.append(f"{d.model[-28:]:<28} {d.changed:>8.3f} {d.mean_abs:>10.2e} {d.median_abs:>10.2e} "
                        f"{d.max_abs:>9.2e} {d.relative_norm:>9.2e} {d.large_share:>10.2%} {kept:>7}")
        return "\n".join([head, *rows, *(f"note: {n}" for n in self.notes)])


def _peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM where /proc has it (ru_maxrss also counts the memory of a
    parent that spawned us), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _open_source(spec: str | Path, label: str, scratch: list[Path], notes: list[str]) -> TensorFolder:
    """A folder with safetensors is read in place; anything else (an alias, a GGUF file, a folder of .bin)
    is loaded once and written to a scratch folder as safetensors."""
    path = Path(str(spec)).expanduser()
    if path.is_dir() and any(path.glob("*.safetensors")):
        return TensorFolder(path, label)
    from ..models.hf import load_model

    lm = load_model(spec)
    folder = scratch_folder("prunekit-merge-src")
    scratch.append(folder)
    lm.model.save_pretrained(str(folder), safe_serialization=True)
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(str(folder))
    del lm
    notes.append(f"{label} is not a safetensors folder: it was loaded whole once and converted")
    return TensorFolder(folder, label)


def _copy_side_files(src: Path, dst: Path) -> None:
    for p in sorted(src.iterdir()):
        if p.name in _SKIP_FILES or p.name.endswith(_WEIGHT_FILES) or p.name.startswith("."):
            continue
        if p.is_dir():
            shutil.copytree(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)


def merge(
    base: str | Path,
    models: Sequence[str | Path],
    method: str | MergeConfig | dict = "dare_ties",
    *,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    **fields: Any,
) -> MergeReport:
    """Merge the fine-tuned ``models`` into ``base`` with ``method`` and write a Hugging Face folder to ``out``.

    ``method`` is a name (``dare_ties``, ``dare_linear``, ``ties``, ``della``, ``della_linear``, ``magnitude``,
    ``task_arithmetic``, ``linear``), a dict or a config (:mod:`prunekit.merge.config`); ``fields`` set its
    options (``density=0.1, weights=[1, 1], seed=0, semantics="paper"``...). Every check (the config, the
    output folder, architectures, vocabularies and tensor shapes) runs before anything is written; the output
    appears whole or not at all. Memory stays near one tensor per model.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    config = merge_config(method, **fields)
    if isinstance(models, (str, Path)) or not models:
        raise ValueError("models must be a list of one or more fine-tuned model folders")
    weights = config.weight_list(len(models))
    check_output_folder(out, overwrite=overwrite)
    notes: list[str] = []
    scratch: list[Path] = []
    try:
        src = _open_source(base, str(base), scratch, notes)
        fts = [_open_source(m, str(m), scratch, notes) for m in models]
        notes += check_mergeable(src, fts)
        names = src.names()
        merged_names = [n for n in names if is_merged(n, src.infos[n].dtype, config)]
        merged_set = set(merged_names)
        trim = needs_model_thresholds(config)

        # pass 1: delta sizes (and the magnitude histograms of a model-wide trim), a row group at a time
        acc = [dict(n=0, changed=0, abs_sum=0.0, sq=0.0, max=0.0, large=0) for _ in fts]
        base_sq = 0.0
        hists = [MagnitudeHistogram() for _ in fts]
        for name in tqdm(merged_names, desc="measuring deltas", disable=not progress, leave=False):
            for r0, r1 in row_groups(src.infos[name].shape):
                b = src.get(name, r0, r1).float()
                base_sq += float(b.pow(2).sum())
                for i, ft in enumerate(fts):
                    d = ft.get(name, r0, r1).float() - b
                    a = acc[i]
                    a["n"] += d.numel()
                    a["changed"] += int(torch.count_nonzero(d))
                    a["sq"] += float(torch.linalg.vector_norm(d)) ** 2
                    d.abs_()
                    a["abs_sum"] += float(d.sum())
                    a["max"] = max(a["max"], float(d.max()) if d.numel() else 0.0)
                    a["large"] += int((d > LARGE_DELTA).sum())
                    hists[i].add(d)
                    del d
        stats = []
        for i, ft in enumerate(fts):
            a = acc[i]
            n = max(a["n"], 1)
            stats.append(DeltaStats(
                model=ft.label, numel=a["n"], changed=a["changed"] / n, mean_abs=a["abs_sum"] / n,
                median_abs=hists[i].median(), max_abs=a["max"],
                relative_norm=(a["sq"] ** 0.5) / max(base_sq ** 0.5, 1e-30), large_share=a["large"] / n))
            if stats[-1].changed == 0:
                notes.append(f"{ft.label} equals the base in every merged tensor: its delta is zero")
        if config.sparsify in ("dare", "della"):
            for s in stats:
                if s.large_share > LARGE_SHARE_WARN:
                    notes.append(f"{s.model}: {s.large_share:.1%} of the delta entries exceed {LARGE_DELTA} in magnitude; "
                                 "DARE's authors report random dropping fails when deltas are large (e.g. after "
                                 "continued pre-training); check the merged model, or use ties/magnitude")

        # pass 2: exact model-wide thresholds
        trims: list[Trim] | None = None
        if trim:
            density = config.density  # type: ignore[attr-defined]
            bounds = [h.boundary(density) for h in hists]
            if any(b is not None for b in bounds):
                for name in tqdm(merged_names, desc="trim thresholds", disable=not progress, leave=False):
                    for r0, r1 in row_groups(src.infos[name].shape):
                        b = src.get(name, r0, r1).float()
                        for i, ft in enumerate(fts):
                            hists[i].add_boundary(ft.get(name, r0, r1).float() - b)
            trims = [h.trim() for h in hists]

        # pass 3: merge and stream out, a row group at a time
        counts = MergeCounts()
        with output_folder(out, overwrite=overwrite) as tmp:
            files: dict[str, list[TensorInfo]] = {}
            for name in names:
                files.setdefault(src.infos[name].file, []).append(src.infos[name])
            bar = tqdm(total=len(names), desc="merging", disable=not progress, leave=False)
            for file, infos in files.items():
                metadata = {**src.file_metadata.get(file, {}), "format": "pt"}
                writer = SafetensorsWriter(tmp / file, infos, metadata)
                for info in infos:
                    parts = merge_tensor_groups(info.name, info.shape, info.dtype, src.reader(info.name),
                                                [ft.reader(info.name) for ft in fts], config, trims, counts)
                    writer.write(info.name, parts)
                    bar.update(1)
                writer.close()
            bar.close()
            if (src.folder / INDEX).is_file():
                index = json.loads((src.folder / INDEX).read_text())
                (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
            _copy_side_files(src.folder, tmp)
            if config.sparsify is not None:
                for i, st in enumerate(stats):
                    if i < len(counts.before):
                        st.kept = counts.after[i] / counts.before[i] if counts.before[i] else 0.0
            report = MergeReport(
                method=config.method,  # type: ignore[attr-defined]
                config=config.to_dict(), base=str(base), models=[str(m) for m in models], out=str(out),
                tensors_merged=len(merged_names), tensors_copied=len(names) - len(merged_names),
                params_merged=sum(src.infos[n].numel for n in merged_names), deltas=stats,
                thresholds=[t.threshold for t in trims] if trims else None, notes=notes)
            report.config["weights"] = weights
            report.seconds = time.perf_counter() - started
            report.peak_rss_mb = _peak_rss_mb()
            write_meta(tmp, {"merge": report.to_dict()})
            (tmp / "report.txt").write_text(str(report) + "\n")
        report.seconds = time.perf_counter() - started
        report.peak_rss_mb = _peak_rss_mb()
        return report
    finally:
        for folder in scratch:
            remove_scratch(folder)


def merge_state_dicts(base: dict[str, torch.Tensor], models: Sequence[dict[str, torch.Tensor]],
                      method: str | MergeConfig | dict = "dare_ties", **fields: Any) -> dict[str, torch.Tensor]:
    """The same merge on in-memory state dicts (same names and shapes); returns a new state dict equal, tensor
    for tensor, to what :func:`merge` writes."""
    config = merge_config(method, **fields)
    if not models:
        raise ValueError("models must hold one or more fine-tuned state dicts")
    config.weight_list(len(models))
    for i, m in enumerate(models):
        if set(m) != set(base):
            raise ValueError(f"model {i} does not hold the base's tensors: missing {sorted(set(base) - set(m))[:5]}, "
                             f"extra {sorted(set(m) - set(base))[:5]}")
    names = sorted(base)
    merged = [n for n in names if is_merged(n, base[n].dtype, config)]
    trims = None
    if needs_model_thresholds(config):
        hists = [MagnitudeHistogram() for _ in models]
        for n in merged:
            for i, m in enumerate(models):
                hists[i].add(m[n].float() - base[n].float())
        bounds = [h.boundary(config.density) for h in hists]  # type: ignore[attr-defined]
        if any(b is not None for b in bounds):
            for n in merged:
                for i, m in enumerate(models):
                    hists[i].add_boundary(m[n].float() - base[n].float())
        trims = [h.trim() for h in hists]
    return {n: merge_tensor(n, base[n], [m[n] for m in models], config, trims) for n in names}
