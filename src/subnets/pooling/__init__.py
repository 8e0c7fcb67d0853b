"""Pooling: how sub-results are aggregated, over space, tokens and layers.

``create_pool(name, dim)`` builds an op from its name (``pool_names(dim)`` lists them) and
``swap_pooling(model, name)`` replaces a model's pooling layers. Spatial ops map ``(N, C, *S)`` to
``(N, C, *S')`` (``(N, C)`` when global), token ops ``(N, T, D)`` and a padding mask to ``(N, D)``, layer ops
``L x (N, T, D)`` to ``(N, T, D)``.
"""

from subnets.pooling.factory import create_pool, pool_names, swap_pooling
from subnets.pooling.layers import AttentionLayers, MaxLayers, MeanLayers, WeightedLayers
from subnets.pooling.spatial import (
    AvgPool,
    ConvPool,
    GatedPool,
    GeM,
    GroupGeM,
    LpPool,
    MaxPool,
    MixedPool,
    SoftPool,
    SpatialPool,
    SpatialPyramidPool,
    StochasticPool,
    TreePool,
)
from subnets.pooling.tokens import (
    AttentionPool,
    FirstToken,
    LastToken,
    MaxTokens,
    MeanTokens,
    MultiHeadAttentionPool,
)

__all__ = [
    "AttentionLayers", "AttentionPool", "AvgPool", "ConvPool", "FirstToken", "GatedPool", "GeM", "GroupGeM",
    "LastToken", "LpPool", "MaxLayers", "MaxPool", "MaxTokens", "MeanLayers", "MeanTokens", "MixedPool",
    "MultiHeadAttentionPool", "SoftPool", "SpatialPool", "SpatialPyramidPool", "StochasticPool", "TreePool",
    "WeightedLayers", "create_pool", "pool_names", "swap_pooling",
]
