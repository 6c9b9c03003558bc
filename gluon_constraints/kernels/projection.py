"""Projecting arrays in place: the fused kernel where it applies, stock operators elsewhere.

Used by the optimizer wrapper (on the arrays an update wrote) and by ``apply_constraints``. A
constraint reaches the kernel through the :class:`~gluon_constraints.catalogue.RowLowering` its
class declares (:func:`lowering_of`); everything else uses the constraint's own stock-operator
projection. No host synchronisation: every path only queues operators on MXNet's engine.
"""

from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from mxnet import ndarray
from mxnet.optimizer import NAG, SGD, Adam, RMSProp

from .. import _mxnet_compat as compat
from ..catalogue import BOUNDARY_RTOL, Compose, Constraint, Reduction, RowLowering
from ..catalogue.norms import slice_norms, widened
from ..catalogue.reduction import per_output_unit, unit_rows
from .library import PreparedCall, kernel

__all__ = ["lowering_of", "project_in_place", "KernelItem", "kernel_item", "ProjectionBatch",
           "prepared_projection",
           "unit_layout", "measured", "fused_rule", "FusedPlan",
           "FusedCall", "plan_fused_update", "assemble_fused_update", "fused_rates", "fused_update"]

# A subclass that redefines one of these computes something else than its parent's lowering.
_PROJECTING_METHODS = ("project", "apply_to", "__call__")

# The kernels compute in float32: the catalogue's float32 band, so both paths agree.
_KERNEL_RTOL = BOUNDARY_RTOL[np.dtype(np.float32)]

Item = Tuple[Any, Constraint, Reduction]
#: A weight's unit layout in the kernel, (G, A, U): see :func:`unit_layout`.
Layout = Tuple[int, int, int]


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
        Use the fused kernel where it applies (float32, CPU, built-in constraints, units that are
        runs of contiguous elements: :func:`unit_layout`). Items it does not cover use stock
        operators.
    stats : sequence of NDArray or None, default None
        One float32 array of 3 per item to receive ``(moved, max_norm, mean_norm)`` of its
        projection (:func:`measured`); the kernel computes them where it runs (then a
        composition of several kernel steps takes the stock path).

    Notes
    -----
    A weight of more than two dimensions (a convolution filter bank) reaches the kernel after a
    multiplication by 1 of its first filter (:func:`_first_filter`): after an inference-mode
    forward MKL-DNN may hold the weight in its blocked layout, which the kernel does not read
    (its call fails), and that stock operator leaves it in the plain layout when it runs.
    """
    kernel_items: List[KernelItem] = []
    outputs: List[Any] = []
    for at, (array, constraint, reduction) in enumerate(items):
        out = stats[at] if stats is not None else None
        item = kernel_item(array, constraint, reduction, out is not None) if use_fused else None
        if item is None:
            if out is None:
                constraint(array, reduction).copyto(array)
            else:
                measured(array, reduction, getattr(constraint, "ord", 2),
                         lambda a=array, c=constraint, r=reduction: c(a, r).copyto(a), out)
            continue
        kernel_items.append(item)
        if out is not None:
            outputs.append(out)
    prepared_projection(kernel_items, outputs).run()


class KernelItem(NamedTuple):
    """One array's part in the projection kernel's calls (:func:`kernel_item`).

    ``array`` is what the kernel writes, ``entries`` its "rows" entry for each kernel step (a
    ``Compose``'s members in order, one call each), ``first_filter`` the one-filter view of a
    filter bank to multiply by 1 before the call (None below 3-D).
    """

    array: Any
    entries: Tuple[str, ...]
    first_filter: Optional[Any]


def kernel_item(array: Any, constraint: Constraint, reduction: Reduction,
                monitored: bool = False) -> Optional[KernelItem]:
    """How ``array`` (a classic NDArray) enters the projection kernel, or None where the kernel
    does not compute this projection or is not loaded.

    ``monitored``: the call also writes the array's statistics (:func:`measured`).
    """
    if kernel() is None:
        return None
    plan = _fused_plan(array, constraint, reduction, monitored)
    if plan is None:
        return None
    layout, steps = plan
    first = _first_filter(array) if array.ndim > 2 else None
    return KernelItem(array, tuple(_entry(layout, step) for step in steps), first)


class ProjectionBatch(NamedTuple):
    """The kernel work that projects a fixed list of items (:func:`prepared_projection`): the
    filter banks' one-filter views to multiply by 1 first (:func:`_first_filter`), then one
    prepared call per step depth. :meth:`run` queues it, as often as wanted."""

    first_filters: List[Any]
    calls: List[PreparedCall]

    def run(self) -> None:
        """Queue the projection of the items' arrays as they are now."""
        for first in self.first_filters:
            first *= 1.0
        for call in self.calls:
            call.queue()


def prepared_projection(items: Sequence[KernelItem], stats: Sequence[Any] = ()) -> ProjectionBatch:
    """The kernel work that projects ``items`` in place: one call per step depth, all items at
    once. ``stats``: one float32 array of 3 per item to receive its statistics (monitored items
    have one step). The items' arrays may live on different CPU contexts."""
    calls = []
    for depth in range(max((len(item.entries) for item in items), default=0)):
        stepped = [item for item in items if len(item.entries) > depth]
        calls.append(kernel().projection([item.array for item in stepped],
                                         ";".join(item.entries[depth] for item in stepped), stats))
    return ProjectionBatch([item.first_filter for item in items if item.first_filter is not None], calls)


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
        return slice_norms(widened(unit_rows(view, resolved.axes)[0]), (1,), order).reshape((-1,))

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
    the optimizer state arrays the kernel updates, and whether it is a filter bank (above 2-D,
    which MKL-DNN may hold in its blocked layout)."""

    entry: str
    states: List[Any]
    bank: bool


class FusedCall(NamedTuple):
    """One fused update call for a set of arrays.

    ``rule`` and ``rows`` are the kernel's (see :class:`~.library.Kernel`), ``arrays`` its
    arrays in order (per weight: the weight, its gradient, its states), ``first_filters``
    one-filter views of the filter banks to multiply by 1 before each call
    (:func:`_first_filter`).
    """

    rule: str
    rows: str
    arrays: List[Any]
    first_filters: List[Any]


def plan_fused_update(rule: str, weight: Any, grad: Any, state: Any,
                      projection: Optional[Tuple[Constraint, Reduction, Any]],
                      monitored: bool = False) -> Optional[FusedPlan]:
    """How ``weight`` enters a fused update call, or None if the kernel cannot update it.

    The kernel does exactly what the optimizer's ``update_multi_precision`` (the update
    :func:`fused_rule` names) followed by the projection would. It does not cover sparse
    gradients or states, anything but float32 on the CPU, weights whose units are not
    runs of contiguous elements in a (G, A, U, rest) view, and constraints it does not compute.

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
    if kernel() is None or grad.stype != "default" or not _fusable(weight) or kept is None:
        return None
    layout, step = _leading_rows(weight.shape), RowLowering("none")
    if projection is not None:
        plan = _fused_plan(weight, projection[0], projection[1], monitored)
        if plan is None or len(plan[1]) != 1:
            return None
        layout, step = plan[0], plan[1][0]
    return FusedPlan(_entry(layout, step), kept, weight.ndim > 2)


