"""``merge``: merge fine-tuned models into their base, streaming tensor by tensor from safetensors.

:func:`merge` opens and checks the sources (:func:`_open_all`), then makes three passes over the tensors,
each holding one row group per model at a time: (1) :func:`_measure_deltas` measures the deltas'
magnitudes (and, for a model-wide trim, counts them in a histogram) and checks every input is finite,
(2) :func:`_model_trims`, only for TIES' model-wide trim, gathers the values next to the threshold to make
it exact, (2b) :func:`_search_q`, only for DAREx-q's ``q="search"``, searches each fine-tune's rescaling
on calibration text (:mod:`prunekit.merge.darex`), (3) :func:`_write_merged` merges each tensor and
streams it into the output's safetensors files, which keep the base's file layout; :func:`_copy_side_files`
adds the base's config and tokenizer files.
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

from ..infra.atomic import check_distinct, check_output_folder, output_folder, remove_scratch, scratch_folder
from ..infra.meta import write_meta
from ..infra.shards import FolderEscapeError, inside
from .config import DareConfig, MergeConfig, merge_config
from .sources import INDEX, SafetensorsWriter, TensorFolder, TensorInfo, check_mergeable
from .tensors import (MagnitudeHistogram, MergeCounts, Trim, check_finite_input, dtype_kind, is_merged, merge_tensor,
                      merge_tensor_groups, needs_model_thresholds, row_groups)

# DARE's authors report it works when deltas are small (their SFT models: |δ| within about 0.002–0.005)
# and fails on large ones; warn above this share of large entries.
LARGE_DELTA = 0.005
LARGE_SHARE_WARN = 0.05
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_SKIP_FILES = {INDEX, "pytorch_model.bin.index.json", "prunekit.json", "report.txt"}
# What merge copies from the base besides the weights: its config, generation config and tokenizer files.
SIDE_FILES = frozenset({
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json"})


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
    q_search: list[dict[str, Any]] | None = None  # DAREx-q's search, per model
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
        for f in self.q_search or []:
            rows.append(f"DAREx-q for {f['model'][-28:]}: q = {f['q']:.4g} (survivors × {f['factor']:.3g}; DARE's "
                        f"× {f['dare_factor']:.3g}); relative change of the last hidden states {f['error']:.3g} "
                        f"(DARE's {f['error_dare']:.3g}, unscaled {f['error_no_rescale']:.3g}), "
                        f"{len(f['tried'])} q's tried")
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


def _side_files(src: Path) -> tuple[list[str], list[str]]:
    """The base's files that go into the output (config, generation config, tokenizer files; plain files
    inside the base, no link out of it), and the names of the other entries, which are left out."""
    copied, left = [], []
    for p in sorted(src.iterdir()):
        if p.name in _SKIP_FILES or p.name.endswith(_WEIGHT_FILES) or p.name.startswith("."):
            continue
        try:
            inside(src, p.name, "side file")
            plain = p.is_file()
        except FolderEscapeError:
            plain = False
        if plain and p.name in SIDE_FILES:
            copied.append(p.name)
        else:
            left.append(p.name + ("/" if p.is_dir() else ""))
    return copied, left


def _copy_side_files(src: Path, dst: Path) -> list[str]:
    """Copy the base's config, generation config and tokenizer files into ``dst`` (never a folder, never
    through a link out of the base); returns a note naming what was left out, if anything."""
    copied, left = _side_files(src)
    for name in copied:
        shutil.copyfile(src / name, dst / name)
    if not left:
        return []
    shown = ", ".join(left[:5]) + (", ..." if len(left) > 5 else "")
    return [f"not copied from the base: {shown} (merge copies only config, generation config and tokenizer "
            "files; folders and links out of the base never)"]


@dataclass
class _Sources:
    """The opened base and fine-tunes, and which tensors are merged."""

    base: TensorFolder
    models: list[TensorFolder]
    merged_names: list[str]

    @property
    def names(self) -> list[str]:
        return self.base.names()


def _open_all(base: str | Path, models: Sequence[str | Path], config: MergeConfig, scratch: list[Path],
              notes: list[str]) -> _Sources:
    """Open the base and the fine-tunes, check that they can be merged, pick the tensors to merge."""
    src = _open_source(base, str(base), scratch, notes)
    fts = [_open_source(m, str(m), scratch, notes) for m in models]
    notes += check_mergeable(src, fts)
    merged = [n for n in src.names() if is_merged(n, src.infos[n].dtype, config)]
    return _Sources(src, fts, merged)


def _measure_deltas(s: _Sources, config: MergeConfig, notes: list[str],
                    progress: bool) -> tuple[list[DeltaStats], list[MagnitudeHistogram]]:
    """Pass 1: every merged tensor's delta, a row group at a time: its sizes, the magnitude histograms of a
    model-wide trim, and the check that every input is finite (before anything is written)."""
    from tqdm.auto import tqdm

    acc = [dict(n=0, changed=0, abs_sum=0.0, sq=0.0, max=0.0, large=0) for _ in s.models]
    base_sq = 0.0
    hists = [MagnitudeHistogram() for _ in s.models]
    for name in tqdm(s.merged_names, desc="measuring deltas", disable=not progress, leave=False):
        for r0, r1 in row_groups(s.base.infos[name].shape):
            b = s.base.get(name, r0, r1).float()
            check_finite_input(b, f"the base ({s.base.label})", name)
            base_sq += float(b.pow(2).sum())
            for i, ft in enumerate(s.models):
                m = ft.get(name, r0, r1).float()
                check_finite_input(m, ft.label, name)
                d = m - b
                del m
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
    for a, ft, h in zip(acc, s.models, hists):
        n = max(a["n"], 1)
        stats.append(DeltaStats(
            model=ft.label, numel=a["n"], changed=a["changed"] / n, mean_abs=a["abs_sum"] / n,
            median_abs=h.median(), max_abs=a["max"],
            relative_norm=(a["sq"] ** 0.5) / max(base_sq ** 0.5, 1e-30), large_share=a["large"] / n))
        if stats[-1].changed == 0:
            notes.append(f"{ft.label} equals the base in every merged tensor: its delta is zero")
    if config.sparsify in ("dare", "della"):
        for st in stats:
            if st.large_share > LARGE_SHARE_WARN:
                notes.append(f"{st.model}: {st.large_share:.1%} of the delta entries exceed {LARGE_DELTA} in magnitude; "
                             "DARE's authors report random dropping fails when deltas are large (e.g. after "
                             "continued pre-training); check the merged model, or use ties/magnitude")
    return stats, hists


def _model_trims(s: _Sources, config: MergeConfig, hists: list[MagnitudeHistogram],
                 progress: bool) -> list[Trim] | None:
    """Pass 2, only for TIES' model-wide trim: gather the values next to each model's threshold, so that the
    trim keeps exactly ``density`` of the entries; None for every other method."""
    from tqdm.auto import tqdm

    if not needs_model_thresholds(config):
        return None
    bounds = [h.boundary(config.density) for h in hists]  # type: ignore[attr-defined]
    if any(b is not None for b in bounds):
        for name in tqdm(s.merged_names, desc="trim thresholds", disable=not progress, leave=False):
            for r0, r1 in row_groups(s.base.infos[name].shape):
                b = s.base.get(name, r0, r1).float()
                for h, ft in zip(hists, s.models):
                    h.add_boundary(ft.get(name, r0, r1).float() - b)
    return [h.trim() for h in hists]


def _calibration(s: _Sources, config: MergeConfig) -> torch.Tensor:
    """The calibration windows of DAREx-q's search: ``config.nsamples`` × ``config.seqlen`` tokens of ``config.calib``,
    tokenized by the base's tokenizer."""
    from transformers import AutoTokenizer

    from ..datasets.text import calibration_windows

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(s.base.folder))
    except Exception as err:  # noqa: BLE001 - any failure means the base has no usable tokenizer
        raise ValueError(f"q='search' needs calibration text, but the base {s.base.label} has no tokenizer "
                         f"transformers can load ({type(err).__name__}); add its tokenizer files or pass "
                         "calibration= token ids") from err
    return calibration_windows(tokenizer, config.calib, config.nsamples, config.seqlen,  # type: ignore[attr-defined]
                               config.seed, say=lambda *_: None)


