"""Sentence readouts of all-MiniLM-L6-v2 compared on paraphrase retrieval (the ``pooling-embeddings`` kind).

A readout turns the frozen model's hidden states into one sentence vector: a token op (``create_pool(name,
"tokens")``) over one hidden state's tokens, or a layer op (``create_pool(name, "layers")``) over all seven
hidden states (the embedding layer's output and the six transformer layers), applied token by token, followed by
a token op. The model's own readout, the mean of the last layer's tokens, is the reference every other readout is
compared with. Readout names: ``TOKEN`` (last layer), ``TOKEN@K`` (hidden state K, 0 = embeddings, 6 = last),
``LAYERS-layers/TOKEN`` (e.g. ``weighted-layers/mean``).

The task is paraphrase retrieval on the shipped verse pairs (``subnets.data.sentences``: the same New Testament
verse in the World English Bible and the Open English Bible). Pairs are split by book: the books sorted by name,
every ``every``-th from index ``offset`` is a test book; no book is on both sides. On the test pairs each WEB verse
must find its OEB partner among all test OEB verses by cosine similarity, and the reverse; top-1 accuracy and the
mean reciprocal rank are averaged over both directions.

MiniLM runs once (frozen, eval mode, no gradients) over every verse of the run, keeping the real tokens of all
seven hidden states in float32. That cache is kept in memory only (590 MiB for the 2,000 verses, too much to store
with every run): a resumed run encodes again (20 s on one CPU thread), and only when some readout is not stored yet.
Readouts with parameters train on the training pairs only, with a symmetric in-batch contrastive loss (InfoNCE),
Adam and a fixed number of steps, on the CPU (where the cache lives). Each starts exactly at an unlearned readout:
attention pooling's query and cross-layer attention's query start at zero (the mean), weighted layers at equal
weights (the mean over layers), and multi-head attention pooling starts at the mean too, with its query at zero and
its value and output projections at the identity. The seed sets the batch order, and multi-head pooling's key
projection (its only random initial value).

Each readout of each seed is one step (its test ranks are stored); a final ``compare`` step tests every readout
against the reference over the test pairs: the per-pair score is the share of the pair's two directions retrieved
at rank 1 (averaged over seeds for learned readouts), the p-value is a two-sided paired permutation test (random
sign flips of the per-pair differences), the interval a paired bootstrap percentile interval, and p-values are
Holm-adjusted over all readouts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from subnets.data.sentences import ParaphrasePair, load_paraphrase_records, sentences_source
from subnets.models.minilm import MiniLM, load_minilm
from subnets.pooling.factory import create_pool
from subnets.pooling.tokens import MultiHeadAttentionPool
from subnets.progress import SILENT, Progress
from subnets.recipes.pooling import FEATURES, STANDARD, STATES, PoolingEmbeddingsConfig, Readout, parse_readout
from subnets.stats import bootstrap_interval, holm, paired_bootstrap_interval, paired_permutation_test
from subnets.steps import StepStore, Tensors, derive_seed, store_step

ENCODE_BATCH = 64
_EVAL_BATCH = 256
_CHECK_SENTENCES = 32


def book(ref: str) -> str:
    """The book of a verse reference: ``"1 John 3:16"`` -> ``"1 John"``."""
    return ref.rsplit(" ", 1)[0]


def split_by_book(records: list[ParaphrasePair], every: int, offset: int) -> tuple[list[int], list[int], list[str]]:
    """Train and test pair indices (in file order) and the test books: the books sorted by name, those at index
    ``offset``, ``offset + every``, ... are test books; every pair of a book goes to its book's side."""
    books = sorted({book(r.ref) for r in records})
    test_books = [b for i, b in enumerate(books) if i % every == offset]
    held = set(test_books)
    train = [i for i, r in enumerate(records) if book(r.ref) not in held]
    test = [i for i, r in enumerate(records) if book(r.ref) in held]
    return train, test, test_books


