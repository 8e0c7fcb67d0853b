"""Models built by name, each knowing which of its weights may be pruned.

``build_model(name, input_shape, num_classes, **options)`` returns a freshly initialised ``nn.Module`` that
maps a float tensor of shape ``(N, *input_shape)`` to logits ``(N, num_classes)``. ``input_shape`` excludes
the batch dimension: ``(1, 28, 28)`` for MNIST, ``(1, 40)`` for MNIST-1D, ``(D,)`` for flat data.
Initialisation draws from the global torch RNG, so ``torch.manual_seed(s)`` before building makes the model
reproducible.

Registered models:

- ``lenet300_100`` and ``mlp`` (options ``hidden``, ``activation``): fully connected, input flattened.
- ``conv2``, ``conv4``, ``conv6``: Conv-2/4/6 of Frankle & Carbin (2019) for ``(C, H, W)`` inputs.
- ``resnet20`` (option ``width``): CIFAR-style ResNet-20 of He et al. (2016) for ``(C, H, W)`` inputs.
- ``cnn1d`` (option ``channels``): a small 1D CNN for ``(C, L)`` inputs such as MNIST-1D.
- ``lenet5``: LeNet-5 (ReLU, max pools ``pool1``/``pool2``) for ``(C, H, W)`` inputs such as MNIST.

``prunable_layers(model)`` maps the names of prunable parameters (as in ``model.named_parameters()``, e.g.
``"fc1.weight"``) to their kind, in forward order: ``"conv"`` for convolution weights, ``"fc"`` for hidden
linear weights and ``"output"`` for the last linear layer's weight. Biases and BatchNorm parameters are never
prunable. A model without a ``prunable_layers()`` method gets its ``Linear`` and ``Conv1d``/``Conv2d`` weights in
registration order, the last ``Linear`` as the output.

Your own model: register a builder with ``@register_model(name)`` (also ``subnets.register_model``), or name a
factory by import path, ``build_model("package.module:factory", input_shape, num_classes, **options)``, which
calls ``factory(input_shape, num_classes, **options)`` and checks it returns an ``nn.Module``.
"""

from subnets.models import cnn1d, conv, lenet5, mlp, resnet  # noqa: F401  (importing registers the models)
from subnets.models.cnn1d import CNN1d
from subnets.models.conv import ConvNet
from subnets.models.init import glorot_normal_, kaiming_normal_
from subnets.models.lenet5 import LeNet5
from subnets.models.mlp import MLP
from subnets.models.registry import build_model, model_names, prunable_layers, register_model
from subnets.models.resnet import ResNet

__all__ = [
    "CNN1d",
    "ConvNet",
    "LeNet5",
    "MLP",
    "ResNet",
    "build_model",
    "glorot_normal_",
    "kaiming_normal_",
    "model_names",
    "prunable_layers",
    "register_model",
]
