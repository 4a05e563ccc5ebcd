"""Local training and evaluation of a client's model on its slice."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import replace

import torch
from torch import nn

from hefl.config import TrainingConfig
from hefl.data import Split
from hefl.errors import ConfigError


def pick_device(want: str) -> torch.device:
    """`auto` takes CUDA when torch sees a GPU, else the CPU."""
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "training.device: 'cuda', but torch on this node sees no GPU (use 'auto' or 'cpu')"
        )
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class MomentumSGD:
    """SGD with momentum as `torch.optim.SGD(params, lr, momentum)` computes it (no dampening,
    weight decay or Nesterov), step for step and bit for bit (a test compares them). Written here
    because constructing torch's optimizer imports torch._dynamo (sympy and 800 modules): 2.5 s of
    CPU in every client process, at every configure."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float) -> None:
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-self.lr)


def train_epochs(
    model: nn.Module, data: Split, cfg: TrainingConfig, device: torch.device, seed: int
) -> float:
    """Run `cfg.epochs` of SGD over the slice; shuffles depend only on `seed`. Returns mean loss."""
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    opt = MomentumSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, seen = 0.0, 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), generator=gen).to(device)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a slice."""
    model.eval()
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return loss, acc


def warm_up(model: nn.Module, data: Split, cfg: TrainingConfig, device: torch.device) -> None:
    """One training step and one evaluation on a copy, at configure time: torch's lazy set-up
    (autograd's first backward pass) would otherwise land in round 1."""
    spare = copy.deepcopy(model)
    train_epochs(
        spare,
        Split(data.x[: cfg.batch_size], data.y[: cfg.batch_size]),
        replace(cfg, epochs=1),
        device,
        0,
    )
    evaluate(spare, data, device)
