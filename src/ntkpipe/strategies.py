"""Continual-learning strategies, applied from task 2 on (sweep key `strategy`).

- `finetune`: plain training on each new task (the default; what every other run does).
- `replay`: a fixed buffer of `buffer_size` training samples of the earlier tasks, drawn
  uniformly without replacement from the seed when a task starts; `batch_size` of them (all of
  them under full-batch gd; null: as many as the task's own batch) join every batch.
- `ewc`: elastic weight consolidation (Kirkpatrick et al. 2017, arXiv 1612.00796, eq. 3): at
  the end of each task, the diagonal empirical Fisher F = mean over `fisher_samples` of its
  training samples of (∇θ ℓ(x, y))² and the weights θ*; the loss of every later task gains
  (λ/2) Σ_i F_i (θ_i − θ*_i)², one such term per earlier task.
- `lwf`: learning without forgetting (Li & Hoiem 2016, arXiv 1606.09282, eq. 2): a frozen copy
  of the network as it ended the previous task; the loss gains α times the distillation of its
  outputs on the current batch — T² · KL(softmax(f_old/T) ‖ softmax(f/T)) under cross-entropy
  (the temperature T of Hinton et al. 2015, arXiv 1503.02531), ½‖f − f_old‖² (mean over the
  batch) under MSE. One head over every class, as in class-incremental learning, so every
  output is distilled.

A strategy's state (buffer, Fisher terms, old network) is part of a run's resume file, so a
resumed run continues with the very same terms (moved back onto the model's device). The
per-step losses a run records are the task's own loss on its own batch samples, without the
strategy's samples or terms, so they compare across strategies.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ntkpipe.errors import InputError

STRATEGIES = ("finetune", "replay", "ewc", "lwf")
_REPLAY_STREAM, _FISHER_STREAM = 11, 12  # RNG streams (splits use 0..3, subsets 7, teacher 8)

Data = tuple[torch.Tensor, torch.Tensor]


class Strategy:
    """Fine-tuning: no extra samples, no extra loss. The base of every strategy."""

    name = "finetune"
    note = ""  # what begin_task did, for the job's log

    def begin_task(self, model: nn.Module, earlier: list[Data], number: int) -> None:
        """Called once when task `number` (≥ 2) starts, with the earlier tasks' data."""

    def extra_batch(self, generator: torch.Generator, size: int | None) -> Data | None:
        """Samples to add to the current batch (None: none)."""
        return None

    def penalty(self, model: nn.Module, x: torch.Tensor, outputs: torch.Tensor
                ) -> torch.Tensor | None:
        """A term added to the batch loss (None: none)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue with the same terms."""
        return {}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        """Restore `state_dict()` (the model gives an architecture to load old weights into)."""


class Replay(Strategy):
    """A fixed buffer of earlier tasks' training samples mixed into every batch."""

    name = "replay"

    def __init__(self, buffer_size: int, batch_size: int | None, seed: int) -> None:
        self.buffer_size, self.batch_size, self.seed = buffer_size, batch_size, seed
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def begin_task(self, model: nn.Module, earlier: list[Data], number: int) -> None:
        x = torch.cat([d[0] for d in earlier])
        y = torch.cat([d[1] for d in earlier])
        if self.buffer_size > len(x):
            raise InputError(f"a replay buffer of {self.buffer_size} samples is larger than the "
                             f"{len(x)} training samples of the tasks before task {number}; "
                             "lower continual.replay.buffer_size")
        rng = np.random.default_rng([self.seed, _REPLAY_STREAM, number])
        chosen = torch.from_numpy(np.sort(rng.choice(len(x), self.buffer_size, replace=False)))
        self.x, self.y = x[chosen.to(x.device)], y[chosen.to(y.device)]
        self.note = f"replay buffer of {self.buffer_size} of {len(x)} earlier samples"

    def extra_batch(self, generator: torch.Generator, size: int | None) -> Data | None:
        if self.x is None:
            return None
        if size is None:  # full-batch gd: the whole buffer
            return self.x, self.y
        count = self.batch_size if self.batch_size is not None else size
        idx = torch.randint(len(self.x), (count,), generator=generator).to(self.x.device)
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        device = _device(model)  # a resume file loads onto the CPU
        self.x, self.y = (None if state.get(k) is None else state[k].to(device)
                          for k in ("x", "y"))


