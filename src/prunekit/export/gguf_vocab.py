"""The tokenizer part of a GGUF file (``tokenizer.ggml.*``, ``tokenizer.chat_template``).

Copied field by field from the source GGUF when the model came from one (exact: llama.cpp's own
pre-tokenizer name, scores and token types stay as its converter wrote them); otherwise built from
the Hugging Face tokenizer with the ``gguf`` package's vocabulary readers (byte-level BPE → ``gpt2``,
SentencePiece-style BPE with byte fallback → ``llama``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np

TOKENIZER_PREFIX = "tokenizer."


@dataclass
class VocabPlan:
    """Where the tokenizer metadata comes from, how many tokens it has and what the report should say."""

    source: str
    tokens: int
    notes: list[str] = field(default_factory=list)
    fields: list[tuple[str, Any, gguf.GGUFValueType, gguf.GGUFValueType | None]] = field(default_factory=list, repr=False)


def _field_value(f: Any) -> Any:
    """The Python value of a GGUFReader field (strings as their raw bytes, arrays as lists)."""
    main = f.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        sub = f.types[-1]
        if sub == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]) for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if main == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]])
    return f.parts[f.data[0]].tolist()[0]


def vocab_from_gguf(path: str | Path, n_vocab: int) -> VocabPlan:
    """Every ``tokenizer.*`` field of the GGUF file at ``path``."""
    reader = gguf.GGUFReader(str(path))
    fields = []
    tokens = 0
    for key, f in reader.fields.items():
        if not key.startswith(TOKENIZER_PREFIX):
            continue
        value = _field_value(f)
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        fields.append((key, value, f.types[0], sub))
        if key == "tokenizer.ggml.tokens":
            tokens = len(value)
    if not tokens:
        raise ValueError(f"{path} has no tokenizer.ggml.tokens to copy")
    if tokens != n_vocab:
        raise ValueError(f"the source GGUF's tokenizer has {tokens} tokens but the model's embedding has "
                         f"{n_vocab} rows; llama.cpp needs them equal")
    return VocabPlan(f"copied from {Path(path).name}", tokens, fields=fields)


def vocab_from_tokenizer(tokenizer: Any, n_vocab: int) -> VocabPlan:
    """The tokenizer metadata built from a Hugging Face (fast) tokenizer, padded to ``n_vocab`` tokens."""
    with tempfile.TemporaryDirectory(prefix="prunekit-vocab-") as tmp:
        folder = Path(tmp)
        tokenizer.save_pretrained(str(folder))
        if not (folder / "tokenizer.json").is_file():
            raise ValueError("the tokenizer has no tokenizer.json (a fast tokenizer is needed to build GGUF "
                             "tokenizer metadata)")
        model = json.loads((folder / "tokenizer.json").read_text()).get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"a {model.get('type')} tokenizer cannot be written to GGUF here; supported: BPE "
                             "(byte-level as 'gpt2', SentencePiece-style with byte fallback as 'llama')")
        notes = []
        if model.get("byte_fallback"):
            vocab: Any = gguf.vocab.LlamaHfVocab(folder)
            kind = "llama"
        else:
            vocab = gguf.vocab.BpeVocab(folder)
            kind = "gpt2"
            notes.append("pre-tokenizer written as 'default': llama.cpp identifies a model's pre-tokenizer by "
                         "its converter's hash table; check tokenization there if the model is not a stock one")
        tokens, scores, types = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text if isinstance(text, bytes) else str(text).encode("utf-8"))
            scores.append(float(score))
            types.append(int(ttype))
        if len(tokens) > n_vocab:
            raise ValueError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab} rows")
        if len(tokens) < n_vocab:
            notes.append(f"vocabulary padded from {len(tokens)} to {n_vocab} tokens with unused [PADn] entries")
            for i in range(len(tokens), n_vocab):
                tokens.append(f"[PAD{i}]".encode())
                scores.append(-1000.0)
                types.append(int(gguf.TokenType.UNUSED))
        T = gguf.GGUFValueType
        fields: list[tuple[str, Any, T, T | None]] = [
            ("tokenizer.ggml.model", kind, T.STRING, None),
            ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
            ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
        ]
        if kind == "llama":
            fields.append(("tokenizer.ggml.scores", scores, T.ARRAY, T.FLOAT32))
        else:
            fields.append(("tokenizer.ggml.pre", "default", T.STRING, None))
        special = gguf.vocab.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=n_vocab)
        if kind == "gpt2" and special.merges:
            fields.append(("tokenizer.ggml.merges", list(special.merges), T.ARRAY, T.STRING))
        for typ, tid in special.special_token_ids.items():
            fields.append((f"tokenizer.ggml.{typ}_token_id", int(tid), T.UINT32, None))
        for typ, value in special.add_special_token.items():
            fields.append((f"tokenizer.ggml.add_{typ}_token", bool(value), T.BOOL, None))
        if special.chat_template:
            fields.append(("tokenizer.chat_template", str(special.chat_template), T.STRING, None))
    return VocabPlan(f"built from the Hugging Face tokenizer ({kind})", n_vocab, notes, fields)


def add_vocab(writer: gguf.GGUFWriter, plan: VocabPlan) -> None:
    """Write the planned tokenizer fields."""
    for key, value, vtype, sub in plan.fields:
        if vtype == gguf.GGUFValueType.ARRAY and sub is not None and sub != gguf.GGUFValueType.STRING:
            kind = {gguf.GGUFValueType.FLOAT32: np.float32, gguf.GGUFValueType.INT32: np.int32,
                    gguf.GGUFValueType.UINT32: np.uint32}.get(sub)
            if kind is not None:
                value = [kind(v).item() for v in value]
        writer.add_key_value(key, value, vtype, sub_type=sub)


KEPT_FILE = "prunekit-vocab.json"  # written by ``prunekit shrink --vocab`` beside the model: the old ids it kept


def kept_token_ids(folder: str | Path) -> list[int] | None:
    """The source-vocabulary ids a vocabulary-trimmed folder kept (``prunekit shrink --vocab``), or None."""
    path = Path(folder) / KEPT_FILE
    if not path.is_file():
        return None
    return [int(i) for i in json.loads(path.read_text())["kept"]]


def _raw(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def subset_vocab(plan: VocabPlan, keep: list[int]) -> VocabPlan:
    """The source GGUF's tokenizer fields cut to the token ids ``keep`` (ascending; new id i = old id keep[i]), for a
    model whose vocabulary was trimmed: per-token arrays indexed, merges kept where both parts and the result are
    kept, special token ids renumbered (one not kept is dropped, with a note)."""
    if not keep or sorted(set(keep)) != list(keep) or keep[0] < 0 or keep[-1] >= plan.tokens:
        raise ValueError(f"keep must be ascending, distinct token ids below {plan.tokens}")
    new_of = {old: new for new, old in enumerate(keep)}
    tokens = next((v for k, v, *_ in plan.fields if k == "tokenizer.ggml.tokens"), None)
    if tokens is None:
        raise ValueError("the tokenizer fields hold no tokenizer.ggml.tokens to cut")
    kept_tokens = {_raw(tokens[i]) for i in keep}
    notes = list(plan.notes)
    fields = []
    for key, value, vtype, sub in plan.fields:
        if vtype == gguf.GGUFValueType.ARRAY and isinstance(value, list) and len(value) == plan.tokens:
            value = [value[i] for i in keep]
        elif key == "tokenizer.ggml.merges":
            value = [m for m in value if (parts := _raw(m).split(b" ", 1)) and len(parts) == 2
                     and parts[0] in kept_tokens and parts[1] in kept_tokens and parts[0] + parts[1] in kept_tokens]
        elif key.endswith("_token_id") and vtype != gguf.GGUFValueType.ARRAY:
            if int(value) not in new_of:
                notes.append(f"{key} {value} is not among the kept tokens; left out")
                continue
            value = new_of[int(value)]
        fields.append((key, value, vtype, sub))
    return VocabPlan(f"{plan.source}, cut to the {len(keep)} tokens the trimmed vocabulary kept", len(keep), notes,
                     fields)