def assemble_fused_update(rule: str, weights: Sequence[Any], grads: Sequence[Any],
                          plans: Sequence[FusedPlan], plain: bool = False) -> FusedCall:
    """The fused update call of ``weights`` and ``grads``, planned by :func:`plan_fused_update`.

    ``plain``: the weights are known to be in the plain layout, so filter banks need no
    conversion: a local kvstore's own copies are, since only copies and updates write them
    (MXNet's copy into a plain array reorders a blocked source). Were one blocked after all, the
    kernel call would fail (it reads only plain arrays), never compute on it.
    """
    arrays, first_filters = [], []
    for weight, grad, plan in zip(weights, grads, plans):
        if plan.bank and not plain:
            first_filters.append(_first_filter(weight))
        arrays += [weight, grad, *plan.states]
    return FusedCall(rule, ";".join(plan.entry for plan in plans), arrays, first_filters)


def fused_rates(optimizer: Any, indices: Sequence[Any]) -> List[float]:
    """Count one update of each of ``indices`` on the optimizer's current device, as the
    optimizer's own update calls would, and return ``[lr_1, wd_1, lr_2, wd_2, ...]`` for
    :func:`fused_update` (multipliers and schedules applied).

    MXNet counts and asks for the rates one call at a time: a call counts its indices, which
    may raise the optimizer-wide ``num_update``, and then every index of the call gets the
    scheduler's rate at that ``num_update``. SGD updates ``aggregate_num`` parameters per call
    (4 by default), NAG, Adam and RMSProp one. So the indices are counted and rated in calls of
    the optimizer's own size, in order: when parameters have different update counts (layers
    frozen for a while, stale gradients skipped), a learning-rate schedule gives each the rate
    MXNet's own update would.

    Adam's learning rate carries its bias correction, ``lr * sqrt(1 - beta2^t) / (1 - beta1^t)``
    at the parameter's update count ``t``, as ``Adam.update`` computes it.
    """
    rule, (h1, h2, _) = fused_rule(optimizer)
    listed = list(indices)
    size = optimizer.aggregate_num if optimizer.aggregate_num > 0 else 1
    rates: List[float] = []
    for start in range(0, len(listed), size):
        call = listed[start:start + size]
        compat.count_update(optimizer, call)
        for index, (lr, wd) in zip(call, compat.optimizer_rates(optimizer, call)):
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
    (:func:`_first_filter`).
    """
    _, hyperparameters = fused_rule(optimizer)
    clip = float(optimizer.clip_gradient) if optimizer.clip_gradient else -1.0
    numbers = [float(optimizer.rescale_grad), clip, *hyperparameters, *rates]
    for first in call.first_filters:
        first *= 1.0
    kernel().update(call.rule, numbers, call.rows, call.arrays, stats)


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


def _entry(layout: Layout, step: RowLowering) -> str:
    """The kernel's "rows" entry for one weight: its unit layout and one projection step
    (``ord`` as 1, 2 or 0 for the max norm)."""
    mode, lo, hi, rate, order = step
    groups, segments, interleave = layout
    return (f"{groups}/{segments}/{interleave},{mode},{lo!r},{hi!r},{rate!r},{_KERNEL_RTOL!r},"
            f"{0 if order == np.inf else int(order)}")


def _fused_plan(array: Any, constraint: Constraint, reduction: Reduction, monitored: bool = False
                ) -> Optional[Tuple[Layout, List[RowLowering]]]:
    """(unit layout, kernel steps) when the fused kernel computes exactly this projection, else None.

    ``monitored``: the kernel also computes per-unit statistics, so the units must be the
    layer's output units (elementwise steps included) and there must be one step.
    """
    if not _fusable(array):
        return None
    members = constraint.constraints if isinstance(constraint, Compose) else (constraint,)
    shape = tuple(array.shape)
    layout = None
    steps = []
    for member in members:
        parameters = lowering_of(member)
        if parameters is None:
            return None
        if parameters.mode == "norm":
            units = unit_layout(member.reduction_for(shape, reduction), shape)
            if units is None or (layout is not None and units != layout):
                return None
            layout = units
        steps.append(parameters)
    if monitored:
        units = unit_layout(reduction if reduction is not None else per_output_unit(shape), shape)
        if len(steps) != 1 or units is None or (layout is not None and layout != units):
            return None
        layout = units
    return (layout if layout is not None else _leading_rows(shape)), steps


def unit_layout(reduction: Reduction, shape: Tuple[int, ...]) -> Optional[Layout]:
    """The kernel's unit layout ``(G, A, U)`` of ``reduction``'s slices of a weight of ``shape``,
    or None where the slices do not have one.

    The weight (or ``reduction.view_shape``) is read as (G, A, U, B) by merging neighbouring
    axes: G the leading kept axes, A the reduced ones after them, U the kept ones after those,
    B the trailing reduced ones; each unit ``(g, u)`` is ``A`` runs of ``B`` contiguous
    elements. Axes of size 1 are ignored; with ``U = 1`` a unit is one row (``A = 1``). A
    pattern with more alternations (kept, reduced, kept, reduced, kept) has no such layout.
    """
    viewed = reduction.view_shape if reduction.view_shape is not None else shape
    runs: List[List[Any]] = []  # [reduced?, size] of merged neighbouring axes
    for axis, size in enumerate(viewed):
        reduced = axis in reduction.axes
        if size == 1:
            continue
        if runs and runs[-1][0] == reduced:
            runs[-1][1] *= size
        else:
            runs.append([reduced, size])
    if runs and runs[0][0]:
        runs.insert(0, [False, 1])
    if len(runs) > 4:
        return None
    groups, segments, interleave = ([size for _, size in runs] + [1, 1, 1])[:3]
    return (groups, 1, 1) if interleave == 1 else (groups, segments, interleave)


def _leading_rows(shape: Tuple[int, ...]) -> Layout:
    """The layout of a weight's rows along axis 0 (one row for a 1-D weight): how the kernel
    splits a weight whose projection has no norm step."""
    return (int(shape[0]), 1, 1) if len(shape) > 1 else (1, 1, 1)


def _first_filter(array: Any) -> Any:
    """A one-filter view of a filter bank (a view even with one filter), to multiply by 1 before
    each kernel call.

    An inference-mode forward may leave a convolution weight in MKL-DNN's blocked layout, and
    whether it did is only known when queued operators run. Writing into a view of a blocked
    array makes MXNet reorder the whole array to the plain layout first (``NDArray::CopyFrom``),
    so an exact multiplication by 1 of a small view (the first filter) leaves the array plain
    for the kernel queued after it, and costs one filter, not a pass over the weight, when the
    array is plain already. (The kernel reads only the weight's size and memory, so any shape
    of it will do.)
    """
    return array[0:1] if array.shape[0] > 1 else array.reshape((1, -1))


def _fusable(array: Any) -> bool:
    """Whether the kernels can compute on ``array`` (after :func:`_first_filter` if above 2-D)."""
    return (array.dtype == np.float32 and array.stype == "default"
            and array.context.device_type in ("cpu", "cpu_pinned"))
