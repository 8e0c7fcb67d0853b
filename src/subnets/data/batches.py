"""Mini-batches from seeded index permutations over tensors already on the training device."""

from __future__ import annotations

import torch


class Batches:
    """An endless stream of ``(x, y)`` mini-batches; each epoch is a fresh seeded permutation.

    The permutation is drawn on the CPU from a generator seeded once, so the data order depends only on
    the seed (not on the device); indices move to the device once per epoch. The last partial batch of an
    epoch is dropped, so every step sees ``batch_size`` examples.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        if batch_size < 1 or batch_size > len(y):
            raise ValueError(f"batch_size must be in [1, {len(y)}], got {batch_size}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.steps_per_epoch = len(y) // batch_size
        self._generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._position = self.steps_per_epoch

    def skip(self, steps: int) -> None:
        """Advance the stream by ``steps`` batches without materialising them (used when resuming at k)."""
        for _ in range(steps):
            self.next_index()

    def next_index(self) -> torch.Tensor:
        """Indices (into the split) of the next mini-batch, on the data's device."""
        if self._position == self.steps_per_epoch:
            self._order = torch.randperm(len(self.y), generator=self._generator).to(self.y.device)
            self._position = 0
        start = self._position * self.batch_size
        self._position += 1
        return self._order[start:start + self.batch_size]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next mini-batch."""
        return gather(self.x, self.y, self.next_index())


def gather(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x[index], y[index])`` for an index of any shape (it prefixes the example shape).

    ``index_select`` on the flattened index: on CPU about twice as fast as advanced indexing, which goes
    through the generic indexing kernel (70 against 140 us for 128 MNIST rows, one thread).
    """
    flat = index.reshape(-1)
    return (x.index_select(0, flat).view(*index.shape, *x.shape[1:]),
            y.index_select(0, flat).view(*index.shape, *y.shape[1:]))
