"""One step of a weight average, in one kernel call where the kernel can take it.

Each average moves toward its weight and is then projected onto its parameter's constraint::

    avg <- (1 - rate) * avg + rate * w

which is MXNet's ``sgd_update`` with ``grad = w``, ``rescale_grad = -1``, ``wd = 1`` and
``lr = rate``. The fused kernel computes that rule term for term (rule ``"sgd"``) and projects
each average's units while they are in cache: one pass over the averages and the weights, all
parameters and devices in one call per device. Averages it cannot take (of float16 weights, or
under constraints it does not compute) take the same ``sgd_update`` and ``project_in_place``
with stock operators. Either way the step is queued on MXNet's engine without waiting.
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

# sgd_update's settings for an average's step: grad = the weight, rescale_grad = -1, no clipping.
_RULE = UpdateRule(RULES["sgd"], 0, -1.0, -1.0, 0.0, 0.0, 0.0)


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
    group: Optional[UnitGroup]  # None: stock operators


class AverageStep:
    """Steps of a set of averages, with how each enters a step decided once per average (kept
    while its constraint and its array are the same objects)."""

    def __init__(self) -> None:
        self._plans: Dict[Hashable, _Plan] = {}
        self._filters: Dict[Hashable, Tuple[Any, Any]] = {}

    def run(self, rate: float, entries: Sequence[Tuple[Hashable, Any, Any, Any]], update: int) -> None:
        """Move every average toward its weight by ``rate``, then project it.

        ``entries``: per average a key naming it, the average, the weight it follows and the
        parameter whose constraint it keeps (read as it is now); ``update``: the update count at
        which a ``Scheduled`` constraint's bound is taken (:func:`in_force`).
        """
        loaded = kernel()
        fused: List[Tuple[Hashable, Any, Any, UnitGroup]] = []
        stock: List[Tuple[Any, Any, Optional[Constraint], Any]] = []
        for key, average, weight, param in entries:
            plan = self._plan(loaded, key, average, param, update)
            if plan.group is not None and kernel_can_take(weight):
                fused.append((key, average, weight, plan.group))
            else:
                stock.append((average, weight, plan.constraint, param))
        if fused and loaded is not None:
            self._run_fused(loaded, rate, fused)
        for average, weight, _, _ in stock:
            move_toward(average, weight, rate)
        project_in_place([(average, constraint, reduction_of(param, average.shape))
                          for average, _, constraint, param in stock if constraint is not None])

    def _plan(self, loaded: Optional[Kernel], key: Hashable, average: Any, param: Any, update: int) -> _Plan:
        constraint = in_force(param, update)
        kept = self._plans.get(key)
        if kept is not None and kept.constraint is constraint and kept.average is average:
            return kept
        group = None
        if loaded is not None and kernel_can_take(average):
            if constraint is None:
                group = unit_group(leading_rows(average.shape), "none")
            else:
                groups = unit_groups(average, constraint, reduction_of(param, average.shape))
                group = groups[0] if groups is not None and len(groups) == 1 else None
        kept = self._plans[key] = _Plan(constraint, average, group)
        return kept

    def _run_fused(self, loaded: Kernel, rate: float, fused: Sequence[Tuple[Hashable, Any, Any, UnitGroup]]) -> None:
        """The fused update's call with each average as the weight and its weight as the gradient
        (read only); a weight that is a filter bank, which MKL-DNN may hold in its blocked layout,
        is made plain first."""
        filters = [self._first_filter(key, weight) for key, _, weight, _ in fused if weight.ndim > 2]
        run_fused_update(loaded, _RULE, [Rates(rate, 1.0)] * len(fused), [average for _, average, _, _ in fused],
                         [weight for _, _, weight, _ in fused],
                         [UpdateEntry(group, [], False) for *_, group in fused], filters)

    def _first_filter(self, key: Hashable, weight: Any) -> Any:
        kept = self._filters.get(key)
        if kept is None or kept[0] is not weight:
            kept = self._filters[key] = (weight, first_filter(weight))
        return kept[1]
