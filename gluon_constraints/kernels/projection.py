"""Projecting arrays in place: the fused kernel where it applies, stock operators elsewhere.

Used by the optimizer wrapper (on the arrays an update wrote) and by ``apply_constraints``. A
constraint reaches the kernel through the :class:`~gluon_constraints.catalogue.lowering.RowLowering`
registered for its class (:func:`unit_groups`); everything else uses the constraint's own
stock-operator projection. No host synchronisation: every path only queues operators on MXNet's
engine, except the stock projection of the rows a row-sparse array has
(:func:`project_touched_rows`), which reads their indices. This module knows constraints and
arrays, not optimizers: the fused update lives with the update rules
(``training/fused_update.py``).
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet import ndarray

from ..catalogue import BOUNDARY_RTOL, Constraint, Reduction
from ..catalogue.base import ELEMENTWISE, PER_UNIT
from ..catalogue.compose import Compose
from ..catalogue.lowering import row_lowering
from ..catalogue.norms import slice_norms, widened
from ..catalogue.reduction import per_output_unit, unit_rows, viewed
from ..errors import KernelCallError
from .boundary import RULES, Rates, UnitGroup, UpdateRule, kernel_can_take, unit_group
from .library import Kernel, PreparedCall, kernel

__all__ = ["project_in_place", "KernelItem", "kernel_item", "ProjectionCall", "projection_call",
           "run_and_measure", "unit_groups", "unit_layout", "leading_rows", "first_filter",
           "projects_rows", "touched_group", "project_touched_rows"]

# The kernels compute in float32: the catalogue's float32 band, so both paths agree.
_KERNEL_RTOL = BOUNDARY_RTOL[np.dtype(np.float32)]

Item = Tuple[Any, Constraint, Reduction]
#: A weight's unit layout in the kernel, ``(groups, runs, units_per_group)``: see :func:`unit_layout`.
Layout = Tuple[int, int, int]


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
        projection (:func:`run_and_measure`); the kernel computes them where it runs (then a
        composition of several kernel steps takes the stock path).

    Notes
    -----
    A weight of more than two dimensions (a convolution filter bank) reaches the kernel after a
    multiplication by 1 of its first filter (:func:`first_filter`): after an inference-mode
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
                def stock(a: Any = array, c: Constraint = constraint, r: Reduction = reduction) -> None:
                    c(a, r).copyto(a)

                run_and_measure(stock, array, reduction, getattr(constraint, "ord", 2), out)
            continue
        kernel_items.append(item)
        if out is not None:
            outputs.append(out)
    projection_call(kernel_items, outputs).run()


class KernelItem(NamedTuple):
    """One array's part in the projection kernel's calls (:func:`kernel_item`).

    ``array`` is what the kernel writes, ``groups`` its unit group for each kernel step (a
    ``Compose``'s members in order, one call each), ``first_filter`` the one-filter view of a
    filter bank to multiply by 1 before the call (None below 3-D).
    """

    array: Any
    groups: Tuple[UnitGroup, ...]
    first_filter: Optional[Any]


def kernel_item(array: Any, constraint: Constraint, reduction: Reduction,
                monitored: bool = False) -> Optional[KernelItem]:
    """How ``array`` (a classic NDArray) enters the projection kernel, or None where the kernel
    does not compute this projection or is not loaded.

    ``monitored``: the call also writes the array's statistics (:func:`run_and_measure`).
    """
    if kernel() is None:
        return None
    groups = unit_groups(array, constraint, reduction, monitored)
    if groups is None:
        return None
    return KernelItem(array, tuple(groups), first_filter(array) if array.ndim > 2 else None)


class ProjectionCall(NamedTuple):
    """The kernel work that projects a fixed list of items (:func:`projection_call`): the filter
    banks' one-filter views to multiply by 1 first (:func:`first_filter`), then one prepared
    call per step depth. :meth:`run` queues it, as often as wanted."""

    first_filters: List[Any]
    calls: List[PreparedCall]

    def run(self) -> None:
        """Queue the projection of the items' arrays as they are now."""
        for first in self.first_filters:
            first *= 1.0
        for call in self.calls:
            call.queue()


def _loaded_kernel() -> Kernel:
    """The loaded kernel; kernel items exist only where it is loaded."""
    loaded = kernel()
    if loaded is None:
        raise KernelCallError("a fused projection was prepared, but the fused kernel is not loaded")
    return loaded


def projection_call(items: Sequence[KernelItem], stats: Sequence[Any] = ()) -> ProjectionCall:
    """The kernel work that projects ``items`` in place: one call per step depth, all items at
    once. ``stats``: one float32 array of 3 per item to receive its statistics (monitored items
    have one step). The items' arrays may live on different CPU contexts."""
    calls = []
    for depth in range(max((len(item.groups) for item in items), default=0)):
        stepped = [item for item in items if len(item.groups) > depth]
        calls.append(_loaded_kernel().projection([item.array for item in stepped],
                                                 [item.groups[depth] for item in stepped], stats))
    return ProjectionCall([item.first_filter for item in items if item.first_filter is not None], calls)


def run_and_measure(project: Callable[[], Any], array: Any, reduction: Optional[Reduction],
                    order: float, out: Any) -> None:
    """Run ``project()``, which rewrites ``array`` in place, and write its statistics to ``out``.

    ``out`` (float32, 3 entries) receives the fraction of output units whose norm the
    projection changed, and the largest and mean unit norm after it: the ``order``-norm over
    ``reduction``'s axes (the layer's per-unit slices). Queued operators only, no host sync.
    """
    resolved = reduction if reduction is not None else per_output_unit(array.shape)

    def norms() -> Any:
        rows = unit_rows(viewed(array, resolved), resolved.axes)[0]
        return slice_norms(widened(rows), (1,), order).reshape((-1,))

    before = norms()
    project()
    after = norms()
    ndarray.concat(ndarray.mean(before != after), ndarray.max(after), ndarray.mean(after),
                   dim=0).astype(np.float32).copyto(out)


def unit_groups(array: Any, constraint: Constraint, reduction: Reduction, monitored: bool = False
                ) -> Optional[List[UnitGroup]]:
    """The kernel's unit group for each step of ``constraint`` on ``array`` (a ``Compose``'s
    members in order), or None where the kernel does not compute exactly this projection.

    ``monitored``: the kernel also computes per-unit statistics, so the units must be the
    layer's output units (elementwise steps included) and there must be one step.
    """
    if not kernel_can_take(array):
        return None
    return _shape_unit_groups(tuple(array.shape), constraint, reduction, monitored)


def _shape_unit_groups(shape: Tuple[int, ...], constraint: Constraint, reduction: Reduction,
                       monitored: bool) -> Optional[List[UnitGroup]]:
    """:func:`unit_groups` for a weight of ``shape`` the kernel can take."""
    members = constraint.constraints if isinstance(constraint, Compose) else (constraint,)
    layout = None
    lowerings = []
    for member in members:
        lowering = row_lowering(member)
        if lowering is None:
            return None
        if lowering.mode == "norm":
            units = unit_layout(member.reduction_for(shape, reduction), shape)
            if units is None or (layout is not None and units != layout):
                return None
            layout = units
        lowerings.append(lowering)
    if monitored:
        units = unit_layout(reduction if reduction is not None else per_output_unit(shape), shape)
        if len(lowerings) != 1 or units is None or (layout is not None and layout != units):
            return None
        layout = units
    chosen = layout if layout is not None else leading_rows(shape)
    return [unit_group(chosen, lowering.mode, lowering.lo, lowering.hi, lowering.rate, _KERNEL_RTOL,
                       lowering.ord) for lowering in lowerings]


def unit_layout(reduction: Reduction, shape: Tuple[int, ...]) -> Optional[Layout]:
    """The kernel's unit layout ``(groups, runs, units_per_group)`` of ``reduction``'s slices of
    a weight of ``shape``, or None where the slices do not have one.

    The weight (or ``reduction.view_shape``) is read as ``(groups, runs, units_per_group,
    run_length)`` by merging neighbouring axes: ``groups`` the leading kept axes, ``runs`` the
    reduced ones after them, ``units_per_group`` the kept ones after those, ``run_length`` the
    trailing reduced ones; each unit is ``runs`` runs of ``run_length`` contiguous elements.
    Axes of size 1 are ignored; with one unit per group a unit is one row (one run). A pattern
    with more alternations (kept, reduced, kept, reduced, kept) has no such layout.
    """
    viewed_shape = reduction.view_shape if reduction.view_shape is not None else shape
    merged: List[List[Any]] = []  # [reduced?, size] of merged neighbouring axes
    for axis, size in enumerate(viewed_shape):
        reduced = axis in reduction.axes
        if size == 1:
            continue
        if merged and merged[-1][0] == reduced:
            merged[-1][1] *= size
        else:
            merged.append([reduced, size])
    if merged and merged[0][0]:
        merged.insert(0, [False, 1])
    if len(merged) > 4:
        return None
    groups, runs, units_per_group = ([size for _, size in merged] + [1, 1, 1])[:3]
    return (groups, 1, 1) if units_per_group == 1 else (groups, runs, units_per_group)


def leading_rows(shape: Tuple[int, ...]) -> Layout:
    """The layout of a weight's rows along axis 0 (one row for a 1-D weight): how the kernel
    splits a weight whose projection has no norm step."""
    return (int(shape[0]), 1, 1) if len(shape) > 1 else (1, 1, 1)


def first_filter(array: Any) -> Any:
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


# -- the rows a row-sparse array has ---------------------------------------------------------------
def projects_rows(constraint: Constraint, reduction: Reduction, shape: Tuple[int, ...]) -> bool:
    """Whether ``constraint`` projects each row (slice along axis 0) of a weight of ``shape`` on
    its own: every step elementwise, or per unit with rows for units; none stateful.

    Then projecting only some rows gives those rows what the whole weight's projection would.
    """
    members = constraint.constraints if isinstance(constraint, Compose) else (constraint,)
    for member in members:
        if member.stateful or member.locality not in (ELEMENTWISE, PER_UNIT):
            return False
        if member.locality == PER_UNIT:
            resolved = member.reduction_for(shape, reduction)
            view = resolved.view_shape if resolved.view_shape is not None else shape
            if view[0] != shape[0] or tuple(sorted(resolved.axes)) != tuple(range(1, len(view))):
                return False
    return True


def touched_group(array: Any, constraint: Constraint, reduction: Reduction) -> Optional[UnitGroup]:
    """The kernel's unit group for ``constraint`` on rows of ``array`` (dense, or row-sparse
    with every row stored), or None where ``gc_touched_rows`` does not compute exactly this
    projection (one step whose units are rows)."""
    if array.dtype != np.float32 or array.stype not in ("default", "row_sparse") or array.ndim < 2 \
            or array.context.device_type not in ("cpu", "cpu_pinned"):
        return None
    shape = tuple(array.shape)
    groups = _shape_unit_groups(shape, constraint, reduction, False)
    if groups is None or len(groups) != 1 or (groups[0].groups, groups[0].runs, groups[0].units_per_group) \
            != leading_rows(shape):
        return None
    return groups[0]


def project_touched_rows(array: Any, rows: Any, constraint: Constraint, reduction: Reduction, stats: Optional[Any],
                         group: Optional[UnitGroup] = None, indices: Optional[Any] = None) -> None:
    """Project in place the rows of ``array`` that row-sparse ``rows`` has (its row indices),
    leaving every other row as it is, bit for bit.

    ``constraint`` must project rows on their own (:func:`projects_rows`). With ``group``
    (:func:`touched_group`) the kernel runs without waiting (``indices``: a dense int64 buffer
    of ``array.shape[0] + 1`` entries on its context, made here if None); otherwise stock
    operators do, after reading the row indices on the host (which waits for ``rows``).
    ``array`` is dense, or row-sparse with every row stored (a kvstore's copy of a row-sparse
    weight); ``rows`` may be ``array`` itself, row-sparse: then its stored rows are projected,
    every row or not. ``stats`` (a float32 array of 3, or None) receives the fraction of the
    touched rows the projection changed and their largest and mean norm after it.
    """
    loaded = kernel() if group is not None else None
    if loaded is not None and group is not None:
        if indices is None:
            indices = ndarray.empty((array.shape[0] + 1,), ctx=array.context, dtype=np.int64)
        loaded.touched_rows(UpdateRule(RULES["none"], 0, 1.0, -1.0, 0.0, 0.0, 0.0), group, Rates(0.0, 0.0),
                            array, rows, indices, stats=stats)
        return
    listed = rows.indices
    if listed.size == 0:
        if stats is not None:
            stats[:] = 0
        return
    dense = array.stype == "default"
    values = ndarray.take(array, listed) if dense else ndarray.sparse.retain(array, listed).data
    row_reduction = Reduction(tuple(range(1, values.ndim)))
    def project() -> None:
        constraint(values, constraint.reduction_for(values.shape, row_reduction)).copyto(values)
    if stats is not None:
        run_and_measure(project, values, row_reduction, getattr(constraint, "ord", 2), stats)
    else:
        project()
    if dense:
        ndarray._internal._scatter_set_nd(array, values, listed.reshape((1, -1)), shape=array.shape, out=array)
    elif rows is array:  # its own stored rows, every one of them or not
        ndarray.sparse.row_sparse_array((values, listed), shape=array.shape, ctx=array.context).copyto(array)
    else:
        # A row-sparse array takes rows through a lazy SGD step: (1 - 1 * 1) * w - 1 * (-v) is v.
        written = ndarray.sparse.row_sparse_array((-values, listed), shape=array.shape, ctx=array.context)
        ndarray.sparse.sgd_update(array, written, lr=1.0, wd=1.0, rescale_grad=1.0, lazy_update=True, out=array)
