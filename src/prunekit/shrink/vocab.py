"""Vocabulary trimming: keep the tokens a corpus uses, cut the embedding and LM head rows of the others,
and build a tokenizer of the kept tokens that encodes the corpus exactly as the original did.

Models whose embedding dominates (Gemma 3 270M: 262,144 × 640 of its 268M parameters) shrink most along
this axis. What is kept (:func:`plan_vocab`):

- every token the corpus is encoded with (the text source's calibration split, for ``prunekit shrink``);
- every token a kept token can be built from by the tokenizer's BPE merges, recursively. This closure is
  what makes the encoding *identical*: BPE applies, among the merges that fit, the one of lowest rank;
  every merge the original applied to a corpus word joins two kept tokens into a kept token, so it is
  still there, with its rank order, and the merges removed never applied to the corpus;
- the special tokens (the tokenizer's, the config's bos/eos/pad, those a post-processor inserts, and those
  its chat template names), and ``keep_tokens`` given by the user;
- with ``keep_bytes`` (the default) the byte tokens: the 256 byte symbols of a byte-level BPE (GPT-2,
  SmolLM2) or the ``<0x00>`` … ``<0xFF>`` byte-fallback tokens of a SentencePiece-style BPE (Gemma).

Text outside the kept vocabulary: a word whose original tokens are all kept encodes exactly as before
(same strings, ids remapped), wherever it appears. Any other word is encoded with the kept tokens only —
the merges that would build a removed token are gone — so it falls back to shorter kept pieces and, at
worst, to single bytes: nothing is lost (``decode(encode(text)) == text``), it only takes more tokens.
Without ``keep_bytes``, a character no kept token holds becomes the unknown token (only for tokenizers
that have one; a byte-level BPE without one would drop it silently, so that is refused).

The new ids are the kept old ids in their old order (special tokens at the front stay there); the
embedding, an untied LM head (and its bias) are cut to those rows, a tied head follows the embedding, and
the config's ``vocab_size`` and special-token ids follow, so the model and the tokenizer save and reload
with stock ``from_pretrained`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn

BYTE_FALLBACK = [f"<0x{b:02X}>" for b in range(256)]


@dataclass
class VocabPlan:
    """What :func:`trim_vocab_` keeps and the tokenizer it builds; computed by :func:`plan_vocab`."""

    kept: Tensor                    # old ids, ascending; new id i is old id kept[i]
    vocab_before: int
    used: int                       # tokens the corpus is encoded with
    by_merges: int                  # kept only because a kept token is built from them
    by_bytes: int                   # kept only as byte tokens
    by_special: int                 # kept only as special / user tokens
    fallback: str                   # what text outside the kept tokens falls back to: "bytes" or "unk"
    corpus_tokens: int
    corpus_chars: int
    tokenizer: Any = field(repr=False)   # the trimmed Hugging Face tokenizer

    def new_id(self, old: int) -> int | None:
        """The new id of old token id ``old``, or None when it is not kept."""
        i = int(torch.searchsorted(self.kept, torch.tensor(old)))
        return i if i < len(self.kept) and int(self.kept[i]) == old else None

    def remap(self, ids: Tensor) -> Tensor:
        """Old token ids as new ids; a ValueError when one of them is not kept."""
        lookup = torch.full((int(self.kept.max()) + 1,), -1, dtype=torch.long)
        lookup[self.kept] = torch.arange(len(self.kept))
        ids = torch.as_tensor(ids, dtype=torch.long)
        out = torch.where(ids <= self.kept.max(), lookup[ids.clamp(max=int(self.kept.max()))], -1)
        if bool((out < 0).any()):
            raise ValueError("these token ids hold tokens the trimmed vocabulary does not keep; encode the text "
                             "again with the trimmed tokenizer")
        return out


@dataclass
class VocabReport:
    """What :func:`trim_vocab_` did."""

    vocab_before: int
    vocab_after: int
    used: int
    by_merges: int
    by_bytes: int
    by_special: int
    fallback: str
    params_before: int
    params_after: int
    tied: bool
    corpus_tokens: int
    corpus_chars: int
    tokenizer: Any = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (JSON-ready; the tokenizer left out)."""
        return {k: v for k, v in self.__dict__.items() if k != "tokenizer"}

    def __str__(self) -> str:
        text = (f"vocabulary {self.vocab_before:,} → {self.vocab_after:,} tokens ({self.used:,} used by the corpus of "
                f"{self.corpus_tokens:,} tokens, {self.by_merges:,} they are built from, {self.by_bytes} bytes, "
                f"{self.by_special} special); parameters {self.params_before:,} → {self.params_after:,}; text outside "
                f"falls back to {'shorter pieces and bytes' if self.fallback == 'bytes' else 'the unknown token'}")
        return "; ".join([text, *self.notes])


