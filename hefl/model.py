"""The torch models (the original MLP, a wider MLP, a LeNet-style CNN, NVFlare's CIFAR CNN, two
CIFAR ResNets) and flat weight vectors."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hefl.config import DatasetConfig, ModelConfig
from hefl.modelspec import (
    CNN_CHANNELS,
    CNN_FC,
    NORM_GROUPS,
    NVFLARE_CONV,
    NVFLARE_FC,
    RESNETS,
    ResNetSpec,
    hidden_sizes,
    input_shape,
    num_classes,
)
from hefl.seeds import model_seed


def build_model(model: ModelConfig, ds: DatasetConfig, seed: int) -> nn.Module:
    """The same initial weights on every client for one seed."""
    torch.manual_seed(model_seed(seed))
    shape = input_shape(ds)
    classes = num_classes(ds)
    if model.name == "cnn":
        return _cnn(shape, classes)
    if model.name == "nvflare_cnn":
        return _nvflare_cnn(shape, classes)
    if model.name in RESNETS:
        return ResNet(RESNETS[model.name], shape[0], classes)
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


def _nvflare_cnn(shape: tuple[int, ...], classes: int) -> nn.Module:
    """ModerateCNN's layer shapes without its dropout (dropout would draw from torch's global
    generator, so a round's result would depend on what else ran in the process) and, as there,
    without normalisation."""
    layers: list[nn.Module] = []
    widths = (shape[0], *NVFLARE_CONV)
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    f1, f2 = NVFLARE_FC
    flat = NVFLARE_CONV[-1] * (shape[1] // 8) * (shape[2] // 8)
    layers += [nn.Flatten(), nn.Linear(flat, f1), nn.ReLU(), nn.Linear(f1, f2), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(f2, classes))


def _norm(channels: int) -> nn.Module:
    return nn.GroupNorm(NORM_GROUPS, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a norm after each, plus the shortcut (projected or zero-padded)."""

    def __init__(self, c_in: int, c_out: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.reshape = stride != 1 or c_in != c_out
        self.stride, self.pad = stride, c_out - c_in
        self.project: nn.Module | None = None
        if projection and self.reshape:
            self.project = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(c_out)
            )

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.project is not None:
            out: torch.Tensor = self.project(x)
            return out
        if not self.reshape:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR ResNets: a 3x3 stem without max-pool, BasicBlock stages, global average pool."""

    def __init__(self, spec: ResNetSpec, channels: int, classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, spec.stem, 3, padding=1, bias=False), _norm(spec.stem), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c = spec.stem
        for width, count, stride in spec.stages:
            for i in range(count):
                blocks.append(BasicBlock(c, width, stride if i == 0 else 1, spec.projection))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        logits: torch.Tensor = self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))
        return logits


def get_flat(model: nn.Module) -> np.ndarray:
    """All weights as one float64 vector (a copy)."""
    return nn.utils.parameters_to_vector(model.parameters()).detach().cpu().double().numpy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Overwrite all weights from one flat vector."""
    first = next(model.parameters())
    vec = torch.as_tensor(flat, dtype=first.dtype, device=first.device)
    nn.utils.vector_to_parameters(vec, model.parameters())
