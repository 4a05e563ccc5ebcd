"""The torch models (the original MLP, a wider MLP, a LeNet-style CNN) and flat weight vectors."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hefl.config import DatasetConfig, ModelConfig
from hefl.modelspec import CNN_CHANNELS, CNN_FC, hidden_sizes, input_shape, num_classes
from hefl.seeds import model_seed


def build_model(model: ModelConfig, ds: DatasetConfig, seed: int) -> nn.Module:
    """The same initial weights on every client for one seed."""
    torch.manual_seed(model_seed(seed))
    shape = input_shape(ds)
    classes = num_classes(ds)
    if model.name == "cnn":
        return _cnn(shape, classes)
    widths = [int(np.prod(shape)), *hidden_sizes(model)]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], classes))
    return nn.Sequential(*layers)


def _cnn(shape: tuple[int, ...], classes: int) -> nn.Module:
    c1, c2 = CNN_CHANNELS
    f1, f2 = CNN_FC
    flat = c2 * (shape[1] // 4) * (shape[2] // 4)
    return nn.Sequential(
        nn.Conv2d(shape[0], c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, f1),
        nn.ReLU(),
        nn.Linear(f1, f2),
        nn.ReLU(),
        nn.Linear(f2, classes),
    )


def get_flat(model: nn.Module) -> np.ndarray:
    """All weights as one float64 vector (a copy)."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().cpu().double().numpy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Overwrite all weights from one flat vector."""
    first = next(model.parameters())
    vec = torch.as_tensor(flat, dtype=first.dtype, device=first.device)
    nn.utils.vector_to_parameters(vec, model.parameters())
