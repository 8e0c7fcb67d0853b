"""MoE-fication of a real transformer: every feed-forward block of all-MiniLM-L6-v2 split into experts.

For each (expert count, clustering method, seed) the six FFNs (384 -> 1536 -> 384, exact GELU) are split
one after the other, each with a linear router trained on that block's inputs over the shipped training
sentences (``subnets.data.sentences``, padding left out). The held-out sentences are then embedded with a
fraction of each block's experts active, chosen by the routers, by the oracle (the experts whose outputs
are largest) or at random, and compared with the dense model's embeddings by cosine similarity. The step
also measures paraphrase retrieval with the shipped verse pairs (each World English Bible verse must find
its Open English Bible rendering among all 1,000: top-1 accuracy, dense vs split with the routers), and
times one block's FFN (dense vs split at each fraction, same tokens, interleaved repeats, minimum) and the
whole encoder on the held-out set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from subnets.cost import measure
from subnets.data.sentences import load_paraphrase_pairs, load_sentences, sentences_source
from subnets.experts.moefy import MoefiedFeedForward, block_inputs, feed_forward_sites, moefy
from subnets.models.minilm import MiniLM, load_minilm
from subnets.progress import SILENT, Progress
from subnets.recipes.experts import MoefyMiniLMConfig
from subnets.steps import StepStore, Tensors, derive_seed, store_step

SELECTIONS = ("router", "oracle", "random")


def _cosines(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p05": float(torch.quantile(cos, 0.05))}


def _best_time(run: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


class MoefyMiniLMExperiment:
    """The steps of a ``moefy-minilm`` recipe, one per (experts, method, seed)."""

    def __init__(self, config: MoefyMiniLMConfig, device: torch.device, progress: Progress = SILENT) -> None:
        self.config, self.device, self.progress = config, device, progress
        self.minilm: MiniLM = load_minilm(device)
        self.train_sentences = load_sentences("train")
        self.heldout = load_sentences("heldout")
        self.pairs = load_paraphrase_pairs()
        self.source = {"model": self.minilm.source, "sentences": sentences_source()}
        self._dense: torch.Tensor | None = None
        self._dense_retrieval: float | None = None

    def run(self, steps: StepStore) -> list[dict[str, Any]]:
        """Run (or resume) every split of the recipe."""
        spec = self.config.moefy
        units = [(n, method, seed) for seed in self.config.seeds for n in spec.experts for method in spec.methods]
        self.progress.start("moefy-minilm", len(units), "splits of all six FFNs")
        results = []
        for unit in units:
            key = f"E{unit[0]}/{unit[1]}/s{unit[2]}"
            found = steps.get_step(key)
            if found is None:
                result, tensors = self._split(*unit)
                line = f"{key}: " + ", ".join(
                    f"{int(100 * f)}% active cos {result['cosine']['router'][i]['mean']:.4f} "
                    f"FFN x{result['ffn_speedup'][i]:.2f}" for i, f in enumerate(result["fractions"]))
                store_step(steps, self.progress, key, result, tensors, line)
                found = (result, tensors)
            results.append(found[0])
            self.progress.advance("moefy-minilm", 1)
        self.progress.finish("moefy-minilm")
        return results

    def retrieval(self, model: nn.Module | None = None) -> float:
        """Top-1 accuracy of finding each pair's second sentence from its first among all second sentences."""
        size = self.config.moefy.batch_size
        left = self.minilm.embed([a for a, _ in self.pairs], size, model)
        right = self.minilm.embed([b for _, b in self.pairs], size, model)
        return float(((left @ right.T).argmax(dim=1) == torch.arange(len(left))).float().mean())

    def dense_embeddings(self) -> torch.Tensor:
        """The dense model's embeddings of the held-out sentences (computed once)."""
        if self._dense is None:
            self._dense = self.minilm.embed(self.heldout, self.config.moefy.batch_size)
        return self._dense

    def _split(self, n_experts: int, method: str, seed: int) -> tuple[dict[str, Any], dict[str, Tensors]]:
        spec = self.config.moefy
        dense_embeddings = self.dense_embeddings()
        model = load_minilm(self.device).model
        layers = list(feed_forward_sites(model))
        timing_tokens = self._block_tokens(model, layers[len(layers) // 2], self.heldout)
        dense_ffn = _DenseFFN(model.get_submodule(layers[len(layers) // 2]))
        blocks: list[MoefiedFeedForward] = []
        started = time.perf_counter()
        # Split blocks compute the dense block exactly while every expert is on, so the inputs of all six
        # blocks can be collected from the dense model in one pass.
        inputs = self._block_tokens(model, layers, self.train_sentences)
        train_tokens = len(inputs[layers[0]])
        for i, layer in enumerate(layers):
            blocks.append(moefy(model, layer, n_experts, n_experts, inputs.pop(layer), method=method,
                                router_steps=spec.router_steps, seed=derive_seed(seed, i, n_experts, method)))
            self.progress.advance("moefy-minilm", 0, layer=i)
        split_seconds = time.perf_counter() - started
        ks = [max(1, round(f * n_experts)) for f in spec.fractions]
        cosine: dict[str, list[dict[str, float]]] = {s: [] for s in SELECTIONS}
        for selection in SELECTIONS:
            for k in ks:
                for block in blocks:
                    block.k, block.selection = k, selection
                torch.manual_seed(derive_seed(seed, "random-experts", k))
                cosine[selection].append(_cosines(self.minilm.embed(self.heldout, spec.batch_size, model),
                                                  dense_embeddings))
        retrieval = []
        for k in ks:
            for block in blocks:
                block.k, block.selection = k, "router"
            retrieval.append(self.retrieval(model))
        if self._dense_retrieval is None:
            self._dense_retrieval = self.retrieval()
        for block in blocks:
            block.k = n_experts
        all_active = _cosines(self.minilm.embed(self.heldout, spec.batch_size, model), dense_embeddings)
        ffn_seconds, ffn_speedup, encode_speedup = self._timings(blocks, dense_ffn, timing_tokens, ks, model)
        ffn_macs = self._ffn_macs(blocks[len(blocks) // 2], ks, timing_tokens)
        result = {
            "experts": n_experts, "method": method, "seed": seed, "fractions": list(spec.fractions), "k": ks,
            "layers": layers, "cosine": cosine, "all_active": all_active, "retrieval_top1": retrieval,
            "retrieval_top1_dense": self._dense_retrieval, "pairs": len(self.pairs), "split_seconds": split_seconds,
            "ffn_seconds": ffn_seconds, "ffn_speedup": ffn_speedup, "encode_speedup": encode_speedup,
            "ffn_macs": ffn_macs, "ffn_macs_dense": measure(dense_ffn, timing_tokens).macs,
            "timing_tokens": len(timing_tokens), "train_tokens": train_tokens, "threads": torch.get_num_threads(),
        }
        labels = {f"layer{i}": torch.cat([torch.full((len(g),), e) for e, g in enumerate(b.groups)])
                  for i, b in enumerate(blocks)}
        return result, {"groups": labels}

    def _block_tokens(self, model: nn.Module, layers: str | list[str],
                      sentences: list[str]) -> torch.Tensor | dict[str, torch.Tensor]:
        """The inputs of block(s) ``layers`` for every real (non-padding) token of ``sentences`` (batched
        longest first, so that batches carry little padding)."""
        ordered = sorted(sentences, key=len, reverse=True)
        batches = self.minilm.token_inputs(ordered, self.config.moefy.batch_size)
        return block_inputs(model, layers, batches, call=lambda m, b: m(**b), keep=lambda b: b["attention_mask"])

    @staticmethod
    def _ffn_macs(block: MoefiedFeedForward, ks: list[int], tokens: torch.Tensor) -> list[float]:
        """MACs per token of the split ``block`` on ``tokens`` (the held-out sentences' tokens at that block) with
        ``k`` experts chosen by its router, for each of ``ks``."""
        macs = []
        for k in ks:
            block.k, block.selection = k, "router"
            macs.append(measure(block, tokens).macs)
        block.k = block.num_experts
        return macs

    @torch.inference_mode()
    def _timings(self, blocks: list[MoefiedFeedForward], dense_ffn: nn.Module, tokens: torch.Tensor, ks: list[int],
                 model: nn.Module) -> tuple[dict[str, Any], list[float], list[float]]:
        """Seconds of one FFN on ``tokens`` (dense and split, at each k) and speed-ups of FFN and encoder."""
        block = blocks[len(blocks) // 2]
        repeats = self.config.moefy.timing_repeats
        variants: dict[str, Callable[[], Any]] = {"dense": lambda: dense_ffn(tokens)}
        for k in ks:
            variants[f"k={k}"] = lambda k=k: (setattr(block, "k", k), block(tokens))
        best = {name: float("inf") for name in variants}
        for _ in range(repeats):  # interleaved, so drifts in the machine's speed hit every variant alike
            for name, run in variants.items():
                best[name] = min(best[name], _best_time(run, 1))
        block.k = block.num_experts
        encode: dict[str, float] = {}
        heldout = self.heldout
        for label, k in [("dense", None), *((f"k={k}", k) for k in ks)]:
            for b in blocks:
                b.k = b.num_experts if k is None else k
            run = (lambda: self.minilm.embed(heldout, self.config.moefy.batch_size)) if k is None else \
                (lambda: self.minilm.embed(heldout, self.config.moefy.batch_size, model))
            encode[label] = _best_time(run, max(1, repeats // 3))
        for b in blocks:
            b.k = b.num_experts
        ffn_speedup = [best["dense"] / best[f"k={k}"] for k in ks]
        encode_speedup = [encode["dense"] / encode[f"k={k}"] for k in ks]
        return {"ffn": best, "encode": encode}, ffn_speedup, encode_speedup


class _DenseFFN(nn.Module):
    """The original dense FFN of a BERT layer (copied before the layer is split), for timing."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.up = nn.Linear(layer.intermediate.dense.in_features, layer.intermediate.dense.out_features)
        self.down = nn.Linear(layer.output.dense.in_features, layer.output.dense.out_features)
        self.up.load_state_dict(layer.intermediate.dense.state_dict())
        self.down.load_state_dict(layer.output.dense.state_dict())
        self.act = layer.intermediate.intermediate_act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))
