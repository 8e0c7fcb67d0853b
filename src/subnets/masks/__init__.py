"""Masks: which weights of a network are kept.

A :class:`Mask` maps parameter names to boolean tensors. Pruning criteria are plain functions
``criterion(model, mask, fractions, ...) -> Mask`` that remove a fraction of the weights a mask still keeps:
layer-wise magnitude (a fraction per layer), global magnitude (one threshold over all layers) and random
pruning that keeps the exact per-layer counts of a reference mask (the lottery ticket control).
"""

from subnets.masks.criteria import global_magnitude, layerwise_magnitude, random_like_counts
from subnets.masks.mask import Mask, MaskedParameters

__all__ = ["Mask", "MaskedParameters", "global_magnitude", "layerwise_magnitude", "random_like_counts"]