def _search_q(s: _Sources, config: MergeConfig, calibration: torch.Tensor | None, progress: bool,
              notes: list[str]) -> tuple[list[float] | None, list[dict[str, Any]] | None]:
    """Pass 2b, only for DAREx-q with ``q="search"``: each fine-tune's q, searched on calibration text
    (:func:`prunekit.merge.darex.search_q`), and the searches' summaries; (None, None) for every other method.
    A note names the merged tensors a search could not move (not parameters of the loaded model by name)."""
    from tqdm.auto import tqdm

    from .darex import search_q

    if not (isinstance(config, DareConfig) and config.searches_q()):
        return None, None
    windows = calibration if calibration is not None else _calibration(s, config)
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32) or windows.numel() == 0:
        raise ValueError(f"calibration must be token ids of shape (windows, tokens), got {tuple(windows.shape)} "
                         f"{windows.dtype}")
    vocab = s.base.config.get("vocab_size") or s.base.config.get("text_config", {}).get("vocab_size")
    if isinstance(vocab, int) and (int(windows.max()) >= vocab or int(windows.min()) < 0):
        raise ValueError(f"calibration holds token id {int(windows.max())}, outside the base's vocabulary of {vocab}; "
                         "tokenize the calibration text with the base's tokenizer")
    qs, summaries = [], []
    for i, ft in enumerate(tqdm(s.models, desc="searching DAREx-q's q", disable=not progress, leave=False)):
        q, summary = search_q(s.base, ft, config, i, windows.long(), s.merged_names)
        if summary["tensors"] < len(s.merged_names):
            notes.append(f"DAREx-q's search for {ft.label} moved {summary['tensors']} of the {len(s.merged_names)} "
                         "merged tensors: the others are not the loaded model's parameters by name (e.g. MoE "
                         "experts stored per expert), so q was searched with them at the fine-tune's values; "
                         "the merge applies q to all of them")
        qs.append(q)
        summaries.append(summary)
    return qs, summaries


