"""The projector: projects the arrays an update wrote, keeping each parameter's state in one record.

A :class:`ConstrainedOptimizer <.optimizer.ConstrainedOptimizer>` is its wrapped optimizer's
update followed by a :class:`Projector`. The projector holds, for each parameter (by the
trainer's index), one :class:`ParameterRecord`: the projection the trainer gave it, and what
it keeps between steps: the fused-update entry of each device's arrays, the filter bank's
one-filter view, a stateful constraint's state per device copy, the monitoring buffer per
context. Nothing is keyed by object ids: each record holds the objects it was made for and
compares them by identity.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet import ndarray

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction
from ..errors import EnforcementError
from ..kernels.projection import first_filter, project_in_place, run_and_measure
from .fused_update import UpdateEntry, update_entry
from .update_rules import FusedRule

__all__ = ["Projection", "ParameterRecord", "Projector"]


class Projection(NamedTuple):
    """What to project for one parameter: the constraint, its reduction and the full shape."""

    constraint: Constraint
    reduction: Reduction
    shape: Tuple[int, ...]


class _DeviceEntry(NamedTuple):
    """A fused-update entry and what it was made for: valid while the optimizer state, the
    projection, the rule and monitoring are the same."""

    state: Any
    projection: Optional[Projection]
    rule: str
    monitored: bool
    entry: Optional[UpdateEntry]


class ParameterRecord:
    """Everything the wrapper keeps for one parameter.

    Attributes
    ----------
    projection : Projection or None
        Its projection, as the trainer (or the pickled snapshot, on servers) gave it.
    resolved : tuple or None
        A ``Scheduled`` constraint resolved at an update count: ``(scheduled, resolved
        constraint, projection with it)``, reused while the schedule gives the same constraint.
    entries : dict
        Per device id, the :class:`_DeviceEntry` of the arrays the fused update last saw there.
    filters : dict
        Per device id, ``(weight, its one-filter view)`` for a filter bank.
    iterates : dict
        Per context (``str``), a stateful constraint's state (``SpectralNorm``'s vector).
    stats : dict
        Per context (``str``), the float32 array of 3 that monitoring writes.
    unreported : dict
        Per context, where a fused update writes the statistics of a step that does not project
        the weight (kept apart from :attr:`stats`, which hold the last projection's).
    feasible : dict
        Per context, the projection under which that copy was last projected whole: while it
        is the one due, a lazy update of a row-sparse gradient projects only the rows it wrote
        (:mod:`.touched_rows`).
    row_plans : dict
        Per context, how that copy's updates of a row-sparse gradient project their rows
        (:class:`~.touched_rows.RowsPlan`).
    """

    __slots__ = ("projection", "resolved", "entries", "filters", "iterates", "stats", "unreported", "feasible",
                 "row_plans")

    def __init__(self, projection: Optional[Projection] = None) -> None:
        self.projection = projection
        self.resolved: Optional[Tuple[Any, Constraint, Projection]] = None
        self.entries: Dict[int, _DeviceEntry] = {}
        self.filters: Dict[int, Tuple[Any, Any]] = {}
        self.iterates: Dict[str, Any] = {}
        self.stats: Dict[str, Any] = {}
        self.unreported: Dict[str, Any] = {}
        self.feasible: Dict[str, Projection] = {}
        self.row_plans: Dict[str, Any] = {}


class Projector:
    """Projects the arrays updates wrote, each onto its parameter's constraint.

    Parameters
    ----------
    projections : dict
        ``{index: Projection}`` of the constrained parameters.
    every : int
        Project after updates ``every``, ``2 * every``, ... of each parameter only.
    monitor : bool
        Record each projection's statistics (:attr:`ParameterRecord.stats`).
    kernel : Kernel or None
        The fused kernel this process loaded (decided once, when the optimizer is made), or
        None: fused updates are then never planned.
    """

    def __init__(self, projections: Dict[Any, Projection], every: int, monitor: bool, kernel: Any) -> None:
        self.records: Dict[Any, ParameterRecord] = {i: ParameterRecord(p) for i, p in projections.items()}
        self.every = every
        self.monitor = monitor
        self.kernel = kernel
        self._deferred: Optional[List[Tuple[Any, ...]]] = None

    def record(self, index: Any) -> ParameterRecord:
        """The record of parameter ``index`` (made empty the first time)."""
        record = self.records.get(index)
        if record is None:
            record = self.records[index] = ParameterRecord()
        return record

    def set_projection(self, index: Any, projection: Optional[Projection]) -> None:
        """Project parameter ``index`` with ``projection`` from now on (None: not at all)."""
        self.record(index).projection = projection

    # -- what an update projects ----------------------------------------------------------------
    def due(self, optimizer: Any, index: Any) -> Optional[Projection]:
        """What the coming update of ``index`` projects: None between every-th updates, a
        ``Scheduled`` constraint resolved at the update's count (the same objects while the
        resolved constraint does not change)."""
        record = self.records.get(index)
        if record is None:
            return None
        projection = record.projection
        if projection is None or (self.every == 1 and not projection.constraint.scheduled):
            return projection
        update = compat.update_count(optimizer, index) + 1
        if update % self.every:
            return None
        if not projection.constraint.scheduled:
            return projection
        resolved = projection.constraint.at(update)
        kept = record.resolved
        if kept is None or kept[0] is not projection.constraint or kept[1] is not resolved:
            kept = record.resolved = (projection.constraint, resolved, projection._replace(constraint=resolved))
        return kept[2]

    def update_entry(self, rule: FusedRule, index: Any, weight: Any, grad: Any, state: Any,
                     projection: Optional[Projection]) -> Optional[UpdateEntry]:
        """How ``weight`` enters a fused update of ``rule`` (None: the kernel cannot take it),
        kept per device while the state, projection, rule and monitoring are the same."""
        record = self.record(index)
        device = weight.context.device_id
        kept = record.entries.get(device)
        if kept is None or kept.state is not state or kept.projection is not projection \
                or kept.rule != rule.name or kept.monitored != self.monitor:
            kept = _DeviceEntry(state, projection, rule.name, self.monitor,
                                update_entry(self.kernel, rule, weight, grad, state, projection, self.monitor))
            record.entries[device] = kept
        return kept.entry

    def first_filter(self, index: Any, weight: Any) -> Any:
        """The one-filter view of filter bank ``weight`` (kept while it is the same array)."""
        record = self.record(index)
        device = weight.context.device_id
        kept = record.filters.get(device)
        if kept is None or kept[0] is not weight:
            kept = record.filters[device] = (weight, first_filter(weight))
        return kept[1]

    def stats_for(self, index: Any, array: Any, reported: bool = True) -> Any:
        """The statistics buffer of parameter ``index`` on ``array``'s context (``reported``:
        the one ``constraint_stats`` reads, else where a step that projects nothing writes)."""
        record = self.record(index)
        buffers = record.stats if reported else record.unreported
        key = str(array.context)
        if key not in buffers:
            buffers[key] = ndarray.zeros((3,), ctx=array.context, dtype=np.float32)
        return buffers[key]

    def project(self, updated: Sequence[Tuple[Any, Optional[Projection], Any, Any]],
                master_slot: Optional[int]) -> None:
        """Project every weight an update call wrote, in one batch where possible.

        ``updated``: ``(index, projection, weight, optimizer state)`` per parameter of the call;
        ``master_slot``: where float16 weights keep their float32 master copy in the state (the
        master is projected and cast into the weight), None without multi-precision. A stateful
        constraint (``SpectralNorm``) continues from the state it left for this parameter and
        device copy.
        """
        items, stats, casts = [], [], []
        for index, projection, weight, state in updated:
            if projection is None:
                continue
            constraint, reduction, shape = projection
            target = weight
            if master_slot is not None and weight.dtype == np.float16:
                target = state[master_slot]
                casts.append((target, weight))
            full = _full_shape(target, shape)
            if constraint.stateful:
                record = self.record(index)

                def continued(record: ParameterRecord = record, full: Any = full,
                              constraint: Constraint = constraint, reduction: Reduction = reduction) -> None:
                    key = str(full.context)
                    out, record.iterates[key] = constraint.apply_with_state(full, reduction, record.iterates.get(key))
                    out.copyto(full)

                if self.monitor:
                    run_and_measure(continued, full, reduction, 2, self.stats_for(index, full))
                else:
                    continued()
                continue
            items.append((full, constraint, reduction))
            stats.append(self.stats_for(index, full) if self.monitor else None)
        if self._deferred is not None:
            self._deferred.append((items, stats, casts, [u[0] for u in updated]))
        else:
            self._project(items, stats, casts)

    def _project(self, items: Sequence[Any], stats: Sequence[Any], casts: Sequence[Any]) -> None:
        """Project ``items`` (in one kernel call where possible), then cast master copies."""
        project_in_place(items, stats=stats if self.monitor else None)
        for master, weight in casts:
            ndarray.cast(master, dtype=weight.dtype, out=weight)

    # -- deferral (a local kvstore's pushes) ----------------------------------------------------
    @property
    def deferring(self) -> bool:
        """Whether projections are queued until :meth:`flush`."""
        return self._deferred is not None

    def defer(self) -> None:
        """Queue the coming calls' projections until :meth:`flush` (stateful ones excepted)."""
        self._deferred = []

    @property
    def deferred_indices(self) -> List[Any]:
        """The indices of the parameters whose projections are queued."""
        return [index for part in self._deferred or () for index in part[3]]

    def run_deferred(self) -> None:
        """Run the queued projections in one batch, and keep deferring."""
        deferred = self._deferred or []
        if self._deferred is not None:
            self._deferred = []
        if deferred:
            items, stats, casts = (sum((list(part[k]) for part in deferred), []) for k in range(3))
            self._project(items, stats, casts)

    def stop_deferring(self) -> None:
        """Stop queueing (the queue must have been run)."""
        self._deferred = None


def _full_shape(array: Any, shape: Sequence[int]) -> Any:
    """``array`` viewed with the parameter's shape (servers hold weights flattened to 1-D)."""
    if tuple(array.shape) == tuple(shape):
        return array
    if array.size != math.prod(shape):
        # A server holding a piece of a big array; the trainer refuses this before training.
        raise EnforcementError(f"gluon-constraints got a piece of {array.size} elements of a "
                               f"weight of shape {tuple(shape)}: it cannot be projected. Raise "
                               f"MXNET_KVSTORE_BIGARRAY_BOUND or set update_on_kvstore=False.")
    return array.reshape(shape)
