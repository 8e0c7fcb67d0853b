"""MoE-fication and upcycling: exactness with every expert on, balanced groups, a useful router, errors."""

from __future__ import annotations

import pytest
import torch

from subnets.experts.moefy import (
    MoefiedFeedForward,
    balanced_kmeans,
    block_inputs,
    feed_forward_sites,
    moefy,
    upcycle,
)
from subnets.models import build_model


def _mlp(hidden: list[int], activation: str = "relu", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp", (20,), 5, hidden=hidden, activation=activation).eval()


@pytest.mark.parametrize("layer", ["fc1", "fc2"])
@pytest.mark.parametrize("method", ["weights", "coactivation"])
def test_moefy_with_every_expert_active_reproduces_the_dense_model(layer: str, method: str) -> None:
    model = _mlp([30, 14])
    x = torch.randn(200, 20)
    dense = model(x)
    inputs = block_inputs(model, layer, [x[:100], x[100:]])
    assert inputs.shape == (200, 20 if layer == "fc1" else 30)
    block = moefy(model, layer, 4, 4, inputs, method=method, router_steps=20)
    assert isinstance(getattr(model, layer), MoefiedFeedForward)
    torch.testing.assert_close(model(x), dense, atol=1e-5, rtol=1e-5)
    block.k = 2
    assert not torch.allclose(model(x), dense, atol=1e-3)  # the test can tell experts apart


def test_groups_partition_the_neurons_into_nearly_equal_sizes() -> None:
    model = _mlp([30, 14])
    block = moefy(model, "fc1", 7, 2, torch.randn(64, 20), method="weights", router_steps=1)
    neurons = torch.cat(block.groups).sort().values
    assert torch.equal(neurons, torch.arange(30))
    assert sorted(len(g) for g in block.groups) == [4, 4, 4, 4, 4, 5, 5]
    # padded neurons (experts of 4 in a block of width 5) hold exact zeros
    for e, group in enumerate(block.groups):
        assert torch.all(block.experts.w_in[e, :, len(group):] == 0)
        assert torch.all(block.experts.w_out[e, len(group):] == 0)


def test_balanced_kmeans_recovers_planted_clusters() -> None:
    torch.manual_seed(3)
    centres = torch.randn(4, 6) * 10
    points = centres.repeat_interleave(5, dim=0) + 0.1 * torch.randn(20, 6)
    labels = balanced_kmeans(points, 4, seed=1)
    for c in range(4):  # each planted cluster lands in one group of its own
        assert len(set(labels[5 * c: 5 * c + 5].tolist())) == 1
    assert len(set(labels.tolist())) == 4


def test_a_trained_router_beats_random_routing() -> None:
    model = _mlp([64, 16], seed=2)
    x = torch.randn(2000, 20)
    dense = model(x).detach()
    inputs = block_inputs(model, "fc1", [x])
    block = moefy(model, "fc1", 8, 2, inputs, router_steps=300)
    with torch.no_grad():
        routed = (model(x) - dense).square().mean()
        torch.manual_seed(0)
        torch.nn.init.normal_(block.router.weight)
        random = (model(x) - dense).square().mean()
    assert routed < 0.7 * random


def test_upcycled_experts_compute_the_dense_block() -> None:
    model = _mlp([24, 24, 24])
    x = torch.randn(50, 20)
    dense = model(x)
    moe = upcycle(model, "fc2", n_experts=4, k=2)
    torch.testing.assert_close(model(x), dense, atol=1e-5, rtol=1e-5)
    assert moe.last_routing is not None and moe.last_routing.experts.shape == (50, 2)
    assert sum(p.numel() for p in moe.experts.parameters()) == 4 * (24 * 24 * 2 + 24 + 24)


def test_bert_layers_are_blocks_and_moefy_keeps_them_exact() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (3, 7))
    dense = bert(input_ids=ids).last_hidden_state
    assert set(feed_forward_sites(bert)) == {"encoder.layer.0", "encoder.layer.1"}
    inputs = block_inputs(bert, "encoder.layer.1", [ids], call=lambda m, b: m(input_ids=b))
    assert inputs.shape == (21, 16)
    moefy(bert, "encoder.layer.1", 4, 4, inputs, router_steps=5)
    upcycle(bert, "encoder.layer.0", 3, 2)
    torch.testing.assert_close(bert(input_ids=ids).last_hidden_state, dense, atol=1e-5, rtol=1e-5)


def test_bad_input_names_the_value() -> None:
    model = _mlp([30, 14])
    inputs = torch.randn(10, 20)
    with pytest.raises(ValueError, match="layer 'fc3' is not a feed-forward block.*fc1, fc2"):
        moefy(model, "fc3", 4, 2, inputs)
    with pytest.raises(ValueError, match="k must be between 1 and n_experts \\(4\\), got 5"):
        moefy(model, "fc1", 4, 5, inputs)
    with pytest.raises(ValueError, match="n_experts must be between 1 and the block's 30 neurons, got 31"):
        moefy(model, "fc1", 31, 2, inputs)
    with pytest.raises(ValueError, match="activation Tanh is not supported"):
        feed_forward_sites(_mlp([30, 14], activation="tanh"))
    with pytest.raises(ValueError, match="maps width 20 to 14"):
        upcycle(model, "fc1", 4)
