"""What a classifier's training step needs, built once from the resolved config (as train.loop.TrainSession
for language models): used by `seqfit train --task classify` and by the memory probe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from seqfit.config import RunCfg
from seqfit.data.sequences import SequenceSplit, SequenceStore
from seqfit.device import resolve_device
from seqfit.models.classifier import SequenceClassifier, build_classifier
from seqfit.nn.optim import optimizer_for
from seqfit.nn.precision import make_precision
from seqfit.engine.rng import seed_everything
from seqfit.engine.step import no_phase

__all__ = ["ClassifierSession", "build_model"]


def build_model(cfg: RunCfg, store: SequenceStore) -> SequenceClassifier:
    return build_classifier(cfg, num_classes=len(store.label_names),
                            vocab_size=len(store.vocab) if store.vocab is not None else 0,
                            num_features=store.num_features)


@dataclass
class ClassifierSession:
    cfg: RunCfg
    plan: dict
    store: SequenceStore
    train_split: SequenceSplit
    device: torch.device
    model: SequenceClassifier
    optimizer: torch.optim.Optimizer
    precision: object
    lr: float

    @classmethod
    def build(cls, cfg: RunCfg, data_dir: Path) -> "ClassifierSession":
        from seqfit.engine.classify import resolve_classify_plan

        store = SequenceStore(data_dir)
        device = resolve_device(cfg.memory.device)
        plan = resolve_classify_plan(cfg, device)
        seed_everything(cfg.train.seed)
        model = build_model(cfg, store).to(device)
        precision = make_precision(plan["precision"], device)
        optimizer, lr = optimizer_for(cfg.train, model)
        return cls(cfg, plan, store, store.split("train"), device, model, optimizer, precision, lr)

    def largest_batches(self) -> list[np.ndarray]:
        """The training batches (one accumulation group) with the most padded tokens: where memory peaks."""
        from seqfit.engine.classify import sampler_for

        batches = sampler_for(self.train_split, self.plan, shuffle=False).batches()
        lengths = self.train_split.lengths
        if self.plan["max_length"]:
            lengths = np.minimum(lengths, self.plan["max_length"])
        batches = sorted(batches, key=lambda b: len(b) * int(lengths[b].max()), reverse=True)
        return batches[:self.plan["accumulate"]]

    def step(self, group: list[np.ndarray], *, weight=None, phase=no_phase):
        """One optimizer step over the batches of ``group`` (index arrays); returns classify_step's StepResult."""
        from seqfit.engine.classify import batch_to_device, classify_step

        with phase("data"):
            micro = [batch_to_device(self.train_split, g, self.plan["max_length"], self.device) for g in group]
        return classify_step(self.model, micro, plan=self.plan, weight=weight, precision=self.precision,
                             optimizer=self.optimizer, clip=self.cfg.train.clip, phase=phase)
