"""The lottery from Python: arrays in memory, a model class, no recipe."""
import numpy as np
from mymodels import TinyCNN

from subnets.data import Dataset
from subnets.tickets import PruneConfig, find_tickets
from subnets.train import TrainConfig

arrays = np.load("digits.npz")
data = Dataset.from_arrays(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                           val_fraction=0.1, seed=0, name="digits")
print(data.sizes(), data.num_classes, data.source["sha256"][:12])

tickets = find_tickets(
    TinyCNN(1, 10, width=16), data,
    train=TrainConfig(optimizer="adam", lr=2e-3, batch_size=64, length="20ep", eval_every="1ep"),
    prune=PruneConfig(levels=5, rates={"conv": 0.2, "fc": 0.2, "output": 0.1}, branches=["imp", "reinit"]),
    seeds=[0],
)
for unit in tickets.results("imp"):
    print(f"level {unit['level']}: {100 * unit['weights_remaining']:5.1f}% of the weights, "
          f"test accuracy {100 * unit['test_acc']:.2f}%")
mask = tickets.masks[5, 0]
print({name: f"{100 * density:.1f}%" for name, density in mask.per_layer().items()})