def diagonal_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str
                    ) -> list[torch.Tensor]:
    """Mean over the samples of the squared per-sample gradient of ℓ, per parameter (the
    diagonal empirical Fisher), computed in eval mode (BatchNorm on its running statistics)."""
    from ntkpipe.train import per_sample_loss

    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    for i in range(len(x)):
        value = per_sample_loss(model(x[i:i + 1]), y[i:i + 1], loss).sum()
        grads = torch.autograd.grad(value, params, allow_unused=True)
        for f, g in zip(fisher, grads):
            if g is not None:
                f.add_(g.detach().pow(2))
    model.train(was_training)
    return [f / max(len(x), 1) for f in fisher]


class EWC(Strategy):
    """A quadratic pull towards each earlier task's weights, weighted by its Fisher."""

    name = "ewc"

    def __init__(self, strength: float, samples: int, loss: str, seed: int) -> None:
        self.strength, self.samples, self.loss, self.seed = strength, samples, loss, seed
        self.terms: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def begin_task(self, model: nn.Module, earlier: list[Data], number: int) -> None:
        x, y = earlier[-1]  # the task that just ended
        rng = np.random.default_rng([self.seed, _FISHER_STREAM, number])
        chosen = torch.from_numpy(rng.permutation(len(x))[:self.samples]).to(x.device)
        fisher = diagonal_fisher(model, x[chosen], y[chosen], self.loss)
        anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        self.terms.append((fisher, anchor))
        top = max(float(f.max()) for f in fisher)
        # the penalty's curvature is λ·F: SGD at step η is stable on it while η·λ·max F < 2
        self.note = (f"EWC term {len(self.terms)}: Fisher over {len(chosen)} samples, max "
                     f"{top:.4g}; λ·max F = {self.strength * top:.4g} (SGD diverges on the "
                     "penalty once lr times this exceeds 2)")

    def penalty(self, model: nn.Module, x: torch.Tensor, outputs: torch.Tensor
                ) -> torch.Tensor | None:
        if not self.terms:
            return None
        params = [p for p in model.parameters() if p.requires_grad]
        total = outputs.new_zeros(())
        for fisher, anchor in self.terms:
            total = total + sum((f * (p - a).pow(2)).sum()
                                for f, p, a in zip(fisher, params, anchor))
        return 0.5 * self.strength * total

    def state_dict(self) -> dict[str, Any]:
        return {"terms": self.terms}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        device = _device(model)  # a resume file loads onto the CPU
        self.terms = [([x.to(device) for x in f], [x.to(device) for x in a])
                      for f, a in state.get("terms", [])]


class LwF(Strategy):
    """Distillation of the previous task's network on the current batch."""

    name = "lwf"

    def __init__(self, alpha: float, temperature: float, loss: str) -> None:
        self.alpha, self.temperature, self.loss = alpha, temperature, loss
        self.old: nn.Module | None = None

    def begin_task(self, model: nn.Module, earlier: list[Data], number: int) -> None:
        self.old = _frozen(model)

    def penalty(self, model: nn.Module, x: torch.Tensor, outputs: torch.Tensor
                ) -> torch.Tensor | None:
        if self.old is None:
            return None
        with torch.no_grad():
            target = self.old(x)
        if self.loss == "cross_entropy":
            t = self.temperature
            distill = F.kl_div(F.log_softmax(outputs / t, dim=1), F.log_softmax(target / t, dim=1),
                               log_target=True, reduction="batchmean") * t * t
        else:
            distill = 0.5 * (outputs - target).pow(2).sum(dim=1).mean()
        return self.alpha * distill

    def state_dict(self) -> dict[str, Any]:
        return {"old": None if self.old is None else self.old.state_dict()}

    def load_state_dict(self, state: dict[str, Any], model: nn.Module) -> None:
        if state.get("old") is not None:
            self.old = _frozen(model)
            self.old.load_state_dict(state["old"])


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _frozen(model: nn.Module) -> nn.Module:
    old = copy.deepcopy(model).eval()
    for p in old.parameters():
        p.requires_grad_(False)
    return old


def make_strategy(name: str, settings: dict[str, Any], *, loss: str, seed: int) -> Strategy:
    """The strategy `name` with its settings (`continual.<name>` of the config)."""
    if name == "finetune":
        return Strategy()
    if name == "replay":
        return Replay(settings["buffer_size"], settings.get("batch_size"), seed)
    if name == "ewc":
        return EWC(settings["strength"], settings["fisher_samples"], loss, seed)
    if name == "lwf":
        return LwF(settings["alpha"], settings["temperature"], loss)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}")
