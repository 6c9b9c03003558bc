"""One step of a weight average, in one kernel call where the kernel can take it.

Each average moves toward its weight and is then projected onto its parameter's constraint::

    avg <- (1 - rate) * avg + rate * w

which is MXNet's ``sgd_update`` with ``grad = w``, ``rescale_grad = -1``, ``wd = 1`` and
``lr = rate``. The fused kernel computes that rule term for term (rule ``"sgd"``) and projects
each average's units while they are in cache: one pass over the averages and the weights, all
parameters and devices in one call per device. Averages it cannot take (of float16 weights, or
under constraints it does not compute) take the same ``sgd_update`` and ``project_in_place``
with stock operators. Either way the step is queued on MXNet's engine without waiting.

The kernel's call runs in the background (``gc_update_rule.background``): on MXNet's prioritized
CPU workers at the lowest priority rather than on the context's own worker, so that it runs
beside the next step's forward and backward passes, which only read the weights; the engine
still has the next update of the weights wait for it, and every read of an average.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, NamedTuple, Optional, Sequence, Tuple

from mxnet import ndarray as nd

from ..catalogue import Constraint
from ..gluon.attachment import constraint_of, reduction_of
from ..kernels.boundary import RULES, Rates, UnitGroup, UpdateRule, kernel_can_take, unit_group
from ..kernels.library import Kernel, kernel
from ..kernels.projection import first_filter, leading_rows, project_in_place, unit_groups
from .fused_update import UpdateEntry, run_fused_update

__all__ = ["AverageStep", "move_toward", "in_force"]

# sgd_update's settings for an average's step: grad = the weight, rescale_grad = -1, no clipping;
# in the background (background = 1), beside the next step's forward and backward passes (MXNet
# has at least one prioritized CPU worker: it refuses MXNET_CPU_PRIORITY_NTHREADS=0 at start).
_RULE = UpdateRule(RULES["sgd"], 1, -1.0, -1.0, 0.0, 0.0, 0.0)


def move_toward(average: Any, weight: Any, rate: float) -> None:
    """``average <- average + rate * (weight - average)`` with a stock operator: MXNet's
    ``sgd_update`` computes ``(1 - lr * wd) * a - (lr * rescale_grad) * g``, which is that with
    ``g = weight``, ``rescale_grad = -1``, ``wd = 1`` and ``lr = rate``."""
    weight = weight.astype(average.dtype, copy=False)
    nd.sgd_update(average, weight, lr=rate, wd=1.0, rescale_grad=-1.0, out=average)


def in_force(param: Any, update: int) -> Optional[Constraint]:
    """``param``'s constraint as it stands at update ``update``: a ``Scheduled`` constraint's
    bound at that count (an average's updates, one per training step), any other as it is."""
    constraint = constraint_of(param)
    return None if constraint is None else constraint.at(update)


class _Plan(NamedTuple):
    """How one average enters the step, decided for its constraint and its array."""

    constraint: Optional[Constraint]
    average: Any
    weight: Any
    group: Optional[UnitGroup]  # None: stock operators
    first_filter: Any  # a filter bank's first filter, made plain before a fused call (else None)


class AverageStep:
    """Steps of a set of averages, with how each enters a step decided once per average (kept
    while its constraint, its array and its weight's array are the same objects)."""

    def __init__(self) -> None:
        self._plans: Dict[Hashable, _Plan] = {}

    def run(self, rate: float, entries: Sequence[Tuple[Hashable, Any, Any, Any]], update: int) -> None:
        """Move every average toward its weight by ``rate``, then project it.

        ``entries``: per average a key naming it, the average, the weight it follows and the
        parameter whose constraint it keeps (read as it is now); ``update``: the update count at
        which a ``Scheduled`` constraint's bound is taken (:func:`in_force`).
        """
        loaded = kernel()
        fused: List[Tuple[Any, Any, UnitGroup, Any]] = []
        stock: List[Tuple[Any, Any, Optional[Constraint], Any]] = []
        for key, average, weight, param in entries:
            plan = self._plan(loaded, key, average, weight, param, update)
            if plan.group is not None:
                fused.append((average, weight, plan.group, plan.first_filter))
            else:
                stock.append((average, weight, plan.constraint, param))
        if fused and loaded is not None:
            self._run_fused(loaded, rate, fused)
        for average, weight, _, _ in stock:
            move_toward(average, weight, rate)
        project_in_place([(average, constraint, reduction_of(param, average.shape))
                          for average, _, constraint, param in stock if constraint is not None])

    def _plan(self, loaded: Optional[Kernel], key: Hashable, average: Any, weight: Any, param: Any,
              update: int) -> _Plan:
        constraint = in_force(param, update)
        kept = self._plans.get(key)
        if kept is not None and kept.constraint is constraint and kept.average is average and kept.weight is weight:
            return kept
        group = None
        if loaded is not None and kernel_can_take(average) and kernel_can_take(weight):
            if constraint is None:
                group = unit_group(leading_rows(average.shape), "none")
            else:
                groups = unit_groups(average, constraint, reduction_of(param, average.shape))
                group = groups[0] if groups is not None and len(groups) == 1 else None
        first = first_filter(weight) if group is not None and weight.ndim > 2 else None
        kept = self._plans[key] = _Plan(constraint, average, weight, group, first)
        return kept

    def _run_fused(self, loaded: Kernel, rate: float, fused: Sequence[Tuple[Any, Any, UnitGroup, Any]]) -> None:
        """The fused update's call with each average as the weight and its weight as the gradient
        (read only); a weight that is a filter bank, which MKL-DNN may hold in its blocked layout,
        is made plain first."""
        filters = [first for *_, first in fused if first is not None]
        run_fused_update(loaded, _RULE, [Rates(rate, 1.0)] * len(fused), [average for average, *_ in fused],
                         [weight for _, weight, *_ in fused],
                         [UpdateEntry(group, [], False) for _, _, group, _ in fused], filters)
