"""Calibration and evaluation text for language models, split into disjoint parts by file.

Sources (:func:`text_files`):

- ``"pydocs"``: the reStructuredText sources of Python's documentation (Debian's ``python3.11-doc``,
  ``/usr/share/doc/python3.11/html/_sources``). As the *default* source it falls back, with a
  message, to the docstrings of the standard library when the package is absent; asked for by name,
  a missing package is an error that gives the ``apt-get install`` line.
- a text file or a folder of ``.txt``/``.rst``/``.md`` files;
- ``"wikitext2"`` / ``"c4"``: the Hugging Face hub data sets through the ``datasets`` library (needs
  a network the first time; offline it fails with a message saying so).

Every document is assigned to the calibration or the evaluation split by a hash of its name, so the
two never share a document and the split does not depend on the seed.
"""

from __future__ import annotations

import hashlib
import pkgutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PYDOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
PYDOCS_INSTALL = "sudo apt-get install python3.11-doc"
TEXT_SUFFIXES = (".txt", ".rst", ".md")
HUB_SETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text"),
    "c4": ("allenai/c4", "en", "text"),
}


@dataclass(frozen=True)
class Document:
    """One unit of the split: a name (file path or module) and its text."""

    name: str
    text: str


def _hash01(name: str) -> float:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def is_eval(name: str, eval_fraction: float = 0.1) -> bool:
    """Whether document ``name`` belongs to the evaluation split (a stable hash of the name)."""
    return _hash01(name) < eval_fraction


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))


def _stdlib_docstrings() -> list[Document]:
    """Docstrings of the standard library's modules: prose every Python has."""
    import importlib

    docs = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names and not m.name.startswith("_"))
    for name in names:
        if name in ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that cannot import on this platform is skipped
                continue
            parts = [mod.__doc__ or ""]
            for attr in sorted(vars(mod)):
                obj = getattr(mod, attr, None)
                if getattr(obj, "__module__", None) == name and getattr(obj, "__doc__", None):
                    parts.append(f"{attr}: {obj.__doc__}")
        text = "\n\n".join(p for p in parts if p.strip())
        if text:
            docs.append(Document(f"stdlib:{name}", text))
    return docs


def documents(source: str | Path, *, default: bool = False, say=print) -> list[Document]:
    """All documents of a source (see the module docstring), in a fixed order."""
    s = str(source)
    if s == "pydocs":
        if PYDOCS_DIR.is_dir():
            return [Document(str(p.relative_to(PYDOCS_DIR)), p.read_text(errors="replace")) for p in _files_of(PYDOCS_DIR)]
        if not default:
            raise FileNotFoundError(
                f"Python's documentation sources are not installed ({PYDOCS_DIR} is missing); "
                f"install them with '{PYDOCS_INSTALL}', or pass a text file or folder"
            )
        say(f"note: {PYDOCS_DIR} is missing ('{PYDOCS_INSTALL}' installs it); using the standard library's docstrings")
        return _stdlib_docstrings()
    if s in HUB_SETS:
        return _hub_documents(s)
    path = Path(s).expanduser()
    if path.is_file():
        text = path.read_text(errors="replace")
        # One file: its paragraphs are the documents, so the split is still by whole units.
        paras = [p for p in text.split("\n\n") if p.strip()]
        return [Document(f"{path.name}#{i}", p) for i, p in enumerate(paras)]
    if path.is_dir():
        files = _files_of(path)
        if not files:
            raise ValueError(f"text folder {s!r} holds no {'/'.join(TEXT_SUFFIXES)} files")
        return [Document(str(p.relative_to(path)), p.read_text(errors="replace")) for p in files]
    raise ValueError(
        f"unknown text source {s!r}: expected 'pydocs', 'wikitext2', 'c4', a text file or a folder of text files"
    )


def text_fingerprint(source: str | Path) -> str | None:
    """A hash of the contents of a text source (a file, a folder's text files, or pydocs' files), so that
    results keyed by it change when the text does; None for a hub set (named by its version on the hub)."""
    import hashlib

    s = str(source)
    if s in HUB_SETS:
        return None
    path = PYDOCS_DIR if s == "pydocs" else Path(s).expanduser()
    if s == "pydocs" and not path.is_dir():
        return "stdlib-docstrings"
    if path.is_file():
        files, root = [path], path.parent
    elif path.is_dir():
        files, root = _files_of(path), path
    else:
        return None  # not a source: reading it gives the error
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _hub_documents(name: str) -> list[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"text source {name!r} needs the 'datasets' library: pip install datasets") from exc
    path, config, column = HUB_SETS[name]
    try:
        if name == "c4":
            ds = datasets.load_dataset(path, config, split="validation", streaming=True)
            rows = [r[column] for _, r in zip(range(5000), ds)]
        else:
            ds = datasets.load_dataset(path, config, split="train")
            rows = list(ds[column])
    except Exception as exc:  # noqa: BLE001 - the hub's many failure types all mean "could not fetch"
        raise ValueError(
            f"could not load {name!r} from the Hugging Face hub ({type(exc).__name__}: {exc}); it needs network "
            "access the first time. Offline, use 'pydocs' or a local text file/folder"
        ) from exc
    return [Document(f"{name}:{i}", t) for i, t in enumerate(rows) if t.strip()]