def corpus_texts(source: str | Path = "pydocs") -> list[str]:
    """The calibration split of a text source (``pydocs``, a file or a folder), one string per document, as
    calibration windows read it (each followed by a blank line)."""
    from ..datasets.text import documents, split_documents

    docs = split_documents(documents(source), "calibration")
    if not docs:
        raise ValueError(f"the text source {str(source)!r} has no calibration documents to keep a vocabulary for")
    return [d.text + "\n\n" for d in docs]


def _tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"vocabulary trimming needs a fast (tokenizers-library) tokenizer; got "
                         f"{type(tokenizer).__name__}")
    return json.loads(backend.to_str())


def _merge_pair(m: Any) -> tuple[str, str]:
    return (m[0], m[1]) if isinstance(m, list) else tuple(m.split(" ", 1))  # type: ignore[return-value]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in range(0, len(texts), 64):
        out.extend(tokenizer(texts[i:i + 64], add_special_tokens=False)["input_ids"])
    return out


def _special_ids(tokenizer: Any, data: dict[str, Any], vocab_of: dict[str, int]) -> set[int]:
    """Special tokens: the tokenizer's, those its post-processor inserts and those its chat template names."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in (node.get("special_tokens") or {}).values() if isinstance(node.get("special_tokens"), dict) else []:
                ids.update(int(i) for i in v.get("ids", []))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data.get("post_processor"))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        for a in data.get("added_tokens", []):
            if a.get("special") and a["content"] in template:
                ids.add(int(a["id"]))
    return ids


def plan_vocab(tokenizer: Any, texts: Iterable[str], *, keep_bytes: bool = True, keep_tokens: Iterable[str] = (),
               keep_ids: Iterable[int] = (), check: bool = True) -> VocabPlan:
    """Which tokens to keep for ``texts`` and the trimmed tokenizer (see the module docstring); changes nothing.
    ``keep_ids``: more old ids to keep (a model config's special ids). With ``check`` the corpus is encoded
    again with the trimmed tokenizer and must give the same tokens (an error otherwise)."""
    texts = [t for t in texts]
    if not texts or not any(t for t in texts):
        raise ValueError("vocabulary trimming needs text: the tokens it uses are the ones kept; got no text")
    data = _tokenizer_json(tokenizer)
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"vocabulary trimming supports BPE tokenizers (GPT-2-style byte-level, SentencePiece-style "
                         f"with byte fallback); this one is {model.get('type')}")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ValueError("vocabulary trimming does not support BPE with a subword prefix or end-of-word suffix")
    vocab: dict[str, int] = model["vocab"]
    added = {a["content"]: int(a["id"]) for a in data.get("added_tokens", [])}
    every = {**vocab, **added}
    n_before = max(every.values()) + 1
    byte_level = _is_byte_level(data)
    unk = model.get("unk_token")
    if not keep_bytes and unk is None:
        raise ValueError("this tokenizer has no unknown token: without its byte tokens, text outside the kept "
                         "vocabulary would be dropped silently; keep the bytes (keep_bytes=True)")
    encoded = _encode(tokenizer, texts)
    used = {i for ids in encoded for i in ids}
    id_to_tok = {i: t for t, i in vocab.items()}
    missing = [t for t in keep_tokens if t not in every]
    if missing:
        raise ValueError(f"keep_tokens names {missing[0]!r}, which is not in the tokenizer's vocabulary")
    special = _special_ids(tokenizer, data, vocab) | {every[t] for t in keep_tokens} | \
        {int(i) for i in keep_ids if i is not None and 0 <= int(i) < n_before}
    if unk is not None and unk in vocab:
        special.add(vocab[unk])
    bytes_ids: set[int] = set()
    if keep_bytes:
        names = _byte_alphabet() if byte_level else BYTE_FALLBACK
        bytes_ids = {vocab[b] for b in names if b in vocab}
    # the closure: every token a kept token can be merged from, recursively
    producers: dict[str, list[tuple[str, str]]] = {}
    for m in model.get("merges", []):
        a, b = _merge_pair(m)
        producers.setdefault(a + b, []).append((a, b))
    seeds = used | special | bytes_ids
    kept_tok = {id_to_tok[i] for i in seeds if i in id_to_tok}
    stack = list(kept_tok)
    while stack:
        t = stack.pop()
        for a, b in producers.get(t, ()):
            for part in (a, b):
                if part not in kept_tok and part in vocab:
                    kept_tok.add(part)
                    stack.append(part)
    kept_set = seeds | {vocab[t] for t in kept_tok}
    kept = torch.tensor(sorted(kept_set), dtype=torch.long)
    new = _trimmed_tokenizer(tokenizer, data, kept)
    plan = VocabPlan(kept, n_before, len(used), len(kept_set - used - special - bytes_ids),
                     len(bytes_ids - used - special), len(special - used), "bytes" if keep_bytes else "unk",
                     sum(len(e) for e in encoded), sum(len(t) for t in texts), new)
    if check:
        again = _encode(new, texts)
        for text, a, b in zip(texts, encoded, again):
            if plan.remap(torch.tensor(a, dtype=torch.long)).tolist() != b:
                raise RuntimeError(f"the trimmed tokenizer encodes the corpus differently (text starting "
                                   f"{text[:40]!r}); please report this")
    return plan


def _is_byte_level(data: dict[str, Any]) -> bool:
    def has(node: Any) -> bool:
        if isinstance(node, dict):
            return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
        if isinstance(node, list):
            return any(has(v) for v in node)
        return False
    return has(data.get("pre_tokenizer"))


def _byte_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def _remap_ids(node: Any, new_of: dict[int, int]) -> Any:
    """A post-processor's special-token ids remapped (every ``special_tokens.*.ids`` list)."""
    if isinstance(node, dict):
        out = {k: _remap_ids(v, new_of) for k, v in node.items()}
        if isinstance(node.get("special_tokens"), dict):
            out["special_tokens"] = {name: {**v, "ids": [new_of[int(i)] for i in v.get("ids", [])]}
                                     for name, v in node["special_tokens"].items()}
        return out
    if isinstance(node, list):
        return [_remap_ids(v, new_of) for v in node]
    return node


def _trimmed_tokenizer(tokenizer: Any, data: dict[str, Any], kept: Tensor) -> Any:
    """The Hugging Face tokenizer of the kept tokens: vocabulary renumbered, merges filtered to kept tokens,
    added tokens and post-processor ids remapped; saved and read back with AutoTokenizer."""
    from transformers import AutoTokenizer

    new_of = {int(old): new for new, old in enumerate(kept.tolist())}
    model = dict(data["model"])
    vocab = {t: new_of[i] for t, i in model["vocab"].items() if i in new_of}
    model["vocab"] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = []
    for m in model.get("merges", []):
        a, b = _merge_pair(m)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["merges"] = merges
    out = dict(data)
    out["model"] = model
    out["added_tokens"] = [{**a, "id": new_of[int(a["id"])]} for a in data.get("added_tokens", [])
                           if int(a["id"]) in new_of]
    out["post_processor"] = _remap_ids(data.get("post_processor"), new_of)
    with tempfile.TemporaryDirectory(prefix="prunekit-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(out, ensure_ascii=False))
        cfg_path = Path(tmp) / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            dec = cfg.get("added_tokens_decoder")
            if isinstance(dec, dict):
                cfg["added_tokens_decoder"] = {str(new_of[int(k)]): v for k, v in dec.items() if int(k) in new_of}
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        return AutoTokenizer.from_pretrained(tmp)


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "decoder_start_token_id")


def config_token_ids(config: Any) -> list[int]:
    """The special token ids a model config names (bos, eos, pad, unk, decoder start), for ``plan_vocab(keep_ids=)``."""
    ids: list[int] = []
    for name in _ID_FIELDS:
        v = getattr(config, name, None)
        ids.extend(v if isinstance(v, (list, tuple)) else [v] if v is not None else [])
    return [int(i) for i in ids]


def _remap_config_ids(config: Any, plan: VocabPlan) -> None:
    for name in _ID_FIELDS:
        v = getattr(config, name, None)
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            setattr(config, name, [plan.new_id(int(i)) for i in v if plan.new_id(int(i)) is not None])
        else:
            setattr(config, name, plan.new_id(int(v)))


@torch.no_grad()
def trim_vocab_(model: nn.Module, tokenizer: Any, texts: Iterable[str] | None = None, *, keep_bytes: bool = True,
                keep_tokens: Iterable[str] = (), plan: VocabPlan | None = None) -> VocabReport:
    """Keep only the tokens ``texts`` use (plus what they are built from, the special tokens and, with
    ``keep_bytes``, the byte tokens) in ``model``'s embedding and LM head, in place; the trimmed tokenizer is
    ``report.tokenizer`` and encodes ``texts`` exactly as ``tokenizer`` did (checked). See the module
    docstring for text outside the kept tokens. Refused, before any change, for a model without a token
    embedding of the tokenizer's size or an LM head of its rows."""
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding):
        raise ValueError(f"{type(model).__name__} has no token embedding (nn.Embedding) to trim")
    config = model.config
    rows = emb.weight.shape[0]
    if head is not None and head.weight.shape[0] != rows:
        raise ValueError(f"the LM head has {head.weight.shape[0]} rows, the embedding {rows}; cannot trim them alike")
    if plan is None:
        if texts is None:
            raise ValueError("pass texts= (the corpus whose tokens are kept) or a plan= from plan_vocab")
        if len(tokenizer) > rows:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the embedding only {rows} rows: the "
                             "tokenizer is not this model's")
        plan = plan_vocab(tokenizer, texts, keep_bytes=keep_bytes, keep_tokens=keep_tokens,
                          keep_ids=config_token_ids(config))
    if int(plan.kept.max()) >= rows:
        raise ValueError(f"the tokenizer has token ids up to {int(plan.kept.max())} but the embedding only {rows} "
                         "rows: the tokenizer is not this model's")
    tied = head is not None and head.weight is emb.weight
    before = _param_count(model)
    keep = plan.kept.to(emb.weight.device)
    emb.weight = nn.Parameter(emb.weight.detach().index_select(0, keep).clone(), requires_grad=emb.weight.requires_grad)
    emb.num_embeddings = len(keep)
    if emb.padding_idx is not None:
        emb.padding_idx = plan.new_id(int(emb.padding_idx))
    notes = []
    if head is not None:
        if tied:
            head.weight = emb.weight
        else:
            head.weight = nn.Parameter(head.weight.detach().index_select(0, keep).clone(),
                                       requires_grad=head.weight.requires_grad)
        if getattr(head, "bias", None) is not None:
            head.bias = nn.Parameter(head.bias.detach().index_select(0, keep).clone())
        if isinstance(head, nn.Linear):
            head.out_features = len(keep)
    else:
        notes.append("the model has no LM head; only the embedding was trimmed")
    if len(keep) == rows:
        notes.append("nothing removed: the corpus, the tokens they are built from, the bytes and the special tokens "
                     "cover the whole vocabulary")
    config.vocab_size = len(keep)
    _remap_config_ids(config, plan)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        _remap_config_ids(gen, plan)
    return VocabReport(plan.vocab_before, len(keep), plan.used, plan.by_merges, plan.by_bytes, plan.by_special,
                       plan.fallback, before, _param_count(model), tied, plan.corpus_tokens, plan.corpus_chars,
                       plan.tokenizer, notes)


