"""MXNet's update rules that the fused kernel computes, and the rates MXNet would give them.

Everything this package knows about optimizers' arithmetic is here: which optimizers' updates
the kernel computes (:func:`rule_of`), which update only the rows a row-sparse gradient has
(:func:`updates_rows_only`) and how (:func:`lazy_rule`), which of their state arrays the kernel
updates (:func:`kernel_states`),
and the learning rates and weight decays of a step, counted and asked for as MXNet's own update
calls would (:func:`step_rates`; Adam's bias correction included).
The kernel itself (``kernels/``) knows none of it: it receives a rule code and numbers.
"""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Sequence

import numpy as np
from mxnet.optimizer import NAG, SGD, AdaGrad, Adam, Ftrl, RMSProp

from .. import _mxnet_compat as compat
from ..kernels.boundary import RULES, Rates, UpdateRule

__all__ = ["FusedRule", "rule_of", "updates_rows_only", "lazy_rule", "kernel_states", "step_rates"]


class FusedRule(NamedTuple):
    """An optimizer's update as the kernel computes it: ``name`` (a key of
    :data:`~gluon_constraints.kernels.boundary.RULES`), the hyperparameters ``(h1, h2, h3)`` and
    how many state arrays per weight it updates."""

    name: str
    hyperparameters: tuple
    state_count: int

    def settings(self, optimizer: Any) -> UpdateRule:
        """The kernel's ``gc_update_rule`` for this rule with ``optimizer``'s gradient settings."""
        clip = float(optimizer.clip_gradient) if optimizer.clip_gradient else -1.0
        return UpdateRule(RULES[self.name], 0, float(optimizer.rescale_grad), clip, *self.hyperparameters)


def rule_of(optimizer: Any) -> Optional[FusedRule]:
    """The fused kernel's rule for ``optimizer``'s update, or None where it computes another.

    ``sgd_mom`` for MXNet's ``SGD`` and ``nag_mom`` for ``NAG``, both with momentum (the
    momentum); ``adam`` (``beta1``, ``beta2``, ``epsilon``); ``rmsprop`` for ``RMSProp`` with
    ``centered=False`` (``gamma1``, ``epsilon``, ``clip_weights`` or -1). Exact classes only: a
    subclass may compute another update. Read at every call (hyperparameters may be changed).
    """
    kind = type(optimizer)
    if kind is SGD or kind is NAG:
        if not optimizer.momentum > 0:
            return None
        return FusedRule("sgd_mom" if kind is SGD else "nag_mom", (float(optimizer.momentum), 0.0, 0.0), 1)
    if kind is Adam:
        return FusedRule("adam", (float(optimizer.beta1), float(optimizer.beta2), float(optimizer.epsilon)), 2)
    if kind is RMSProp and not optimizer.centered:
        clip_weights = float(optimizer.clip_weights) if optimizer.clip_weights else -1.0
        return FusedRule("rmsprop", (float(optimizer.gamma1), float(optimizer.epsilon), clip_weights), 1)
    return None


def updates_rows_only(optimizer: Any, weight_stype: str, casting_master: bool = False) -> bool:
    """Whether ``optimizer``'s update of a row-sparse gradient writes (weight and state) only the
    rows the gradient has: a lazy update.

    MXNet's are SGD's and Adam's with ``lazy_update=True`` (the default), AdaGrad's, and FTRL's
    on a row-sparse weight (on a dense one MXNet computes FTRL densely: every row is rewritten
    from its state). Every other optimizer (NAG, RMSProp, ...) updates a row-sparse gradient as
    a dense one, every row. ``casting_master``: the update is ``multi_precision``'s on float16
    weights, where SGD updates every row (its float16 operators take dense gradients only); the
    others update their float32 master copy as lazily. Exact classes only, read at every call.
    """
    kind = type(optimizer)
    if kind is SGD:
        return bool(optimizer.lazy_update) and not casting_master
    if kind is Adam:
        return bool(optimizer.lazy_update)
    return kind is AdaGrad or (kind is Ftrl and weight_stype == "row_sparse")


def lazy_rule(optimizer: Any) -> Optional[FusedRule]:
    """The kernel's rule for ``optimizer``'s lazy update of a dense float32 weight's rows that a
    row-sparse gradient has, or None where the kernel does not compute it.

    ``sgd_lazy`` for SGD without momentum, ``sgd_mom_lazy`` with it (``momentum``), both with
    ``lazy_update=True``; ``adam_lazy`` (``beta1``, ``beta2``, ``epsilon``) with
    ``lazy_update=True``; ``adagrad_lazy`` (``eps``). Exact classes only.
    """
    kind = type(optimizer)
    if kind is SGD and optimizer.lazy_update:
        if optimizer.momentum > 0:
            return FusedRule("sgd_mom_lazy", (float(optimizer.momentum), 0.0, 0.0), 1)
        return FusedRule("sgd_lazy", (0.0, 0.0, 0.0), 0)
    if kind is Adam and optimizer.lazy_update:
        return FusedRule("adam_lazy", (float(optimizer.beta1), float(optimizer.beta2), float(optimizer.epsilon)), 2)
    if kind is AdaGrad:
        return FusedRule("adagrad_lazy", (float(optimizer.float_stable_eps), 0.0, 0.0), 1)
    return None


def kernel_states(rule: FusedRule, state: Any) -> Optional[List[Any]]:
    """The optimizer state arrays the kernel updates for ``rule``, or None if ``state`` is not
    the dense float32 state it expects (a multi-precision pair, sparse, centered RMSProp)."""
    if rule.state_count == 0:
        return [] if state is None else None
    arrays = [state] if rule.state_count == 1 and not isinstance(state, (tuple, list)) else (
        list(state) if isinstance(state, (tuple, list)) else [])
    if len(arrays) != rule.state_count:
        return None
    if not all(getattr(a, "stype", None) == "default" and a.dtype == np.float32 for a in arrays):
        return None
    return arrays


def step_rates(optimizer: Any, rule: FusedRule, indices: Sequence[Any]) -> List[Rates]:
    """Count one update of each of ``indices`` on the optimizer's current device, as the
    optimizer's own update calls would, and return each one's learning rate and weight decay
    (multipliers and schedules applied).

    MXNet counts and asks for the rates one call at a time: a call counts its indices, which
    may raise the optimizer-wide ``num_update``, and then every index of the call gets the
    scheduler's rate at that ``num_update``. SGD updates ``aggregate_num`` parameters per call
    (4 by default), NAG, Adam and RMSProp one. So the indices are counted and rated in calls of
    the optimizer's own size, in order: when parameters have different update counts (layers
    frozen for a while, stale gradients skipped), a learning-rate schedule gives each the rate
    MXNet's own update would.

    Adam's learning rate (lazy or not) carries its bias correction, ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``
    at the parameter's update count ``t``, as ``Adam.update`` computes it.
    """
    listed = list(indices)
    size = optimizer.aggregate_num if optimizer.aggregate_num > 0 else 1
    rates: List[Rates] = []
    for start in range(0, len(listed), size):
        call = listed[start:start + size]
        compat.count_update(optimizer, call)
        for index, (lr, wd) in zip(call, compat.optimizer_rates(optimizer, call)):
            if rule.name in ("adam", "adam_lazy"):
                beta1, beta2, _ = rule.hyperparameters
                t = compat.update_count(optimizer, index)
                lr *= math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
            rates.append(Rates(float(lr), float(wd)))
    return rates
