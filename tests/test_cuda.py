"""The CUDA path: the same layers, training loops and recipes on a GPU as on the CPU.

Skipped where no CUDA device is available (CI has none); run on a lent GPU machine. Products on the GPU sum in
another order than on the CPU, so results are compared within float tolerance, and for whole training runs
within a small accuracy band; properties that must hold exactly (pruned weights stay zero, balanced loads)
are checked exactly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_experts import CONFIGS, _naive

from subnets.cli import cli
from subnets.experts import MoE
from subnets.masks import Mask, layerwise_magnitude, random_like_counts
from subnets.models import build_model, prunable_layers
from subnets.train import TrainConfig, train, train_population
from subnets.train.sparse import SparseLinear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _exact_float32_products():
    """TF32 would round products to 10 mantissa bits; the comparisons below are for float32 arithmetic."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("options", CONFIGS)
def test_moe_on_cuda_equals_the_per_token_reference(options: dict) -> None:
    torch.manual_seed(0)
    moe = MoE(12, 20, **options)
    x, probe = torch.randn(3, 7, 12, requires_grad=True), torch.randn(3, 7, 12)
    expected = _naive(moe, x)
    expected_grads = torch.autograd.grad((expected * probe).sum(), [x, *moe.parameters()])
    gpu = copy.deepcopy(moe).to(CUDA)
    x_gpu = x.detach().to(CUDA).requires_grad_(True)
    out = gpu(x_gpu)
    assert out.device.type == "cuda"
    grads = torch.autograd.grad((out * probe.to(CUDA)).sum(), [x_gpu, *gpu.parameters()])
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-5, rtol=1e-5)


def test_masked_training_on_cuda_keeps_pruned_weights_zero_and_learns_as_on_cpu(mnist) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300_100", mnist.input_shape, 10)
    layers = prunable_layers(model)
    mask = layerwise_magnitude(model, Mask.ones_like(model, layers), {n: 0.8 for n in layers})
    config = TrainConfig(length="200it", eval_every="100it")
    on_cpu = copy.deepcopy(model)
    gpu_result = train(model.to(CUDA), mnist.to(CUDA), config, seed=3, mask=mask.to(CUDA))
    cpu_result = train(on_cpu, mnist, config, seed=3, mask=mask)
    weights = dict(model.named_parameters())
    for layer, keep in mask.items():
        assert torch.count_nonzero(weights[layer][~keep.to(CUDA)]) == 0
    assert gpu_result.curve["test_acc"] == pytest.approx(cpu_result.curve["test_acc"], abs=0.01)


def test_population_on_cuda_trains_each_member_as_it_would_alone(mnist) -> None:
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("lenet300_100", mnist.input_shape, 10).to(CUDA))
    layers = prunable_layers(models[0])
    pruned = layerwise_magnitude(models[1], Mask.ones_like(models[1], layers), {n: 0.6 for n in layers})
    masks = [None, pruned, random_like_counts(pruned, torch.Generator().manual_seed(0))]
    config = TrainConfig(length="150it", eval_every="50it")
    data, alone = mnist.to(CUDA), [copy.deepcopy(m) for m in models]
    together = train_population(models, data, config, seeds=[11, 12, 13], masks=masks)
    for member, (model, mask) in enumerate(zip(alone, masks, strict=True)):
        expected = train(model, data, config, seed=11 + member, mask=mask)
        for key, value in model.state_dict().items():
            torch.testing.assert_close(models[member].state_dict()[key], value, atol=2e-4, rtol=0)
        assert together[member].curve["test_acc"] == pytest.approx(expected.curve["test_acc"], abs=2e-3)


def test_sparse_linear_on_cuda_matches_the_dense_masked_layer() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(50, 30).to(CUDA)
    keep = torch.rand(30, 50, device=CUDA) < 0.1
    with torch.no_grad():
        dense.weight.mul_(keep)
    sparse = SparseLinear(dense, keep)
    x = torch.randn(7, 50, device=CUDA, requires_grad=True)
    x_sparse, target = x.detach().clone().requires_grad_(), torch.randn(7, 30, device=CUDA)
    (dense(x) * target).sum().backward()
    (sparse(x_sparse) * target).sum().backward()
    torch.testing.assert_close(sparse(x_sparse), dense(x))
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[keep])
    torch.testing.assert_close(x_sparse.grad, x.grad)


def _run(recipe: Path, store: Path, device: str, overrides: list[str]) -> dict:
    args = ["run", str(recipe), "--store", str(store), "--quiet", "--device", device]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, (result.stderr, result.exception)
    run_id = result.stdout.split()[1]
    shown = CliRunner().invoke(cli, ["show", run_id, "--store", str(store), "--json"])
    return json.loads(shown.stdout)


def test_lottery_recipe_on_cuda(tiny_recipe, tmp_path) -> None:
    view = _run(tiny_recipe(levels=2, length="100it", eval_every="50it"), tmp_path / "runs", "cuda", [])
    assert view["device"].startswith("cuda")
    assert len(view["levels"]) >= 2


MOE_TINY = ["seeds=[0]", "train.length=60it", "train.eval_every=30it", "train.batch_size=64",
            'variants=["dense-active","none","switch-global","switch-z","loss-free","balanced"]']


def test_moe_recipe_on_cuda_matches_cpu(tmp_path) -> None:
    recipe = ROOT / "recipes" / "moe-mnist.toml"
    gpu = {u["variant"]: u for u in _run(recipe, tmp_path / "gpu", "cuda", MOE_TINY)["levels"]}
    cpu = {u["variant"]: u for u in _run(recipe, tmp_path / "cpu", "cpu", MOE_TINY)["levels"]}
    assert set(gpu) == set(cpu)
    assert gpu["balanced"]["max_violation_end"] == 0.0
    for variant, unit in gpu.items():
        assert unit["test_acc"] == pytest.approx(cpu[variant]["test_acc"], abs=0.03), variant


def test_moefy_recipe_on_cuda(tmp_path) -> None:
    overrides = ["seeds=[0]", "train.length=150it", "train.eval_every=150it", 'moefy.layers=["fc2"]',
                 "moefy.experts=[4]", 'moefy.methods=["weights"]', "moefy.samples=300", "moefy.router_steps=30"]
    view = _run(ROOT / "recipes" / "moefy-mnist.toml", tmp_path / "runs", "cuda", overrides)
    assert view["levels"]