def _write_merged(s: _Sources, config: MergeConfig, trims: list[Trim] | None, folder: Path,
                  progress: bool, searched: list[float] | None = None) -> MergeCounts:
    """Pass 3: merge each tensor a row group at a time and stream it into ``folder``, keeping the base's file
    layout (and its shard index); returns the per-model counts of kept delta entries."""
    from tqdm.auto import tqdm

    counts = MergeCounts()
    files: dict[str, list[TensorInfo]] = {}
    for name in s.names:
        files.setdefault(s.base.infos[name].file, []).append(s.base.infos[name])
    labels = [ft.label for ft in s.models]
    bar = tqdm(total=len(s.names), desc="merging", disable=not progress, leave=False)
    for file, infos in files.items():
        path = inside(folder, file, "output shard")  # checked in the base already; never a path out of --out
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = SafetensorsWriter(path, infos, {**s.base.file_metadata.get(file, {}), "format": "pt"})
        for info in infos:
            parts = merge_tensor_groups(info.name, info.shape, info.dtype, s.base.reader(info.name),
                                        [ft.reader(info.name) for ft in s.models], config, trims, counts, labels,
                                        searched)
            writer.write(info.name, parts)
            bar.update(1)
        writer.close()
    bar.close()
    if s.base.index is not None:
        index = json.loads((s.base.folder / INDEX).read_text())
        index["weight_map"] = s.base.index  # the map checked when the base was opened
        (folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return counts


def _write_meta(folder: Path, report: MergeReport) -> None:
    """The output's ``prunekit.json`` (the mark of a folder prunekit wrote) and ``report.txt``."""
    write_meta(folder, {"merge": report.to_dict()})
    (folder / "report.txt").write_text(str(report) + "\n")


def merge(
    base: str | Path,
    models: Sequence[str | Path],
    method: str | MergeConfig | dict = "dare_ties",
    *,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    calibration: torch.Tensor | None = None,
    **fields: Any,
) -> MergeReport:
    """Merge the fine-tuned ``models`` into ``base`` with ``method`` and write a Hugging Face folder to ``out``.

    ``method`` is a name (``dare_ties``, ``dare_linear``, ``ties``, ``della``, ``della_linear``, ``magnitude``,
    ``task_arithmetic``, ``linear``), a dict or a config (:mod:`prunekit.merge.config`); ``fields`` set its
    options (``density=0.1, weights=[1, 1], seed=0, semantics="paper"``...). Every check (the config, the
    output folder, architectures, vocabularies, tensor shapes and dtypes, finite inputs) runs before anything
    is written; the output appears whole or not at all. Memory stays near one tensor per model, except with
    DAREx-q's ``q="search"``, which runs each fine-tune whole on calibration text (``calibration`` token ids,
    or the config's ``calib``/``nsamples``/``seqlen`` through the base's tokenizer) to search its q.
    """
    started = time.perf_counter()
    config = merge_config(method, **fields)
    if isinstance(models, (str, Path)) or not models:
        raise ValueError("models must be a list of one or more fine-tuned model folders")
    weights = config.weight_list(len(models))
    check_distinct({"--out": out}, {"--base": base, "--models": list(models)})
    check_output_folder(out, overwrite=overwrite)
    notes: list[str] = []
    scratch: list[Path] = []
    try:
        s = _open_all(base, models, config, scratch, notes)
        stats, hists = _measure_deltas(s, config, notes, progress)
        trims = _model_trims(s, config, hists, progress)
        searched, searches = _search_q(s, config, calibration, progress, notes)
        with output_folder(out, overwrite=overwrite) as tmp:
            counts = _write_merged(s, config, trims, tmp, progress, searched)
            notes += _copy_side_files(s.base.folder, tmp)
            if config.sparsify is not None:
                for before, after, st in zip(counts.before, counts.after, stats):
                    st.kept = after / before if before else 0.0
            report = MergeReport(
                method=config.method,  # type: ignore[attr-defined]
                config={**config.to_dict(), "weights": weights}, base=str(base), models=[str(m) for m in models],
                out=str(out), tensors_merged=len(s.merged_names), tensors_copied=len(s.names) - len(s.merged_names),
                params_merged=sum(s.base.infos[n].numel for n in s.merged_names), deltas=stats,
                thresholds=[t.threshold for t in trims] if trims else None, q_search=searches,
                notes=notes,
                seconds=time.perf_counter() - started, peak_rss_mb=_peak_rss_mb())
            _write_meta(tmp, report)
        report.seconds = time.perf_counter() - started
        report.peak_rss_mb = _peak_rss_mb()
        return report
    finally:
        for folder in scratch:
            remove_scratch(folder)


def merge_state_dicts(base: dict[str, torch.Tensor], models: Sequence[dict[str, torch.Tensor]],
                      method: str | MergeConfig | dict = "dare_ties", *,
                      searched: list[float] | None = None, **fields: Any) -> dict[str, torch.Tensor]:
    """The same merge on in-memory state dicts (same names and shapes); returns a new state dict equal, tensor
    for tensor, to what :func:`merge` writes. DAREx-q with ``q="search"`` takes each model's q as ``searched``
    (:attr:`MergeReport.q_search` holds those :func:`merge` found)."""
    config = merge_config(method, **fields)
    if not models:
        raise ValueError("models must hold one or more fine-tuned state dicts")
    if searched is not None and getattr(config, "q", None) != "search":
        raise ValueError(f"searched q values are used only by DAREx-q with q='search'; this merge's q is "
                         f"{getattr(config, 'q', None)!r}, so they would be ignored: pass q='search' with them, or drop "
                         "searched")
    config.weight_list(len(models))
    for i, m in enumerate(models):
        if set(m) != set(base):
            raise ValueError(f"model {i} does not hold the base's tensors: missing {sorted(set(base) - set(m))[:5]}, "
                             f"extra {sorted(set(m) - set(base))[:5]}")
    names = sorted(base)
    for i, m in enumerate(models):
        kinds = [n for n in names if dtype_kind(base[n].dtype) != dtype_kind(m[n].dtype)]
        if kinds:
            raise ValueError(f"model {i}: tensor dtypes differ in kind from the base's: " + ", ".join(
                f"{n} {m[n].dtype} vs {base[n].dtype}" for n in kinds[:5]))
    merged = [n for n in names if is_merged(n, base[n].dtype, config)]
    for n in merged:
        check_finite_input(base[n], "the base", n)
        for i, m in enumerate(models):
            check_finite_input(m[n], f"model {i}", n)
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
    return {n: merge_tensor(n, base[n], [m[n] for m in models], config, trims, searched) for n in names}
