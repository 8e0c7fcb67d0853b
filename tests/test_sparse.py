"""Sparse compute: a pruned linear layer in CSR computes what the dense masked layer computes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from subnets.masks import Mask
from subnets.models import build_model, prunable_layers
from subnets.train.sparse import CsrPattern, SparseLinear, sparsify


def _masked_linear(density: float, dtype=torch.float32) -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    linear = nn.Linear(50, 30).to(dtype)
    keep = torch.rand(30, 50) < density
    with torch.no_grad():
        linear.weight.mul_(keep)
    return linear, keep


@pytest.mark.parametrize("density", [0.02, 0.3, 1.0])
def test_sparse_linear_matches_dense_masked_forward_and_gradients(density: float) -> None:
    dense, keep = _masked_linear(density)
    sparse = SparseLinear(dense, keep)
    x = torch.randn(7, 50, requires_grad=True)
    x_sparse = x.detach().clone().requires_grad_()
    target = torch.randn(7, 30)
    (dense(x) * target).sum().backward()
    (sparse(x_sparse) * target).sum().backward()
    torch.testing.assert_close(sparse(x_sparse), dense(x))
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[keep])
    torch.testing.assert_close(x_sparse.grad, x.grad)
    assert sparse.bias is dense.bias  # shared: both backward passes added target.sum(0)
    torch.testing.assert_close(dense.bias.grad, 2 * target.sum(dim=0))
    assert sparse.values.numel() == int(keep.sum())
    torch.testing.assert_close(sparse.dense_weight(), dense.weight.detach())


def test_sparse_linear_gradcheck_float64() -> None:
    dense, keep = _masked_linear(0.2, torch.float64)
    pattern = CsrPattern(keep)
    values = pattern.gather(dense.weight.detach()).requires_grad_()
    bias = dense.bias.detach().clone().requires_grad_()
    x = torch.randn(4, 50, dtype=torch.float64, requires_grad=True)
    from subnets.train.sparse import _CsrLinear

    assert torch.autograd.gradcheck(lambda a, v, b: _CsrLinear.apply(a, v, b, pattern), (x, values, bias))


def test_pattern_transpose_and_scatter_round_trip() -> None:
    keep = torch.rand(6, 9, generator=torch.Generator().manual_seed(1)) < 0.4
    pattern = CsrPattern(keep)
    dense = torch.randn(6, 9) * keep
    values = pattern.gather(dense)
    assert torch.equal(pattern.scatter(values), dense)
    assert torch.equal(pattern.matrix(values).to_dense(), dense)
    assert torch.equal(pattern.transposed(values).to_dense(), dense.t())


def test_sparsify_swaps_only_sparse_layers_and_restores_them() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    layers = prunable_layers(model)
    generator = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=generator) < (0.05 if n == "fc1.weight" else 0.5)
                 for n, p in model.named_parameters() if n in layers})
    mask.apply(model)
    x = torch.rand(5, 1, 28, 28)
    expected = model(x)
    original_fc1 = model.fc1
    handle = sparsify(model, mask, below=0.2)
    assert handle.names == ["fc1.weight"] and isinstance(model.fc1, SparseLinear)
    torch.testing.assert_close(model(x), expected)
    assert set(handle.state_dict()) == set(dict(build_model("lenet300_100", (1, 28, 28), 10).state_dict()))
    with torch.no_grad():
        model.fc1.values.add_(1.0)
    handle.restore()
    assert model.fc1 is original_fc1
    assert torch.equal(model.fc1.weight[~mask["fc1.weight"]], torch.zeros(int((~mask["fc1.weight"]).sum())))
    assert torch.all(model.fc1.weight[mask["fc1.weight"]] != 0)


def test_training_in_sparse_form_matches_the_dense_masked_path(mnist) -> None:
    import copy

    from subnets.masks import layerwise_magnitude
    from subnets.train import TrainConfig, train

    torch.manual_seed(0)
    model = build_model("lenet300_100", (1, 28, 28), 10)
    mask = layerwise_magnitude(model, Mask.ones_like(model, prunable_layers(model)),
                               {"fc1.weight": 0.96, "fc2.weight": 0.9, "fc3.weight": 0.3})
    mask.apply(model)
    twin = copy.deepcopy(model)
    config = TrainConfig(length="150it", eval_every="50it")
    dense = train(model, mnist, config, seed=3, mask=mask, checkpoint_at=(0, 100))
    sparse = train(twin, mnist, config, seed=3, mask=mask, checkpoint_at=(0, 100), sparse_below=0.2)
    assert isinstance(twin.fc1, nn.Linear) and isinstance(twin.fc2, nn.Linear)  # restored
    for key, value in model.state_dict().items():
        torch.testing.assert_close(twin.state_dict()[key], value, atol=2e-4, rtol=0)
    for name, keep in mask.items():
        assert torch.count_nonzero(twin.get_parameter(name)[~keep]) == 0
    assert sparse.curve["val_loss"] == pytest.approx(dense.curve["val_loss"], abs=2e-3)
    assert sparse.checkpoints[100].keys() == dense.checkpoints[100].keys()
    torch.testing.assert_close(sparse.checkpoints[100]["fc1.weight"], dense.checkpoints[100]["fc1.weight"],
                               atol=2e-4, rtol=0)


def test_the_csr_beta_notice_is_silenced_in_place_not_by_a_global_filter() -> None:
    """Importing subnets changes no warning filter of the process, and sparse training still shows no notice (as an
    error under ``-W error``)."""
    code = ("import warnings, torch; before = list(warnings.filters); from subnets.train.sparse import CsrPattern; "
            "assert warnings.filters == before, 'a global warning filter was installed'; "
            "p = CsrPattern(torch.rand(6, 5) > 0.5); p.matrix(torch.ones(p.nnz)) @ torch.ones(5, 2)")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
