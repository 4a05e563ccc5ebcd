"""A client node's training part: its logical clients' slices and the model on its device, the one
part of a node that holds torch. hefl.node.host builds it for a client and hands it to ClientNode,
which is protocol only (tests give it a part of their own)."""

from __future__ import annotations

import numpy as np
import torch

from hefl.config import ExperimentConfig
from hefl.data import Split, client_slices
from hefl.model import build_model, get_flat, set_flat
from hefl.node.aggregation import client_weight
from hefl.node.nodes.client import Slot
from hefl.seeds import shuffle_seed
from hefl.training import evaluate, pick_device, train_epochs, warm_up


class LocalTraining:
    """Trains one of the node's clients from a round's global model and evaluates the model it
    holds; every client of the node starts each round from the same global model, so one model
    serves them all."""

    def __init__(self, cfg: ExperimentConfig, node_id: str) -> None:
        t = self.config = cfg.training
        torch.set_num_threads(t.threads)  # the same on every node, whatever the process had
        self.device = pick_device(t.device)
        me = cfg.nodes[node_id]
        ids = cfg.tree.hosted(node_id)
        indices = [cfg.tree.logical[c].index for c in ids]
        slices, self.all_samples = client_slices(cfg.dataset, t.seed, me.client_number, indices)
        self._splits: dict[str, tuple[Split, Split]] = dict(zip(ids, slices, strict=True))
        self.slots = [
            Slot(
                c,
                i,
                len(train),
                len(test),
                client_weight(len(train), me.client_number, self.all_samples),
            )
            for c, i, (train, test) in zip(ids, indices, slices, strict=True)
        ]
        self.model = build_model(cfg.model, cfg.dataset, t.seed).to(self.device)
        self._initial = get_flat(self.model)
        warm_up(self.model, slices[0][0], t, self.device)

    def initial(self) -> np.ndarray:
        """The model round 1 starts from (as built from the seed, before the warm-up)."""
        return self._initial

    def train(self, slot: Slot, base: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        """`slot`'s client trains round `round_` from `base`: its local model, and its mean loss."""
        set_flat(self.model, base)
        seed = shuffle_seed(self.config.seed, slot.index, round_)
        loss = train_epochs(self.model, self._splits[slot.id][0], self.config, self.device, seed)
        return get_flat(self.model), loss

    def load(self, flat: np.ndarray) -> np.ndarray:
        """Hold `flat` as the model (the new global one); returns it as the model holds it."""
        set_flat(self.model, flat)
        return get_flat(self.model)

    def evaluate(self, slot: Slot) -> tuple[float, float]:
        """Loss and accuracy of the model held now on `slot`'s client's test slice."""
        return evaluate(self.model, self._splits[slot.id][1], self.device)
