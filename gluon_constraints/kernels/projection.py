"""Projecting arrays in place: the fused kernel where it applies, stock operators elsewhere.

Used by the optimizer wrapper (on the arrays an update wrote) and by ``apply_constraints``. A
constraint reaches the kernel through the :class:`~gluon_constraints.catalogue.RowLowering` its
class declares (:func:`lowering_of`); everything else uses the constraint's own stock-operator
projection. No host synchronisation: every path only queues operators on MXNet's engine.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mxnet import ndarray
from mxnet.optimizer import NAG, SGD, Adam, RMSProp

from .. import _mxnet_compat as compat
from ..catalogue import BOUNDARY_RTOL, Compose, Constraint, Reduction, RowLowering
from ..catalogue.norms import slice_norms
from ..catalogue.reduction import per_output_unit, unit_rows
from .library import kernel, update_kernel

__all__ = ["lowering_of", "project_in_place", "measured", "fused_rule", "FusedPlan",
           "FusedCall", "plan_fused_update", "assemble_fused_update", "fused_rates", "fused_update"]

# A subclass that redefines one of these computes something else than its parent's lowering.
_PROJECTING_METHODS = ("project", "apply_to", "__call__")

# The kernels compute in float32: the catalogue's float32 band, so both paths agree.
_KERNEL_RTOL = BOUNDARY_RTOL[np.dtype(np.float32)]

Item = Tuple[Any, Constraint, Reduction]


def lowering_of(constraint: Constraint) -> Optional[RowLowering]:
    """The kernel lowering ``constraint`` declares, or None if the kernel cannot compute it.

    A class's :meth:`~gluon_constraints.Constraint.row_lowering` describes its own projection;
    a subclass that overrides the projection below the declaring class gets None.
    """
    mro = type(constraint).__mro__
    declarer = next(cls for cls in mro if "row_lowering" in cls.__dict__)
    if any(name in cls.__dict__ for cls in mro[:mro.index(declarer)] for name in _PROJECTING_METHODS):
        return None
    return constraint.row_lowering()


def project_in_place(items: Sequence[Item], use_fused: bool = True,
                     stats: Optional[Sequence[Any]] = None) -> None:
    """Project each ``array`` onto its constraint, writing the result into ``array``.

    Parameters
    ----------
    items : sequence of (NDArray, Constraint, Reduction)
        Classic NDArrays in the parameter's full shape, each with its constraint and the
        per-output-unit reduction resolved for the parameter.
    use_fused : bool, default True
        Use the fused kernel where it applies (float32, CPU, built-in constraints, rows that are
        contiguous). Items it does not cover use stock operators.
    stats : sequence of NDArray or None, default None
        One float32 array of 3 per item to receive ``(moved, max_norm, mean_norm)`` of its
        projection (:func:`measured`); the kernel computes them where it runs (then a
        composition of several kernel steps takes the stock path).

    Notes
    -----
    A weight of more than two dimensions (a convolution filter bank) reaches the kernel as a 2-D
    (units, fan-in) view after a multiplication by 1 of its first filter (:func:`_plain_rows`):
    after an inference-mode forward MKL-DNN may hold the weight in its blocked layout, which
    library operators cannot read, and that stock operator leaves it in the plain layout when it
    runs.
    """
    project = kernel() if use_fused else None
    rounds: List[List[Tuple[Any, int, RowLowering]]] = []
    outputs: List[Any] = []
    for at, (array, constraint, reduction) in enumerate(items):
        out = stats[at] if stats is not None else None
        plan = _fused_plan(array, constraint, reduction, out is not None) \
            if project is not None else None
        if plan is None:
            if out is None:
                constraint(array, reduction).copyto(array)
            else:
                measured(array, reduction, getattr(constraint, "ord", 2),
                         lambda a=array, c=constraint, r=reduction: c(a, r).copyto(a), out)
            continue
        units, steps = plan
        if array.ndim > 2:
            array = _plain_rows(array, units)
        for depth, step in enumerate(steps):  # Compose members run in order, one call each
            if len(rounds) <= depth:
                rounds.append([])
            rounds[depth].append((array, units, step))
        if out is not None:
            outputs.append(out)
    for calls in rounds:
        arrays = [a for a, _, _ in calls]
        attributes = _joined([(units, step) for _, units, step in calls])
        if outputs:  # monitored plans have one step: one round
            attributes["stats"] = "1"
        project(*arrays, out=arrays + outputs, **attributes)


def measured(array: Any, reduction: Optional[Reduction], order: float, project: Any,
             out: Any) -> None:
    """Run ``project()``, which rewrites ``array`` in place, and write its statistics to ``out``.

    ``out`` (float32, 3 entries) receives the fraction of output units whose norm the
    projection changed, and the largest and mean unit norm after it: the ``order``-norm over
    ``reduction``'s axes (the layer's per-unit slices). Queued operators only, no host sync.
    """
    resolved = reduction if reduction is not None else per_output_unit(array.shape)
    view = array.reshape(resolved.view_shape) if resolved.view_shape is not None else array

    def norms() -> Any:
        rows = unit_rows(view, resolved.axes)[0]
        rows = rows.astype(np.float32) if rows.dtype == np.float16 else rows
        return slice_norms(rows, (1,), order).reshape((-1,))

    before = norms()
    project()
    after = norms()
    ndarray.concat(ndarray.mean(before != after), ndarray.max(after), ndarray.mean(after),
                   dim=0).astype(np.float32).copyto(out)


def fused_rule(optimizer: Any) -> Optional[Tuple[str, Tuple[float, float, float]]]:
    """The fused kernel's rule for ``optimizer``'s update and its hyperparameters, or None.

    ``("sgd_mom", (momentum, 0, 0))`` for MXNet's ``SGD`` and ``("nag_mom", ...)`` for ``NAG``,
    both with momentum; ``("adam", (beta1, beta2, epsilon))``; ``("rmsprop", (gamma1, epsilon,
    clip_weights or -1))`` for ``RMSProp`` with ``centered=False``. Exact classes only: a
    subclass may compute another update. Read at every call (hyperparameters may be changed).
    """
    kind = type(optimizer)
    if kind is SGD or kind is NAG:
        if not optimizer.momentum > 0:
            return None
        return ("sgd_mom" if kind is SGD else "nag_mom"), (float(optimizer.momentum), 0.0, 0.0)
    if kind is Adam:
        return "adam", (float(optimizer.beta1), float(optimizer.beta2), float(optimizer.epsilon))
    if kind is RMSProp and not optimizer.centered:
        clip_weights = float(optimizer.clip_weights) if optimizer.clip_weights else -1.0
        return "rmsprop", (float(optimizer.gamma1), float(optimizer.epsilon), clip_weights)
    return None


class FusedPlan(NamedTuple):
    """How one weight enters a fused update call: its entry of the kernel's "rows" attribute,
    the optimizer state arrays the kernel updates, and its row count if it is a filter bank
    (reaching the kernel as a 2-D view), else 0."""

    entry: str
    states: List[Any]
    bank_units: int


class FusedCall(NamedTuple):
    """One fused update call for a set of arrays.

    ``attributes`` are the kernel's fixed attributes, ``inputs`` and ``outputs`` its arrays in
    order (filter banks as 2-D views), ``first_filters`` one-filter views of the filter banks to
    multiply by 1 before each call (:func:`_plain_rows`).
    """

    attributes: Dict[str, str]
    inputs: List[Any]
    outputs: List[Any]
    first_filters: List[Any]


def plan_fused_update(rule: str, weight: Any, grad: Any, state: Any,
                      projection: Optional[Tuple[Constraint, Reduction, Any]],
                      monitored: bool = False) -> Optional[FusedPlan]:
    """How ``weight`` enters a fused update call, or None if the kernel cannot update it.

    The kernel does exactly what the optimizer's ``update_multi_precision`` (the update
    :func:`fused_rule` names) followed by the projection would. It does not cover sparse
    gradients or states, anything but float32 on the CPU, weights whose units are not leading
    rows, and constraints it does not compute.

    Parameters
    ----------
    rule : str
        The update, from :func:`fused_rule`.
    weight, grad, state
        The parameter's arrays in an update call.
    projection : (constraint, reduction, shape) or None
        Its projection, None if unconstrained.
    monitored : bool, default False
        Whether the call also writes the weight's statistics (as :func:`measured`).
    """
    kept = _states(rule, state)
    if update_kernel() is None or grad.stype != "default" or not _fusable(weight) or kept is None:
        return None
    lowering: Tuple[int, RowLowering] = (1, RowLowering("none"))
    if projection is not None:
        plan = _fused_plan(weight, projection[0], projection[1], monitored)
        if plan is None or len(plan[1]) != 1:
            return None
        lowering = (plan[0], plan[1][0])
    return FusedPlan(_joined([lowering])["rows"], kept, weight.shape[0] if weight.ndim > 2 else 0)


def assemble_fused_update(rule: str, weights: Sequence[Any], grads: Sequence[Any],
                          plans: Sequence[FusedPlan], monitored: bool = False) -> FusedCall:
    """The fused update call of ``weights`` and ``grads``, planned by :func:`plan_fused_update`."""
    inputs, outputs, first_filters = [], [], []
    for weight, grad, plan in zip(weights, grads, plans):
        rows = weight
        if plan.bank_units:
            first, rows = _first_filter_and_rows(weight, plan.bank_units)
            first_filters.append(first)
        inputs += [rows, grad, *plan.states]
        outputs += [rows, *plan.states]
    attributes = {"rows": ";".join(plan.entry for plan in plans), "rule": rule,
                  **({"stats": "1"} if monitored else {})}
    return FusedCall(attributes, inputs, outputs, first_filters)


def fused_rates(optimizer: Any, indices: Sequence[Any]) -> List[float]:
    """Count one update of each of ``indices`` on the optimizer's current device, as its own
    update would, and return ``[lr_1, wd_1, lr_2, wd_2, ...]`` for :func:`fused_update`
    (multipliers and schedules applied).

    Adam's learning rate carries its bias correction, ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``
    at the parameter's update count ``t``, as ``Adam.update`` computes it.
    """
    rule, (h1, h2, _) = fused_rule(optimizer)
    listed = list(indices)
    compat.count_update(optimizer, listed)
    rates: List[float] = []
    for index, (lr, wd) in zip(listed, compat.optimizer_rates(optimizer, listed)):
        if rule == "adam":
            t = compat.update_count(optimizer, index)
            lr *= math.sqrt(1.0 - h2 ** t) / (1.0 - h1 ** t)
        rates += [float(lr), float(wd)]
    return rates


def fused_update(optimizer: Any, call: FusedCall, rates: Sequence[float],
                 stats: Sequence[Any] = ()) -> None:
    """Run a fused update and projection (from :func:`assemble_fused_update`) in one kernel call.

    ``rates`` come from :func:`fused_rates`; ``stats`` (one float32 array of 3 per weight) when
    the call was assembled with statistics. Filter banks are first put in the plain layout
    (:func:`_plain_rows`).
    """
    _, hyperparameters = fused_rule(optimizer)
    clip = float(optimizer.clip_gradient) if optimizer.clip_gradient else -1.0
    numbers = [float(optimizer.rescale_grad), clip, *hyperparameters, *rates]
    for first in call.first_filters:
        first *= 1.0
    update_kernel()(*call.inputs, out=call.outputs + list(stats),
                    update=",".join(map(repr, numbers)), **call.attributes)


def _states(rule: str, state: Any) -> Optional[List[Any]]:
    """The optimizer state arrays the kernel updates for ``rule``, or None if ``state`` is not
    the dense float32 state it expects (a multi-precision pair, sparse, centered RMSProp)."""
    arrays = [state] if rule in ("sgd_mom", "nag_mom") else (
        list(state) if isinstance(state, (tuple, list)) else [])
    if len(arrays) != (2 if rule == "adam" else 1):
        return None
    if not all(getattr(a, "stype", None) == "default" and a.dtype == np.float32 for a in arrays):
        return None
    return arrays


def _joined(calls: Sequence[Tuple[int, RowLowering]]) -> Dict[str, str]:
    """The kernel's "rows" attribute for per-weight (rows, (mode, lo, hi, rate)) entries (``ord`` as 1, 2 or 0 for the max norm)."""
    return {"rows": ";".join(f"{units},{mode},{lo!r},{hi!r},{rate!r},{_KERNEL_RTOL!r},"
                             f"{0 if order == np.inf else int(order)}"
                             for units, (mode, lo, hi, rate, order) in calls)}


