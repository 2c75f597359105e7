"""L2-SP (Li, Grandvalet and Davoine 2018, "Explicit inductive bias for transfer learning with convolutional
networks"): weight decay toward the source model's weights instead of toward zero.

The penalty added to the training loss is ::

    alpha/2 · Σ ||w − w_source||²   over the weights that came from the source model (every group but the new CTC
                                    head and adapters), counted while they train
  + beta/2  · Σ ||w_head||²         over the CTC head's weight matrix (the paper's L2 on the new layer; bias free)

Frozen weights are not counted (they equal their source values anyway). The penalty's gradient is added to the
parameters' ``.grad`` at each optimiser step, after the micro-batches' backward passes and before gradient clipping,
which is what adding the term to the loss would give (once per step, whatever ``grad_accum`` is). The source weights
are copied once, when training begins, and stay on the training device: memory for one more copy of the shared
weights, no copy per step. With AdamW the term is scaled per parameter like any gradient (the paper used SGD); the
AdamW ``weight_decay`` of a stage still decays toward zero, so leave it at 0 when using L2-SP.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..model.groups import parameter_groups

NEW_GROUPS = ("head", "adapters")  # groups that do not come from the source model: never pulled toward it


class L2SP:
    """The penalty for one run: the source anchors (on the model's device) and the head's weight names."""

    def __init__(self, model: nn.Module, alpha: float, beta: float = 0.0):
        self.alpha, self.beta = float(alpha), float(beta)
        groups = parameter_groups(model)
        self.anchors: dict[str, torch.Tensor] = {}
        if self.alpha > 0:
            self.anchors = {name: p.detach().clone() for group, params in groups.items() if group not in NEW_GROUPS
                            for name, p in params}
        self.head = {name for name, p in groups["head"] if p.dim() > 1} if self.beta > 0 else set()

    def _terms(self, named_parameters: Iterable[tuple[str, nn.Parameter]], trained_only: bool):
        for name, p in named_parameters:
            if trained_only and not p.requires_grad:
                continue
            if name in self.anchors:
                yield p, p - self.anchors[name], self.alpha
            elif name in self.head:
                yield p, p, self.beta

    def penalty(self, named_parameters: Iterable[tuple[str, nn.Parameter]], trained_only: bool = True
                ) -> torch.Tensor:
        """The penalty as a differentiable 0-dim tensor (what :meth:`add_gradients` adds the gradient of)."""
        total = None
        for _, diff, coef in self._terms(named_parameters, trained_only):
            term = coef / 2 * diff.pow(2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    @torch.no_grad()
    def add_gradients(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> torch.Tensor:
        """Add the penalty's gradient (``coef · diff``) to every trained parameter's ``.grad``; return the penalty
        (a 0-dim tensor on the device, so nothing waits for it unless it is logged)."""
        total = None
        for p, diff, coef in self._terms(named_parameters, trained_only=True):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(diff, alpha=coef)
            term = coef / 2 * diff.float().pow(2).sum()
            total = term if total is None else total + term
        return total if total is not None else torch.zeros(())
