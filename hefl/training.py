"""Local training and evaluation of a client's model on its slice."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import replace

import torch
from torch import nn

from hefl.config import TrainingConfig
from hefl.data import Split
from hefl.errors import ConfigError
from hefl.seeds import augment_seed

PAD = 4  # dataset.augment: random crops of the image padded by 4 on each side
EVAL_ROWS = 2048  # evaluate in chunks of this many rows (a CIFAR test slice through a ResNet)


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
    """Run `cfg.epochs` of SGD over the slice (or `cfg.steps` batches); shuffles and augmentation
    depend only on `seed`. Returns the mean loss."""
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    opt = MomentumSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    gen = torch.Generator().manual_seed(seed)
    crops = torch.Generator().manual_seed(augment_seed(seed)) if data.augment else None
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, seen = 0.0, 0
    for idx in batches(len(y), cfg, gen):
        idx = idx.to(device)
        inputs = x[idx] if crops is None else augment(x[idx], crops)
        opt.zero_grad()
        loss = loss_fn(model(inputs), y[idx])
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def batches(n: int, cfg: TrainingConfig, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """The rows of each batch: `cfg.epochs` passes, or `cfg.steps` batches (a new order at each
    pass over the slice; the last batch of a pass may be short)."""
    done = 0
    for _ in itertools.count() if cfg.steps and n else range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            if cfg.steps and done == cfg.steps:
                return
            done += 1
            yield order[start : start + cfg.batch_size]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random crop of each image padded by PAD (zeros: the mean colour once normalised), half
    of them mirrored left to right; the draws come from `gen` alone, on the CPU."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen)
    dx = torch.randint(0, 2 * PAD + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5
    rows = dy + torch.arange(h)
    cols = torch.where(flip, dx + torch.arange(w - 1, -1, -1), dx + torch.arange(w))
    padded = nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    b = torch.arange(n)[:, None, None, None]
    c = torch.arange(x.shape[1])[None, :, None, None]
    at = x.device
    return padded[b.to(at), c.to(at), rows[:, None, :, None].to(at), cols[:, None, None, :].to(at)]


@torch.no_grad()
def evaluate(model: nn.Module, data: Split, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a slice, in chunks of EVAL_ROWS rows."""
    model.eval()
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    if len(y) <= EVAL_ROWS:  # one pass, as before chunks: the same losses to the last bit
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        return loss, (logits.argmax(dim=1) == y).float().mean().item()
    loss_sum, right = 0.0, 0
    for start in range(0, len(y), EVAL_ROWS):
        logits = model(x[start : start + EVAL_ROWS])
        part = y[start : start + EVAL_ROWS]
        loss_sum += nn.functional.cross_entropy(logits, part, reduction="sum").item()
        right += int((logits.argmax(dim=1) == part).sum().item())
    return loss_sum / len(y), right / len(y)


def warm_up(model: nn.Module, data: Split, cfg: TrainingConfig, device: torch.device) -> None:
    """One training step and one evaluation on a copy, at configure time: torch's lazy set-up
    (autograd's first backward pass) would otherwise land in round 1."""
    spare = copy.deepcopy(model)
    train_epochs(
        spare,
        Split(data.x[: cfg.batch_size], data.y[: cfg.batch_size], data.augment),
        replace(cfg, epochs=1, steps=0),
        device,
        0,
    )
    evaluate(spare, data, device)