def split_documents(docs: list[Document], split: str, eval_fraction: float = 0.1) -> list[Document]:
    """The documents of one split, ``"calibration"`` or ``"evaluation"``."""
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    held_out = {d.name for d in docs if is_eval(d.name, eval_fraction)}
    if not held_out and len(docs) > 1:  # few documents: hold out the one with the lowest hash
        held_out = {min((d.name for d in docs), key=_hash01)}
    want = split == "evaluation"
    return [d for d in docs if (d.name in held_out) == want]


def _tokens(tokenizer: Any, docs: list[Document], needed: int) -> torch.Tensor:
    """Token ids of ``docs`` in order, joined by blank lines, until at least ``needed`` are gathered."""
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d.text + "\n\n", add_special_tokens=False)["input_ids"])
        if len(ids) >= needed:
            break
    return torch.tensor(ids, dtype=torch.long)


def start_token(tokenizer: Any) -> int | None:
    """The token the tokenizer starts every text with (Gemma's and Llama 2/3's ``<bos>``), or None when it
    adds none (SmolLM2, GPT-2). Windows cut from a token stream then start with it, as the model saw in
    training: Gemma 3 270M's perplexity over 4 × 512 Python-docs tokens is 35.4 without it, 12.9 with it."""
    try:
        with_special = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    except Exception:  # a tokenizer-like object without these options
        return None
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(with_special) > len(plain) and with_special[0] == bos:
        return int(bos)
    return None


def _start(windows: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    bos = start_token(tokenizer)
    if bos is not None:
        windows[:, 0] = bos  # the first token of a window is never predicted, so no scored token is lost
    return windows


def calibration_windows(tokenizer: Any, source: str | Path = "pydocs", nsamples: int = 32, seqlen: int = 512,
                        seed: int = 0, *, default: bool = False, say=print) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens from the calibration split: (nsamples, seqlen) token ids.

    The documents are shuffled with ``seed``; the windows are disjoint and start with the tokenizer's
    start token when it adds one (:func:`start_token`). Raises a ValueError when the split holds fewer
    than ``nsamples × seqlen`` tokens.
    """
    _check_sizes(nsamples=nsamples, seqlen=seqlen)
    every = documents(source, default=default, say=say)
    docs = split_documents(every, "calibration")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=gen).tolist()
    need = nsamples * seqlen
    ids = _tokens(tokenizer, [docs[i] for i in order], 2 * need)
    if ids.numel() < need:
        raise ValueError(
            f"the calibration text of {str(source)!r} has {ids.numel():,} tokens, fewer than nsamples × seqlen = "
            f"{nsamples} × {seqlen} = {need:,}; give more text or lower --nsamples/--seqlen{_split_note(every, docs)}"
        )
    windows = ids[: ids.numel() // seqlen * seqlen].reshape(-1, seqlen)
    pick = torch.randperm(windows.shape[0], generator=gen)[:nsamples].sort().values
    return _start(windows[pick].clone(), tokenizer)


def eval_windows(tokenizer: Any, source: str | Path = "pydocs", windows: int = 16, seqlen: int = 512, *,
                 default: bool = False, say=print) -> torch.Tensor:
    """The first ``windows`` non-overlapping windows of ``seqlen`` tokens of the evaluation split, in a fixed order
    (each starting with the tokenizer's start token when it adds one, :func:`start_token`)."""
    _check_sizes(windows=windows, seqlen=seqlen)
    every = documents(source, default=default, say=say)
    docs = split_documents(every, "evaluation")
    need = windows * seqlen
    ids = _tokens(tokenizer, docs, need)
    if ids.numel() < need:
        raise ValueError(
            f"the evaluation text of {str(source)!r} has {ids.numel():,} tokens, fewer than windows × seqlen = "
            f"{windows} × {seqlen} = {need:,}; give more text or lower the number of windows{_split_note(every, docs)}"
        )
    return _start(ids[:need].reshape(windows, seqlen).clone(), tokenizer)


def _split_note(every: list[Document], split: list[Document]) -> str:
    """Why a split holds little: the text is split into calibration and evaluation by whole documents
    (a file's paragraphs, separated by blank lines; a folder's files)."""
    if len(every) > 3:
        return ""
    return (f" (a text is split into calibration and evaluation by whole documents — a file's paragraphs, "
            f"separated by blank lines, or a folder's files — and this one holds {len(every)}, {len(split)} of "
            "them in this split: separate paragraphs with blank lines, or give more files)")


def _check_sizes(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
