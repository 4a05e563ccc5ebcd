"""Shapes without torch: the input shape of each dataset and the parameter count of each model.

Switches and the aggregator need the update's length to check payloads, but never import torch.
"""

from __future__ import annotations

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


def input_shape(ds: DatasetConfig) -> tuple[int, ...]:
    """(channels, side, side) for image datasets, (features,) for synthetic."""
    if ds.name == "digits":
        return (1, 8, 8)
    if ds.name == "mnist":
        side = ds.resize or 28
        return (1, side, side)
    return (ds.features,)


def num_classes(ds: DatasetConfig) -> int:
    return ds.classes if ds.name == "synthetic" else 10


def hidden_sizes(model: ModelConfig) -> tuple[int, ...]:
    return model.hidden or DEFAULT_HIDDEN.get(model.name, ())


def check_model(model: ModelConfig, ds: DatasetConfig) -> None:
    """Refuse a model that cannot take the dataset's input."""
    shape = input_shape(ds)
    if model.name == "cnn" and (len(shape) != 3 or shape[1] < 4):
        raise ConfigError(
            f"model.name: 'cnn' needs an image dataset of side >= 4, {ds.name!r} gives {shape}"
        )
    if model.name == "cnn" and model.hidden:
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
    flat = 1
    for dim in shape:
        flat *= dim
    return _dense((flat, *hidden_sizes(model), classes))


def _dense(widths: tuple[int, ...]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