def _fused_plan(array: Any, constraint: Constraint, reduction: Reduction, monitored: bool = False
                ) -> Optional[Tuple[int, List[RowLowering]]]:
    """(rows, kernel steps) when the fused kernel computes exactly this projection, else None.

    ``monitored``: the kernel also computes per-unit statistics, so the rows must be the
    layer's output units (elementwise steps included) and there must be one step.
    """
    if not _fusable(array):
        return None
    members = constraint.constraints if isinstance(constraint, Compose) else (constraint,)
    shape = tuple(array.shape)
    units = None
    steps = []
    for member in members:
        parameters = lowering_of(member)
        if parameters is None:
            return None
        if parameters.mode == "norm":
            resolved = member.reduction_for(shape, reduction)
            rows = _leading_rows(resolved, shape)
            if rows is None or (units is not None and rows != units):
                return None
            units = rows
        steps.append(parameters)
    if monitored:
        rows = _leading_rows(reduction if reduction is not None else per_output_unit(shape), shape)
        if len(steps) != 1 or rows is None or (units is not None and units != rows):
            return None
        units = rows
    return (units if units is not None else 1), steps


def _leading_rows(reduction: Reduction, shape: Tuple[int, ...]) -> Optional[int]:
    """Number of rows if the reduced axes are the contiguous trailing axes, else None."""
    if reduction.view_shape is not None:
        return None
    axes = reduction.axes
    first = len(shape) - len(axes)
    if tuple(axes) != tuple(range(first, len(shape))):
        return None
    return math.prod(shape[:first])  # numpy's prod costs ~40 us per call here, once per update


def _plain_rows(array: Any, units: int) -> Any:
    """``array`` as a (units, fan-in) view whose memory is in the plain row-major layout.

    An inference-mode forward may leave a convolution weight in MKL-DNN's blocked layout, and
    whether it did is only known when queued operators run. Writing into a view of a blocked
    array makes MXNet reorder the whole array to the plain layout first (``NDArray::CopyFrom``),
    so an exact multiplication by 1 of a small view (the first filter) leaves the array plain
    for the kernel queued after it, and costs one filter, not a pass over the weight, when the
    array is plain already.
    """
    first, rows = _first_filter_and_rows(array, units)
    first *= 1.0
    return rows


def _first_filter_and_rows(array: Any, units: int) -> Tuple[Any, Any]:
    """A view of ``array``'s first filter (a view even with one filter) and its 2-D row view."""
    first = array[0:1] if array.shape[0] > 1 else array.reshape((1, -1))
    return first, array.reshape((units, -1))


def _fusable(array: Any) -> bool:
    """Whether the kernels can compute on ``array`` (through :func:`_plain_rows` if above 2-D)."""
    return (array.dtype == np.float32 and array.stype == "default"
            and array.context.device_type in ("cpu", "cpu_pinned"))