@dataclass
class HiddenStates:
    """The real tokens of every hidden state of a list of sentences: ``states`` ``(7, tokens, 384)``, sentence
    ``i``'s tokens at ``offsets[i]:offsets[i + 1]`` ([CLS] first, [SEP] last)."""

    states: torch.Tensor
    offsets: torch.Tensor

    def gather(self, ids: torch.Tensor, state: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tokens of sentences ``ids``, concatenated: ``(7, M, 384)`` (all states) or ``(M, 384)`` (one),
        with ``index`` ``(B, T)`` into those M tokens (padding points at token 0) and the mask ``(B, T)``."""
        lengths = self.offsets[ids + 1] - self.offsets[ids]
        positions = torch.arange(int(lengths.max()))
        mask = positions < lengths[:, None]
        tokens = (self.offsets[ids][:, None] + positions)[mask]
        index = torch.zeros(mask.shape, dtype=torch.long)
        index[mask] = torch.arange(len(tokens))
        values = self.states[:, tokens] if state is None else self.states[state, tokens]
        return values, index, mask


@torch.no_grad()
def encode(minilm: MiniLM, sentences: list[str], batch_size: int = ENCODE_BATCH) -> HiddenStates:
    """Run MiniLM over ``sentences`` (batched longest first) and keep every hidden state of the real tokens."""
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i].strip()))
    packs, lengths = [], torch.zeros(len(sentences), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        inputs = minilm.tokenize([sentences[i] for i in ids])
        hidden = minilm.model(**inputs, output_hidden_states=True).hidden_states
        mask = inputs["attention_mask"].bool()
        packs.append(torch.stack(hidden)[:, mask].float().cpu())  # (7, real tokens of the batch, 384), row-major
        lengths[ids] = mask.sum(1).cpu()
    sorted_offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[order].cumsum(0)])
    start_of = torch.empty(len(sentences), dtype=torch.long)
    start_of[order] = sorted_offsets[:-1]
    tokens = torch.cat([torch.arange(int(start_of[i]), int(start_of[i] + lengths[i])) for i in range(len(sentences))])
    return HiddenStates(torch.cat(packs, dim=1)[:, tokens], torch.cat([torch.zeros(1, dtype=torch.long),
                                                                      lengths.cumsum(0)]))


def _options(name: str, domain: str, heads: int) -> dict[str, int]:
    if domain == "tokens":
        return {"attention": {"features": FEATURES}, "multihead": {"features": FEATURES, "heads": heads}}.get(name, {})
    return {"weighted": {"num_layers": STATES}, "attention": {"features": FEATURES}}.get(name, {})


class ReadoutHead(nn.Module):
    """A readout as a module: hidden states of sentences -> unit-norm sentence vectors ``(B, 384)``."""

    def __init__(self, readout: Readout, heads: int = 4) -> None:
        super().__init__()
        self.readout = readout
        self.layers = None if readout.layers is None else create_pool(readout.layers, "layers",
                                                                       **_options(readout.layers, "layers", heads))
        self.tokens = create_pool(readout.tokens, "tokens", **_options(readout.tokens, "tokens", heads))
        if isinstance(self.tokens, MultiHeadAttentionPool):  # start at the mean of the tokens (see the docstring)
            with torch.no_grad():
                self.tokens.query.zero_()
                self.tokens.value.weight.copy_(torch.eye(FEATURES))
                self.tokens.out.weight.copy_(torch.eye(FEATURES))
                self.tokens.out.bias.zero_()

    def forward(self, cache: HiddenStates, ids: torch.Tensor) -> torch.Tensor:
        values, index, mask = cache.gather(ids, self.readout.state)
        if self.layers is not None:  # layer ops act token by token: pool the concatenated tokens, no padding
            values = self.layers(values.unsqueeze(1))[0]
        return F.normalize(self.tokens(values[index], mask), dim=-1)


def embed(head: ReadoutHead, cache: HiddenStates, ids: torch.Tensor) -> torch.Tensor:
    """Sentence vectors of sentences ``ids`` (no gradients, in chunks)."""
    with torch.no_grad():
        return torch.cat([head(cache, ids[i:i + _EVAL_BATCH]) for i in range(0, len(ids), _EVAL_BATCH)])


def retrieval_ranks(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each query ``i``, the rank (1 = best) of candidate ``i`` among all candidates by cosine similarity
    (unit-norm inputs); ties count in the query's favour."""
    scores = queries @ candidates.T
    return 1 + (scores > scores.diagonal()[:, None]).sum(1)


def _evaluate(head: ReadoutHead, cache: HiddenStates, web: torch.Tensor,
              oeb: torch.Tensor) -> tuple[Tensors, dict[str, float]]:
    """Both directions' ranks, and the mean cosine of partners and of all other (WEB, OEB) combinations."""
    left, right = embed(head, cache, web), embed(head, cache, oeb)
    scores = left @ right.T
    partners = scores.diagonal()
    others = (scores.sum() - partners.sum()) / max(1, scores.numel() - len(partners))
    return ({"web_to_oeb": retrieval_ranks(left, right), "oeb_to_web": retrieval_ranks(right, left)},
            {"cos_partner": float(partners.mean()), "cos_other": float(others)})


def retrieval_metrics(web_to_oeb: torch.Tensor, oeb_to_web: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy and MRR from both directions' ranks (each direction's, and their mean)."""
    top1 = [float((r == 1).double().mean()) for r in (web_to_oeb, oeb_to_web)]
    mrr = [float((1.0 / r.double()).mean()) for r in (web_to_oeb, oeb_to_web)]
    return {"top1": (top1[0] + top1[1]) / 2, "top1_web_to_oeb": top1[0], "top1_oeb_to_web": top1[1],
            "mrr": (mrr[0] + mrr[1]) / 2}


def pair_scores(web_to_oeb: torch.Tensor, oeb_to_web: torch.Tensor) -> np.ndarray:
    """Per test pair, the share of its two directions retrieved at rank 1 (0, 0.5 or 1)."""
    return ((web_to_oeb == 1).double() + (oeb_to_web == 1).double()).numpy() / 2


def paired_test(scores: np.ndarray, reference: np.ndarray, resamples: int, confidence: float,
                seed: int) -> dict[str, float]:
    """``scores - reference`` over test pairs: the mean difference, a paired bootstrap percentile interval
    and the two-sided p-value of a paired permutation test (random swaps within pairs), both drawn from one
    generator seeded by ``seed`` (the test first)."""
    rng = np.random.default_rng(seed)
    p = paired_permutation_test(scores, reference, resamples, rng)
    low, high = paired_bootstrap_interval(scores, reference, resamples, confidence, rng)
    return {"diff": float(np.mean(scores - reference)), "low": low, "high": high, "p": p}


def mean_interval(scores: np.ndarray, resamples: int, confidence: float, seed: int) -> list[float]:
    """A bootstrap percentile interval of the mean of per-pair ``scores`` (the test pairs' sampling error)."""
    return list(bootstrap_interval(scores, resamples, confidence, seed))


def info_nce(left: torch.Tensor, right: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of unit-norm pair embeddings: row i of ``left`` must pick row i of ``right`` among the
    batch, and the reverse."""
    logits = left @ right.T / temperature
    target = torch.arange(len(left), device=left.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class PoolingEmbeddingsExperiment:
    """The steps of a ``pooling-embeddings`` recipe: ``encode`` (a record of the cache), one per unlearned readout
    and per (learned readout, seed), then ``compare``."""

    def __init__(self, config: PoolingEmbeddingsConfig, device: torch.device, progress: Progress = SILENT) -> None:
        self.config, self.progress = config, progress
        split = config.split
        records = load_paraphrase_records()
        train, test, self.test_books = split_by_book(records, split.every, split.offset)
        self.train = train[:split.max_train or None]
        self.test = test[:split.max_test or None]
        if len(self.test) < 2 or not self.train:
            raise ValueError(f"split: every={split.every}, offset={split.offset} leaves {len(self.train)} train and "
                             f"{len(self.test)} test pairs (need at least 1 and 2)")
        self.readouts = [parse_readout(name) for name in config.readouts]
        with torch.random.fork_rng(devices=[]):  # a bad op option fails here, before the model loads
            self.learned = {r: any(True for _ in ReadoutHead(r, config.learned.heads).parameters())
                            for r in self.readouts}
        self.minilm = load_minilm(device)
        pairs = [records[i] for i in self.train + self.test]
        self.sentences = [p.web for p in pairs] + [p.oeb for p in pairs]
        self.refs = [p.ref for p in pairs]
        self.source = {"model": self.minilm.source, "sentences": sentences_source(),
                       "split": f"paraphrase pairs by book, books sorted by name, every {split.every}th from index "
                                f"{split.offset} held out: {', '.join(self.test_books)}; {len(self.train)} train / "
                                f"{len(self.test)} test pairs"}
        self._cache: HiddenStates | None = None

    def units(self) -> list[tuple[Readout, int | None]]:
        """(readout, seed) of every readout step, in the recipe's order; unlearned readouts run once (seed None)."""
        units: list[tuple[Readout, int | None]] = []
        for readout in self.readouts:
            units += [(readout, seed) for seed in self.config.seeds] if self.learned[readout] else [(readout, None)]
        return units

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every readout, then the comparison with the standard readout."""
        units = self.units()
        self.progress.start("pooling-embeddings", len(units), "readouts (learned ones per seed)")
        results, ranks = [], {}
        for readout, seed in units:
            key = readout.name if seed is None else f"{readout.name}/s{seed}"
            found = steps.get_step(key)
            if found is None:
                found = self._readout(readout, seed, steps)
                store_step(steps, self.progress, key, *found,
                           f"{key}: top-1 {100 * found[0]['top1']:.2f}%, MRR {found[0]['mrr']:.4f}"
                           + (f", trained {found[0]['train_seconds']:.1f}s" if seed is not None else ""))
            results.append(found[0])
            ranks[key] = found[1]["ranks"]
            self.progress.advance("pooling-embeddings", 1)
        self.progress.finish("pooling-embeddings")
        compared = steps.get_step("compare")
        if compared is None:
            compared = (self.compare(units, ranks), {})
            steps.put_step("compare", compared[0])
        return [*results, compared[0]]

    def cache(self, steps: StepStore) -> HiddenStates:
        """The hidden states of every verse of the run (encoded at most once per process; ``encode`` records it)."""
        if self._cache is None:
            started = time.perf_counter()
            self._cache = encode(self.minilm, self.sentences)
            seconds = time.perf_counter() - started
            check = self._standard_check(self._cache)
            line = (f"encoded {len(self.sentences)} verses ({self._cache.states.shape[1]} tokens, "
                    f"{self._cache.states.numel() * 4 / 2 ** 20:.0f} MiB) in {seconds:.1f}s; standard readout vs "
                    f"MiniLM.embed: max |diff| {check:.2e}")
            steps.log(line)
            self.progress.log(line)
            if steps.get_step("encode") is None:
                lengths = self._cache.offsets.diff()
                steps.put_step("encode", {
                    "step": "encode", "seconds": seconds, "threads": torch.get_num_threads(),
                    "sentences": len(self.sentences), "tokens": int(lengths.sum()), "max_tokens": int(lengths.max()),
                    "cache_mib": self._cache.states.numel() * 4 / 2 ** 20, "standard_check_max_abs_diff": check,
                    "train_pairs": len(self.train), "test_pairs": len(self.test), "test_books": self.test_books,
                    "train_books": sorted({book(self.refs[i]) for i in range(len(self.train))}),
                })
        return self._cache

    def _standard_check(self, cache: HiddenStates) -> float:
        """Max |difference| between the standard readout of ``cache`` and :meth:`MiniLM.embed` on some test verses."""
        ids = torch.arange(len(self.train), len(self.train) + min(_CHECK_SENTENCES, len(self.test)))
        ours = embed(ReadoutHead(parse_readout(STANDARD)), cache, ids)
        theirs = self.minilm.embed([self.sentences[i] for i in ids.tolist()], ENCODE_BATCH)
        return float((ours - theirs).abs().max())

    def _ids(self, pairs: list[int] | range) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache ids of the WEB and OEB verses of the run's pairs at positions ``pairs``."""
        ids = torch.as_tensor(list(pairs), dtype=torch.long)
        return ids, ids + len(self.refs)

    def _readout(self, readout: Readout, seed: int | None, steps: StepStore) -> tuple[dict[str, Any],
                                                                                        dict[str, Tensors]]:
        cache = self.cache(steps)
        spec = self.config.learned
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, readout.name, "init"))
            head = ReadoutHead(readout, spec.heads)
        web, oeb = self._ids(range(len(self.train), len(self.refs)))
        result: dict[str, Any] = {"step": "readout", "readout": readout.name, "description": readout.describe(),
                                  "order": self.readouts.index(readout), "learned": seed is not None,
                                  "test_pairs": len(web)}
        tensors: dict[str, Tensors] = {}
        if seed is not None:
            start = retrieval_metrics(*_evaluate(head, cache, web, oeb)[0].values())
            result.update(seed=seed, top1_init=start["top1"], mrr_init=start["mrr"],
                          parameters=sum(p.numel() for p in head.parameters()), **self._train(head, cache, seed))
            tensors["parameters"] = {k: v.detach().clone() for k, v in head.state_dict().items()}
            if readout.layers == "weighted":
                result["layer_weights"] = torch.softmax(head.layers.logits.detach(), 0).tolist()
        ranks, cosines = _evaluate(head, cache, web, oeb)
        result.update(retrieval_metrics(ranks["web_to_oeb"], ranks["oeb_to_web"]), **cosines)
        tensors["ranks"] = ranks
        return result, tensors

    def _train(self, head: ReadoutHead, cache: HiddenStates, seed: int) -> dict[str, Any]:
        """Train ``head`` on the training pairs; returns the losses and the time taken."""
        spec = self.config.learned
        matrices = [p for p in head.parameters() if p.dim() >= 2]
        others = [p for p in head.parameters() if p.dim() < 2]
        optimizer = torch.optim.Adam([{"params": others, "lr": spec.lr}, {"params": matrices, "lr": spec.matrix_lr}])
        generator = torch.Generator().manual_seed(derive_seed(seed, "batches"))
        size = min(spec.batch_size, len(self.train))
        per_epoch = len(self.train) // size  # full batches only: a pair never meets itself as a negative
        losses, batches = [], []
        started = time.perf_counter()
        head.train()
        for step in range(spec.steps):
            if not batches:
                order = torch.randperm(len(self.train), generator=generator)
                batches = [order[i * size:(i + 1) * size] for i in range(per_epoch)]
            web, oeb = self._ids(batches.pop(0).tolist())
            loss = info_nce(head(cache, web), head(cache, oeb), spec.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if step % 20 == 19:
                self.progress.advance("pooling-embeddings", 0, step=step + 1, loss=losses[-1])
        head.eval()
        tail = losses[-max(1, len(losses) // 10):]
        return {"train_seconds": time.perf_counter() - started, "loss_first": losses[0],
                "loss_last": sum(tail) / len(tail), "steps": spec.steps}

    def compare(self, units: list[tuple[Readout, int | None]], ranks: dict[str, Tensors]) -> dict[str, Any]:
        """Every readout against the standard one over the test pairs (see the module docstring)."""
        stats_spec = self.config.stats
        scores: dict[str, list[np.ndarray]] = {}
        for readout, seed in units:
            key = readout.name if seed is None else f"{readout.name}/s{seed}"
            scores.setdefault(readout.name, []).append(pair_scores(ranks[key]["web_to_oeb"], ranks[key]["oeb_to_web"]))
        reference = scores[STANDARD][0]
        rows: dict[str, dict[str, Any]] = {}
        for name, per_seed in scores.items():
            mean = np.mean(per_seed, axis=0)
            row: dict[str, Any] = {"interval": mean_interval(mean, stats_spec.resamples, stats_spec.confidence,
                                                             derive_seed("interval", name))}
            if name != STANDARD:
                row.update(paired_test(mean, reference, stats_spec.resamples, stats_spec.confidence,
                                       derive_seed("test", name)))
                if len(per_seed) > 1:
                    row["p_per_seed"] = [paired_test(s, reference, stats_spec.resamples, stats_spec.confidence,
                                                     derive_seed("test", name, i))["p"] for i, s in enumerate(per_seed)]
            rows[name] = row
        tested = [name for name in rows if name != STANDARD]
        for name, adjusted in zip(tested, holm([rows[name]["p"] for name in tested]), strict=True):
            rows[name]["p_holm"] = adjusted
        return {"step": "compare", "reference": STANDARD, "test_pairs": len(self.test),
                "resamples": stats_spec.resamples, "confidence": stats_spec.confidence, "readouts": rows,
                "test": "per test pair, the share of its two directions at rank 1 (mean over seeds for learned "
                        "readouts); two-sided paired permutation test of the mean difference to the standard "
                        "readout, paired bootstrap percentile interval, Holm-adjusted over readouts"}
