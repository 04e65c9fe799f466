import pytest
import torch

from prunekit.datasets import text as T


class CharTokenizer:
    """One token per character: enough to test windows and splits."""

    def __call__(self, s, add_special_tokens=False):
        return {"input_ids": [ord(c) % 256 for c in s]}


def _folder(tmp_path, n=40, size=300):
    for i in range(n):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i} " + "x" * size)
    return tmp_path


def test_split_is_by_document_disjoint_and_stable(tmp_path):
    docs = T.documents(_folder(tmp_path))
    cal = {d.name for d in T.split_documents(docs, "calibration")}
    ev = {d.name for d in T.split_documents(docs, "evaluation")}
    assert cal.isdisjoint(ev) and cal | ev == {d.name for d in docs} and ev
    assert ev == {d.name for d in T.split_documents(T.documents(tmp_path), "evaluation")}


def test_calibration_windows_are_deterministic_and_differ_by_seed(tmp_path):
    _folder(tmp_path)
    a = T.calibration_windows(CharTokenizer(), tmp_path, nsamples=6, seqlen=50, seed=1)
    b = T.calibration_windows(CharTokenizer(), tmp_path, nsamples=6, seqlen=50, seed=1)
    c = T.calibration_windows(CharTokenizer(), tmp_path, nsamples=6, seqlen=50, seed=2)
    assert a.shape == (6, 50) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_windows_come_only_from_evaluation_documents(tmp_path):
    for i in range(60):
        (tmp_path / f"d{i:02d}.txt").write_text(chr(65 + i % 26) * 200)
    ev_letters = {d.text[0] for d in T.split_documents(T.documents(tmp_path), "evaluation")}
    w = T.eval_windows(CharTokenizer(), tmp_path, windows=2, seqlen=100)
    assert {chr(int(t)) for t in w.reshape(-1)} <= ev_letters | {"\n"}


def test_too_little_text_says_how_much_there_is(tmp_path):
    _folder(tmp_path, n=3, size=10)
    with pytest.raises(ValueError, match=r"fewer than nsamples × seqlen = 100 × 512"):
        T.calibration_windows(CharTokenizer(), tmp_path, nsamples=100, seqlen=512)


def test_single_file_splits_by_paragraph(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("\n\n".join(f"paragraph {i} " + "y" * 80 for i in range(50)))
    docs = T.documents(f)
    assert len(docs) == 50
    assert 0 < len(T.split_documents(docs, "evaluation")) < 50


def test_missing_pydocs_explicit_gives_the_apt_line_and_default_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(T, "PYDOCS_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="apt-get install python3.11-doc"):
        T.documents("pydocs")
    said = []
    monkeypatch.setattr(T, "_stdlib_docstrings", lambda: [T.Document("stdlib:json", "JSON encoder and decoder.")])
    docs = T.documents("pydocs", default=True, say=said.append)
    assert docs[0].name == "stdlib:json" and "standard library" in said[0]


def test_stdlib_docstrings_are_real_prose():
    docs = T._stdlib_docstrings()
    names = {d.name for d in docs}
    assert {"stdlib:json", "stdlib:collections"} <= names
    assert sum(len(d.text) for d in docs) > 100_000


def test_bad_sources_and_sizes(tmp_path):
    with pytest.raises(ValueError, match="unknown text source"):
        T.documents(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="holds no"):
        T.documents(tmp_path)
    with pytest.raises(ValueError, match="nsamples must be a positive integer"):
        T.calibration_windows(CharTokenizer(), tmp_path, nsamples=0)


def test_hub_sets_fail_offline_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"wikitext2.*(network|pip install datasets)"):
        T.documents("wikitext2")


@pytest.mark.skipif(not T.PYDOCS_DIR.is_dir(), reason="python3.11-doc is not installed")
def test_pydocs_has_hundreds_of_files_and_a_tenth_held_out():
    docs = T.documents("pydocs")
    ev = T.split_documents(docs, "evaluation")
    assert len(docs) > 400 and 0.05 < len(ev) / len(docs) < 0.15


class BosTokenizer(CharTokenizer):
    """Adds a start token (id 1) unless told not to, as Gemma's and Llama 3's tokenizers do."""

    bos_token_id = 1

    def __call__(self, s, add_special_tokens=True):
        ids = super().__call__(s)["input_ids"]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_windows_start_with_the_start_token_of_tokenizers_that_add_one(tmp_path):
    _folder(tmp_path)
    assert T.start_token(BosTokenizer()) == 1 and T.start_token(CharTokenizer()) is None
    cal = T.calibration_windows(BosTokenizer(), tmp_path, nsamples=4, seqlen=50, seed=1)
    plain = T.calibration_windows(CharTokenizer(), tmp_path, nsamples=4, seqlen=50, seed=1)
    assert (cal[:, 0] == 1).all() and torch.equal(cal[:, 1:], plain[:, 1:]) and not (cal[:, 1:] == 1).any()
    ev = T.eval_windows(BosTokenizer(), tmp_path, windows=2, seqlen=40)
    assert (ev[:, 0] == 1).all() and torch.equal(ev[:, 1:], T.eval_windows(CharTokenizer(), tmp_path, 2, 40)[:, 1:])
