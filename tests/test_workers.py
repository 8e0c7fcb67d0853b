"""Training in worker processes: the same arithmetic as in this process, failures surface, lottery units match."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from subnets.masks import Mask
from subnets.models import build_model
from subnets.runs.recipe import load_recipe
from subnets.steps import MemoryStepStore
from subnets.tickets.lottery import LotteryExperiment, step_key
from subnets.train import Execution, TrainConfig, TrainingPool, WorkerFailed, train

BUILD_LENET = partial(build_model, "lenet300_100", (1, 28, 28), 10)  # picklable, for spawned workers
CONFIG = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=64, length="40it", eval_every="20it")


@pytest.fixture
def one_thread():
    """This process at one thread, like each of two workers on a 2-thread budget."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("lenet300_100", (1, 28, 28), 10)


def _half_mask(model: torch.nn.Module) -> Mask:
    generator = torch.Generator().manual_seed(1)
    return Mask({"fc1.weight": torch.rand(model.fc1.weight.shape, generator=generator) < 0.5})


def test_a_worker_trains_bit_for_bit_as_this_process_does(mnist, one_thread) -> None:
    here = _lenet(3)
    mask = _half_mask(here)
    mask.apply(here)
    there = _lenet(0)
    there.load_state_dict(here.state_dict())
    expected = train(here, mnist, CONFIG, seed=5, mask=mask, start_iteration=10, checkpoint_at=(20,))
    with TrainingPool(1, mnist, CONFIG, BUILD_LENET, threads=1) as pool:
        pool.submit("job", there, seed=5, mask=mask, start_iteration=10, checkpoint_at=(20,))
        done = pool.next_done()
    assert done.key == "job"
    for name, value in here.state_dict().items():
        assert torch.equal(done.state[name], value), name
    assert (done.state["fc1.weight"][~mask["fc1.weight"]] == 0).all()
    assert done.result.curve == expected.curve
    assert done.result.early_stop_iter == expected.early_stop_iter
    assert torch.equal(done.result.checkpoints[20]["fc2.weight"], expected.checkpoints[20]["fc2.weight"])


def test_a_failing_job_raises_with_its_key_and_traceback(mnist) -> None:
    model = _lenet(0)
    wrong = Mask({"fc9.weight": torch.ones(3, 3, dtype=torch.bool)})
    with TrainingPool(1, mnist, CONFIG, BUILD_LENET, threads=1) as pool:
        pool.submit("L001/imp/s0", model, seed=0, mask=wrong)
        with pytest.raises(WorkerFailed, match=r"(?s)training L001/imp/s0 failed in a worker.*fc9"):
            pool.next_done()
    with pytest.raises(ValueError, match="workers"):
        TrainingPool(0, mnist, CONFIG, BUILD_LENET)


def test_lottery_in_workers_stores_the_units_of_one_process(tiny_recipe, mnist, one_thread) -> None:
    """Two workers of one thread each give every unit bit for bit as one thread in this process does."""
    config = load_recipe(tiny_recipe(levels=2, seeds="[0, 1]", length="60it", eval_every="30it"))
    serial_store, workers_store = MemoryStepStore(), MemoryStepStore()
    serial = LotteryExperiment(config, mnist, torch.device("cpu")).run(serial_store)
    parallel = LotteryExperiment(config, mnist, torch.device("cpu"), execution=Execution(workers=2)).run(
        workers_store)
    timings = ("seconds", "eval_seconds")
    assert [{k: v for k, v in r.items() if k not in timings} for r in parallel] == \
        [{k: v for k, v in r.items() if k not in timings} for r in serial]
    for seed in (0, 1):
        _, a = serial_store.get_step(step_key(2, "imp", seed))
        _, b = workers_store.get_step(step_key(2, "imp", seed))
        assert all(torch.equal(a["final"][k], b["final"][k]) for k in a["final"])
    assert any("2 worker processes with 1 thread(s) each" in line for line in workers_store.lines)


def test_workers_exclude_populations() -> None:
    with pytest.raises(ValueError, match="workers and population size"):
        Execution(population_size=2, workers=2)
