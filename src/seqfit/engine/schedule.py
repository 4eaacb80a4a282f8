"""Learning-rate schedules: lr(step) = base_lr * warmup(step) * shape(step) * plateau_scale.

    constant   shape = 1
    plateau    shape = 1; `on_validation` divides plateau_scale by anneal_factor whenever the
               validation loss fails to beat the best so far (the word_language_model recipe:
               `lr /= 4.0` when val loss does not improve, pytorch/examples main.py), down to
               MIN_PLATEAU_SCALE: with epochs of a few steps (a short series) the recipe's
               unbounded division drove the lr to 1e-149, which is a stopped run, not a schedule
    cosine     shape = 0.5 * (1 + cos(pi * progress)), progress running 0 -> 1 from the end of
               warm-up to total_steps, then held at 0 (Loshchilov & Hutter, arXiv:1608.03983);
               under a CPU-time budget (--max-cpu-minutes) progress is the larger of the steps'
               and the budget's share spent, so the lr reaches 0 as the budget runs out (the
               budget counts from the run's start: resuming with more minutes extends it)

    warmup(step) = step / warmup for step < warmup, else 1 (so the very first step runs at lr 0,
    as in transformers' get_cosine_schedule_with_warmup)

      lr ▲  warm-up    cosine
    base ┤    /‾‾‾‾‾‾--..__               plateau: flat, and x1/4 after each bad validation
         │   /              ‾‾--..__
       0 └──/───────────────────────‾‾──▶ step
            0  warmup            total_steps

One class rather than torch's LambdaLR + ReduceLROnPlateau: ReduceLROnPlateau writes the lr into
the param groups itself, so it does not compose with a step-driven warm-up; here both are factors
of one formula, and the whole state is three numbers. The tests check the formula against
torch's CosineAnnealingLR and ReduceLROnPlateau(factor=1/4, patience=0, threshold=0).

Each param group is scaled from its own lr at construction (kept as `initial_lr`, as torch
schedulers do), so groups with different lrs keep their ratio; `lr` reports base_lr * factor.
One optimizer or a list (dense + sparse-embedding) may be scheduled together.
"""

from __future__ import annotations

import math

from seqfit.errors import SeqfitError

__all__ = ["SCHEDULES", "Schedule", "make_schedule"]

SCHEDULES = ("constant", "plateau", "cosine")
MIN_PLATEAU_SCALE = 4.0 ** -6  # at most six annealings of x1/4: lr never below base_lr / 4096


class Schedule:
    def __init__(self, name: str, optimizers, *, base_lr: float, total_steps: int, warmup: int = 0,
                 anneal_factor: float = 4.0) -> None:
        self.name = name
        self.optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        self.base_lr = base_lr
        self.total_steps = total_steps
        self.warmup = warmup
        self.anneal_factor = anneal_factor
        self.step_count = 0  # optimizer steps taken so far
        self.scale = 1.0  # plateau multiplier: anneal_factor ** -(bad validations)
        self.best = math.inf  # best validation loss seen
        self.cpu_spent = 0.0  # CPU seconds of training so far, over every leg of a resumed run
        self.cpu_total = 0.0  # the CPU budget from the run's start (0: none)
        for group in self._groups():
            group.setdefault("initial_lr", group["lr"])
        self._apply()

    def _groups(self):
        return [g for opt in self.optimizers for g in opt.param_groups]

    def factor(self, step: int) -> float:
        """lr / base_lr at `step` (pure in step and the plateau scale)."""
        f = min(1.0, step / self.warmup) if self.warmup > 0 else 1.0
        if self.name == "cosine":
            progress = min(1.0, max(0.0, (step - self.warmup) / max(1, self.total_steps - self.warmup)))
            if self.cpu_total > 0 and step >= self.warmup:
                progress = max(progress, min(1.0, self.cpu_spent / self.cpu_total))
            f *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return f * self.scale

    @property
    def lr(self) -> float:
        """The lr the next optimizer step uses (for base_lr's group)."""
        return self.base_lr * self.factor(self.step_count)

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for group in self._groups():
            group["lr"] = group["initial_lr"] * f

    def budget(self, cpu_seconds: float) -> None:
        """A CPU-time budget of ``cpu_seconds`` more from now on (on resume: beyond what was spent)."""
        self.cpu_total = self.cpu_spent + cpu_seconds
        self._apply()

    def step(self, cpu_seconds: float = 0.0) -> None:
        """Call after each optimizer step, with the CPU seconds it took (counted against a budget)."""
        self.step_count += 1
        self.cpu_spent += cpu_seconds
        self._apply()

    def on_validation(self, val_loss: float) -> None:
        """Plateau: anneal when val loss did not improve on the best so far; others ignore it."""
        if val_loss < self.best:
            self.best = val_loss
        elif self.name == "plateau" and self.scale > MIN_PLATEAU_SCALE:
            self.scale = max(self.scale / self.anneal_factor, MIN_PLATEAU_SCALE)
            self._apply()

    def state_dict(self) -> dict:
        return {"name": self.name, "step_count": self.step_count, "scale": self.scale, "best": self.best,
                "initial_lrs": [g["initial_lr"] for g in self._groups()], "cpu_spent": self.cpu_spent}

    def load_state_dict(self, d: dict) -> None:
        if d["name"] != self.name:
            raise SeqfitError(f"checkpoint was trained with the {d['name']} schedule, not {self.name}; pass --schedule {d['name']}")
        self.step_count, self.scale, self.best = d["step_count"], d["scale"], d["best"]
        self.cpu_spent = float(d.get("cpu_spent", 0.0))  # checkpoints before budgets counted none
        for group, lr0 in zip(self._groups(), d["initial_lrs"]):
            group["initial_lr"] = lr0
        self._apply()


def make_schedule(name: str, optimizer, *, base_lr: float, total_steps: int, warmup: int = 0,
                  anneal_factor: float = 4.0) -> Schedule:
    if name not in SCHEDULES:
        raise SeqfitError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup < 0:
        raise SeqfitError(f"--warmup must be >= 0, got {warmup}")
    if name == "cosine" and total_steps <= warmup:
        raise SeqfitError(f"cosine schedule needs total steps ({total_steps}) > --warmup ({warmup}); set --max-steps or --epochs")
    if anneal_factor <= 1.0:
        raise SeqfitError(f"anneal factor must be > 1, got {anneal_factor}")
    return Schedule(name, optimizer, base_lr=base_lr, total_steps=total_steps, warmup=warmup,
                    anneal_factor=anneal_factor)