@torch.no_grad()
def text_loss(model: nn.Module, tokenizer: Any, texts: Iterable[str], seqlen: int = 512) -> dict[str, float]:
    """Next-token loss of ``model`` over ``texts`` (joined) as ``tokenizer`` encodes them, every token predicted once,
    in windows of ``seqlen`` tokens (starting with the tokenizer's start token when it adds one, else with the
    previous window's last token). Returns the summed loss (nats), the tokens scored, the UTF-8 bytes of the text
    and the bits per byte: a figure that compares models with different tokenizers over the same text, where
    per-token perplexity cannot."""
    import math

    import torch.nn.functional as F

    from ..datasets.text import start_token

    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an int of at least 2, got {seqlen!r}")
    text = "".join(texts)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = start_token(tokenizer)
    prefix = [bos] if bos is not None else []
    if len(ids) < (1 if prefix else 2):
        raise ValueError(f"the text gives {len(ids)} token(s): nothing to score; give more text")
    total, scored = 0.0, 0
    p = 0 if prefix else 1  # the next token to predict
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        while p < len(ids):
            ctx = p if prefix else p - 1
            window = prefix + ids[ctx:ctx + seqlen - len(prefix)]
            x = torch.tensor([window], dtype=torch.long, device=device)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            y = x[0, 1:]
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            scored += y.numel()
            p = ctx + len(window) - len(prefix)
    finally:
        model.train(was_training)
    nbytes = len(text.encode("utf-8"))
    return {"nats": total, "tokens": scored, "bytes": nbytes, "bits_per_byte": total / math.log(2) / nbytes,
            "perplexity": math.exp(total / max(scored, 1))}
