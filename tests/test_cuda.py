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
    gpu = {u["variant"]: u for u in _run(recipe, tmp_path / "gpu", "cuda", MOE_TINY)["units"]}
    cpu = {u["variant"]: u for u in _run(recipe, tmp_path / "cpu", "cpu", MOE_TINY)["units"]}
    assert set(gpu) == set(cpu)
    assert gpu["balanced"]["max_violation_end"] == 0.0
    for variant, unit in gpu.items():
        assert unit["test_acc"] == pytest.approx(cpu[variant]["test_acc"], abs=0.03), variant


def test_moefy_recipe_on_cuda(tmp_path) -> None:
    overrides = ["seeds=[0]", "train.length=150it", "train.eval_every=150it", 'moefy.layers=["fc2"]',
                 "moefy.experts=[4]", 'moefy.methods=["weights"]', "moefy.samples=300", "moefy.router_steps=30"]
    view = _run(ROOT / "recipes" / "moefy-mnist.toml", tmp_path / "runs", "cuda", overrides)
    assert view["units"]


SPATIAL_CASES = [(name, dim, global_pool) for dim in (1, 2) for global_pool in (False, True)
                 for name in ("avg", "max", "lp", "gem", "group-gem", "softpool", "mixed", "gated", "tree",
                              "stochastic", "conv")]


@pytest.mark.parametrize("name, dim, global_pool", SPATIAL_CASES)
def test_spatial_pools_on_cuda_match_cpu(name: str, dim: int, global_pool: bool) -> None:
    from subnets.pooling import create_pool

    torch.manual_seed(0)
    shape = (3, 8, 11) if dim == 1 else (3, 8, 9, 7)
    options = {"channels": 8} if name in ("group-gem", "conv") else {}
    if global_pool and name in ("gated", "tree", "conv"):
        options["size"] = shape[2:]
    pool = create_pool(name, dim, kernel_size=3, stride=2, global_pool=global_pool, **options)
    pool.eval()  # stochastic pooling: the deterministic test-time rule
    x = torch.rand(shape, requires_grad=True)
    probe = torch.randn_like(pool(x))
    expected = torch.autograd.grad((pool(x) * probe).sum(), [x, *pool.parameters()])
    gpu = copy.deepcopy(pool).to(CUDA)
    x_gpu = x.detach().to(CUDA).requires_grad_(True)
    out = gpu(x_gpu)
    torch.testing.assert_close(out.cpu(), pool(x), atol=1e-5, rtol=1e-4)
    got = torch.autograd.grad((out * probe.to(CUDA)).sum(), [x_gpu, *gpu.parameters()])
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.cpu(), e, atol=1e-4, rtol=1e-4)


def test_stochastic_pool_trains_on_cuda() -> None:
    from subnets.pooling import create_pool

    pool = create_pool("stochastic", 2).to(CUDA)
    x = torch.rand(4, 3, 8, 8, device=CUDA, requires_grad=True)
    out = pool(x)
    out.sum().backward()
    windows = x.detach().unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert ((windows == out.detach()[..., None]).any(-1)).all()  # each output is one of its window's values
    assert x.grad.sum() == out.numel()  # the gradient goes to exactly one element per window


@pytest.mark.parametrize("name", ["mean", "max", "first", "last", "attention", "multihead"])
def test_token_pools_on_cuda_ignore_padding(name: str) -> None:
    from subnets.pooling import create_pool

    torch.manual_seed(0)
    pool = create_pool(name, "tokens", **({"features": 8} if name in ("attention", "multihead") else {})).to(CUDA)
    x = torch.randn(2, 6, 8, device=CUDA)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool, device=CUDA)
    changed = x.clone()
    changed[0, 3:] = 1e4
    torch.testing.assert_close(pool(x, mask), pool(changed, mask))
    torch.testing.assert_close(pool(x, mask)[:1], pool(x[:1, :3]))


def test_pooling_recipe_on_cuda_matches_cpu(tmp_path) -> None:
    overrides = ["seeds=[0]", 'pools=["max","gem","softpool","gated"]', "train.length=200it",
                 "train.eval_every=100it"]
    recipe = ROOT / "recipes" / "pooling-mnist1d.toml"
    gpu = {u["pool"]: u for u in _run(recipe, tmp_path / "gpu", "cuda", overrides)["units"]}
    cpu = {u["pool"]: u for u in _run(recipe, tmp_path / "cpu", "cpu", overrides)["units"]}
    for pool, unit in gpu.items():
        assert unit["test_acc"] == pytest.approx(cpu[pool]["test_acc"], abs=0.03), pool


def test_boosted_mlp_on_cuda_fits_as_on_cpu() -> None:
    from sklearn.datasets import load_breast_cancer

    from subnets.boosting import BoostedMLPClassifier

    x, y = load_breast_cancer(return_X_y=True)
    options = {"n_stages": 4, "units_per_stage": 4, "stage_steps": 50, "batch_size": 64, "random_state": 0}
    gpu = BoostedMLPClassifier(device="cuda", **options).fit(x, y)
    cpu = BoostedMLPClassifier(device="cpu", **options).fit(x, y)
    assert gpu.module.hidden_weight.device.type == "cuda"
    assert gpu.train_loss_ == pytest.approx(cpu.train_loss_, rel=0.05)
    assert (gpu.predict(x, stages=2) == cpu.predict(x, stages=2)).mean() > 0.97


def test_boosting_tabular_recipe_on_cuda_matches_cpu(tmp_path) -> None:
    overrides = ['tables=["breast_cancer","diabetes"]', "folds=2", 'methods=["boosted","mlp-adam","mlp-lbfgs"]',
                 "boosted.n_stages=3", "boosted.stage_steps=50", "mlp.steps=300", "mlp.lbfgs_iterations=50"]
    recipe = ROOT / "recipes" / "boosting-tabular.toml"
    gpu = {(u["table"], u["method"], u["fold"]): u for u in _run(recipe, tmp_path / "gpu", "cuda", overrides)["units"]}
    cpu = {(u["table"], u["method"], u["fold"]): u for u in _run(recipe, tmp_path / "cpu", "cpu", overrides)["units"]}
    assert set(gpu) == set(cpu)
    for key, unit in gpu.items():
        assert unit["score"] == pytest.approx(cpu[key]["score"], abs=0.05), key
