"""Updates of row-sparse gradients: the rows an update wrote, and only those, projected.

An ``Embedding(sparse_grad=True)``'s gradient holds the rows of the batch's tokens alone, and a
lazy update (:func:`~.update_rules.updates_rows_only`: SGD's and Adam's ``lazy_update``,
AdaGrad, FTRL on row-sparse weights)
writes only those rows of the weight and of its optimizer state. Where the constraint projects
each row on its own (:func:`~gluon_constraints.kernels.projection.projects_rows`), the rows
the update wrote are all that can have left the set, so a step costs the rows it touches and
not the vocabulary. :func:`update_row_sparse` takes one of three ways for one parameter's
update:

- fused: one ``gc_touched_rows`` kernel call updates the gradient's rows and projects them while
  they are in cache (dense float32 weights on the CPU, a rule the kernel computes,
  :func:`~.update_rules.lazy_rule`, and a constraint it lowers);
- the wrapped optimizer's update, then the gradient's rows projected: by the kernel, else by
  stock operators (which read the row indices on the host, one wait per parameter and step);
- the wrapped optimizer's update, then the whole weight projected, as for a dense gradient:
  where the update is not lazy, the constraint is not row by row, with ``every > 1`` (the rows
  of the steps in between would be missed), and the first time each copy is projected under a
  projection (a new constraint, a scheduled bound that changed, a resumed run). So after the
  first step every row is feasible, and a row no update touches stays feasible, unchanged. A
  row-sparse weight (a kvstore's copy, every row stored) is projected whole row by row: the
  trainer lets it take only constraints that project rows on their own.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np
from mxnet import ndarray

from .. import _mxnet_compat as compat
from ..kernels.boundary import UnitGroup
from ..kernels.projection import project_touched_rows, projects_rows, touched_group
from .projector import Projection, Projector
from .update_rules import FusedRule, kernel_states, lazy_rule, step_rates, updates_rows_only

__all__ = ["update_row_sparse", "RowsPlan"]


def update_row_sparse(inner: Any, projector: Projector, index: Any, weight: Any, grad: Any, state: Any,
                      projection: Optional[Projection], master_slot: Optional[int],
                      inner_update: Callable[[], None]) -> None:
    """Update one parameter whose gradient ``grad`` is row-sparse, and project what it wrote.

    Parameters
    ----------
    inner : mxnet.optimizer.Optimizer
        The wrapped optimizer.
    projector : Projector
        The wrapper's projector (records, kernel, monitoring).
    index, weight, grad, state
        The update call's arguments for this parameter.
    projection : Projection or None
        What this update projects (None: nothing).
    master_slot : int or None
        Where ``multi_precision`` keeps a float16 weight's float32 master copy in ``state``;
        None without multi-precision.
    inner_update : callable
        Runs the wrapped optimizer's update of this parameter alone.
    """
    casting = master_slot is not None and weight.dtype == np.float16
    target = state[master_slot] if casting else weight
    record = projector.record(index)
    copy = str(target.context)
    rule = lazy_rule(inner) if not casting and target.stype == "default" else None
    plan = None if projection is None else _plan(record.row_plans, copy, projector, projection, target, state, rule)
    if plan is None or projection is None or not plan.by_rows or projector.every > 1 \
            or record.feasible.get(copy) is not projection or not updates_rows_only(inner, target.stype, casting):
        inner_update()
        if plan is not None and projection is not None and target.stype == "row_sparse":  # stored whole
            project_touched_rows(target, target, projection.constraint, projection.reduction,
                                 _stats(projector, index, target), plan.group, plan.indices)
        else:
            projector.project([(index, projection, weight, state)], master_slot)
        if projection is not None:
            record.feasible[copy] = projection
        return
    stats = _stats(projector, index, target)
    if plan.states is not None and rule is not None and _rates_allowed(rule.name, inner, index):
        rates = step_rates(inner, rule, [index])
        projector.kernel.touched_rows(rule.settings(inner), plan.group, rates[0], weight, grad, plan.indices,
                                      plan.states, stats)
        return
    inner_update()
    project_touched_rows(target, grad, projection.constraint, projection.reduction, stats, plan.group, plan.indices)
    if casting:
        ndarray.cast(target, dtype=weight.dtype, out=weight)


class RowsPlan(NamedTuple):
    """How one copy's updates project their rows, and what it was decided for: valid while the
    projection, the optimizer state, the lazy rule and monitoring are the same.

    ``by_rows``: the constraint projects rows on their own (else the whole copy is projected);
    ``group``: the kernel's unit group for them (None: stock operators); ``states``: the state
    arrays of a fused update (None: the wrapped optimizer updates); ``indices``: the kernel's
    buffer for the row indices (``rows + 1`` int64 entries on the copy's context).
    """

    projection: Projection
    state: Any
    rule: Optional[str]
    monitored: bool
    by_rows: bool
    group: Optional[UnitGroup]
    states: Optional[List[Any]]
    indices: Optional[Any]


def _plan(plans: Dict[str, RowsPlan], copy: str, projector: Projector, projection: Projection, target: Any,
          state: Any, rule: Optional[FusedRule]) -> RowsPlan:
    """The kept plan of ``copy``, made again where what it was decided for changed."""
    name = None if rule is None else rule.name
    kept = plans.get(copy)
    if kept is None or kept.projection is not projection or kept.state is not state or kept.rule != name \
            or kept.monitored != projector.monitor:
        constraint, reduction, shape = projection
        by_rows = projects_rows(constraint, reduction, shape)
        group = touched_group(target, constraint, reduction) if by_rows and projector.kernel is not None else None
        states = kernel_states(rule, state) if group is not None and rule is not None else None
        indices = None if group is None else ndarray.empty((target.shape[0] + 1,), ctx=target.context, dtype=np.int64)
        kept = plans[copy] = RowsPlan(projection, state, name, projector.monitor, by_rows, group, states, indices)
    return kept


def _stats(projector: Projector, index: Any, target: Any) -> Optional[Any]:
    """Where the touched rows' statistics go: the parameter's monitoring buffer, or None."""
    return projector.stats_for(index, target) if projector.monitor else None


def _rates_allowed(rule: str, inner: Any, index: Any) -> bool:
    """Whether MXNet's own update would take this step's rates: its sparse AdaGrad refuses a
    weight decay (the wrapped optimizer's update then raises as MXNet's own would)."""
    return rule != "adagrad_lazy" or next(iter(compat.optimizer_rates(inner, [index])))[1] == 0
