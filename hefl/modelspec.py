"""Shapes without torch: the input shape of each dataset and the parameter count of each model.

Switches and the aggregator need the update's length to check payloads, but never import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hefl.errors import ConfigError


class DatasetConfig(Protocol):
    """What the shapes read of the dataset section (hefl.config.DatasetConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def features(self) -> int: ...
    @property
    def classes(self) -> int: ...
    @property
    def resize(self) -> int: ...


class ModelConfig(Protocol):
    """What the shapes read of the model section (hefl.config.ModelConfig)."""

    @property
    def name(self) -> str: ...
    @property
    def hidden(self) -> tuple[int, ...]: ...


DEFAULT_HIDDEN = {"mlp": (32,), "mlp_wide": (256, 128)}
CNN_CHANNELS = (6, 16)
CNN_FC = (120, 84)


@dataclass(frozen=True)
class ResNetSpec:
    """A CIFAR ResNet of BasicBlocks: a 3x3 stem, then stages of (width, blocks, first stride).
    `projection`: a 1x1 conv + norm where a block changes shape (resnet18); else the parameter-free
    shortcut of He et al.'s CIFAR nets (subsample, zero-pad the new channels: resnet20)."""

    stem: int
    stages: tuple[tuple[int, int, int], ...]
    projection: bool


RESNETS = {
    "resnet18": ResNetSpec(64, ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)), True),
    "resnet20": ResNetSpec(16, ((16, 3, 1), (32, 3, 2), (64, 3, 2)), False),
}
# GroupNorm of 2 groups after every conv of the ResNets (no BatchNorm: no running statistics to
# average or leak); its affine weight and bias are 2 * channels parameters
NORM_GROUPS = 2
# NVFlare's CIFAR-10 ModerateCNN (examples/advanced/cifar10/pt/src/model.py): 3x3 convs (padding 1)
# in pairs, a 2x2 max-pool after each pair, then dense layers
NVFLARE_CONV = (32, 64, 128, 128, 256, 256)
NVFLARE_FC = (512, 512)
IMAGE_MODELS = ("cnn", "nvflare_cnn", *RESNETS)
CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def input_shape(ds: DatasetConfig) -> tuple[int, ...]:
    """(channels, side, side) for image datasets, (features,) for synthetic."""
    if ds.name == "digits":
        return (1, 8, 8)
    if ds.name == "mnist":
        side = ds.resize or 28
        return (1, side, side)
    if ds.name in CIFAR_MEAN_STD:
        return (3, 32, 32)
    return (ds.features,)


def num_classes(ds: DatasetConfig) -> int:
    if ds.name == "cifar100":
        return 100
    return ds.classes if ds.name == "synthetic" else 10


def hidden_sizes(model: ModelConfig) -> tuple[int, ...]:
    return model.hidden or DEFAULT_HIDDEN.get(model.name, ())


def check_model(model: ModelConfig, ds: DatasetConfig) -> None:
    """Refuse a model that cannot take the dataset's input."""
    shape = input_shape(ds)
    side = 4 if model.name == "cnn" else 8  # nvflare_cnn pools 3 times, the ResNets stride twice
    if model.name in IMAGE_MODELS and (len(shape) != 3 or shape[1] < side):
        raise ConfigError(
            f"model.name: {model.name!r} needs an image dataset of side >= {side}, "
            f"{ds.name!r} gives {shape}"
        )
    if model.name in IMAGE_MODELS and model.hidden:
        raise ConfigError("model.hidden: only the MLPs take layer widths")
    if any(h <= 0 for h in model.hidden):
        raise ConfigError(f"model.hidden: widths must be positive, got {list(model.hidden)}")


def param_count(model: ModelConfig, ds: DatasetConfig) -> int:
    """Number of trainable parameters, equal to the torch model's (a test checks it)."""
    shape = input_shape(ds)
    classes = num_classes(ds)
    if model.name == "cnn":
        c1, c2 = CNN_CHANNELS
        conv = c1 * shape[0] * 9 + c1 + c2 * c1 * 9 + c2
        flat = c2 * (shape[1] // 4) * (shape[2] // 4)
        return conv + _dense((flat, *CNN_FC, classes))
    if model.name == "nvflare_cnn":
        widths = (shape[0], *NVFLARE_CONV)
        conv = sum(_conv(a, b, 3) + b for a, b in zip(widths, widths[1:], strict=False))
        flat = NVFLARE_CONV[-1] * (shape[1] // 8) * (shape[2] // 8)
        return conv + _dense((flat, *NVFLARE_FC, classes))
    if model.name in RESNETS:
        return _resnet(RESNETS[model.name], shape[0], classes)
    flat = 1
    for dim in shape:
        flat *= dim
    return _dense((flat, *hidden_sizes(model), classes))


def _dense(widths: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


def _conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k  # weights only: the ResNets' convs have no bias


def _resnet(spec: ResNetSpec, channels: int, classes: int) -> int:
    total = _conv(channels, spec.stem, 3) + 2 * spec.stem
    c = spec.stem
    for width, blocks, stride in spec.stages:
        for i in range(blocks):
            total += _conv(c, width, 3) + _conv(width, width, 3) + 4 * width
            if spec.projection and ((stride != 1 and i == 0) or c != width):
                total += _conv(c, width, 1) + 2 * width
            c = width
    return total + _dense((c, classes))
