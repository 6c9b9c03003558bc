"""``ConstrainedOptimizer``: projects each weight onto its constraint right after its update.

The projection has to run where the update runs, on the copy that is authoritative: a device
copy (one context, or ``update_on_kvstore=False``), the kvstore's stored copy
(``update_on_kvstore=True``, the multi-device default, from which every device copy is pulled),
a parameter server's copy (distributed kvstores), or the float32 master copy that
``multi_precision=True`` keeps in the optimizer state and casts to the float16 weight every step.
The one piece of code that runs on exactly that array in every configuration is the optimizer's
update, so this wrapper calls the user's optimizer and then projects what it just updated.

Servers unpickle this class while ``import mxnet`` is still running: the module imports only
``mxnet.ndarray``, ``mxnet.optimizer`` and the catalogue and kernels, never ``mxnet.gluon``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet import ndarray
from mxnet.optimizer import LAMB, LARS, NAG, SGD, Optimizer

from .. import _mxnet_compat as compat
from ..catalogue import Constraint, Reduction, Scheduled
from ..errors import ConstraintArgumentError, EnforcementError, UnsupportedOptimizerError
from ..kernels.library import kernel as fused_kernel
from ..kernels.projection import (FusedCall, FusedPlan, assemble_fused_update, fused_rates,
                                  fused_rule, fused_update, measured, plan_fused_update,
                                  project_in_place)

__all__ = ["ConstrainedOptimizer", "Projection", "master_copy_slot", "cadence", "switch"]


class Projection(NamedTuple):
    """What to project for one parameter: the constraint, its reduction and the full shape."""

    constraint: Constraint
    reduction: Reduction
    shape: Tuple[int, ...]


# Parameters per update call while the kernel is loaded (MXNet's own SGD takes 4).
_FUSED_AGGREGATION = 256
# During a local kvstore's pushes, the queued updates run once this many elements are queued:
# the trainer pushes the last layers first, whose gradients the backward pass computes first,
# so the first groups update while it goes on; smaller groups would cost more calls.
_DEFERRED_SIZE = 1 << 20
# Where Optimizer.create_state_multi_precision puts the float32 master copy, by the class that
# defines it: the base class returns (master, state); SGD, NAG and LARS return (state, master).
_MASTER_SLOT_BY_CREATOR = {Optimizer: 0, SGD: 1, NAG: 1, LARS: 1}
# Classes whose update_multi_precision updates that master copy and casts it into the weight.
_CASTING_UPDATERS = {Optimizer: (Optimizer, LAMB), SGD: (SGD,), NAG: (NAG,), LARS: (LARS,)}


def master_copy_slot(optimizer_class: type) -> int:
    """Index of the float32 master copy in a multi-precision state of ``optimizer_class``.

    Parameters
    ----------
    optimizer_class : type
        The (unwrapped) optimizer's class.

    Raises
    ------
    UnsupportedOptimizerError
        If the class defines its own multi-precision state layout that is not a built-in one.
    """
    mro = optimizer_class.__mro__
    creator = next(c for c in mro if "create_state_multi_precision" in c.__dict__)
    updater = next(c for c in mro if "update_multi_precision" in c.__dict__)
    if creator in _MASTER_SLOT_BY_CREATOR and updater in _CASTING_UPDATERS[creator]:
        return _MASTER_SLOT_BY_CREATOR[creator]
    raise UnsupportedOptimizerError(
        f"Optimizer {optimizer_class.__name__} defines its own multi-precision state layout "
        f"(create_state_multi_precision from {creator.__name__}, update_multi_precision from "
        f"{updater.__name__}): gluon-constraints cannot find its float32 master copy, and "
        f"projecting only the float16 weight would be undone at the next step. Use a built-in "
        f"optimizer, multi_precision=False, or float32 weights.")


class ConstrainedOptimizer(Optimizer):
    """Wrap an optimizer so every update is followed by the parameter's constraint.

    After ``inner.update_multi_precision(index, weight, grad, state)`` each updated weight whose
    parameter has a constraint is projected in place; with ``multi_precision=True`` and float16
    weights the float32 master copy in ``state`` is projected and then cast into the weight, so
    the next step starts from a feasible master. Every other attribute (learning rate,
    ``rescale_grad``, schedulers, update counts) reads and writes through to the wrapped
    optimizer, so Gluon's Trainer and kvstores use the wrapper like the original.

    The wrapper keeps its own ``param_dict`` (the trainer's parameters, also given to the
    wrapped optimizer for its learning-rate multipliers): if another trainer takes the wrapped
    optimizer, the next update raises instead of projecting that trainer's parameters. On a
    worker the constraint is read from ``param_dict[index].constraint`` at each update; a pickled
    copy (what distributed kvstores send to their servers) carries a snapshot of the
    projections, because ``param_dict`` is not pickled.

    Stateful constraints (``SpectralNorm``) keep a vector per parameter and device copy in
    :attr:`iterates`; it is pickled with the wrapper, so ``save_states``/``load_states`` carry it.

    An exception during an update is raised as an
    :class:`~gluon_constraints.EnforcementError` naming the parameters and also kept in
    :attr:`failure`: MXNet's kvstore calls the update from C++ and discards exceptions, so the
    trainer raises it again after the step.

    Parameters
    ----------
    inner : mxnet.optimizer.Optimizer
        The optimizer that performs the update.
    projections : dict or None, default None
        ``{index: Projection}`` to use where ``param_dict`` is empty (on servers).
    every : int, default 1
        Project after updates ``every``, ``2 * every``, ... of each parameter (by the
        optimizer's own update count, which ``save_states`` keeps), not after the others.
    monitor : bool, default False
        Also record, at each projection, the fraction of output units it changed and the
        largest and mean unit norm after it, in :attr:`stats` (device arrays, no host sync).
    """

    _OWN = ("inner", "projections", "param_dict", "failure", "iterates", "every", "monitor",
            "stats", "_cache", "_resolved", "_fused_plans", "_fused_calls", "_deferred",
            "_deferred_updates", "_deferred_size")

    def __init__(self, inner: Optimizer, projections: Optional[Dict[int, Projection]] = None,
                 every: int = 1, monitor: bool = False) -> None:
        if not isinstance(inner, Optimizer):
            raise TypeError(f"ConstrainedOptimizer wraps an mxnet.optimizer.Optimizer: got {inner!r}.")
        if isinstance(inner, ConstrainedOptimizer):
            raise TypeError("ConstrainedOptimizer is already wrapping this optimizer.")
        self._own(inner, projections or {}, {}, cadence(every), switch("monitor", monitor))

    def _own(self, inner: Optimizer, projections: Dict[int, Projection],
             iterates: Dict[Tuple[Any, str], Any], every: int, monitor: bool) -> None:
        """Set the wrapper's own attributes (everything else lives on ``inner``)."""
        for name, value in (("inner", inner), ("projections", dict(projections)),
                            ("param_dict", inner.param_dict), ("failure", None),
                            ("iterates", dict(iterates)), ("every", every), ("monitor", monitor),
                            ("stats", {}), ("_cache", {}), ("_resolved", {}),
                            ("_fused_plans", {}), ("_fused_calls", {}), ("_deferred", None),
                            ("_deferred_updates", None), ("_deferred_size", 0)):
            object.__setattr__(self, name, value)

    # -- delegation -----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in ConstrainedOptimizer._OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "param_dict":  # ours for projections, the inner's for lr/wd multipliers
            setattr(self.inner, name, value)
        if name in ConstrainedOptimizer._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    @property
    def aggregate_num(self) -> int:
        """How many parameters an ``Updater`` passes per update call.

        With the kernel loaded, one call takes every parameter of a step (up to 256, or the
        next multiple of the wrapped optimizer's own number): the
        wrapper updates and projects them in one fused kernel call for the updates the kernel
        computes (:func:`~gluon_constraints.kernels.projection.fused_rule`: SGD and NAG with
        momentum, Adam, RMSProp), else updates them in the wrapped optimizer's own call sizes
        and projects all of them in one kernel call. MXNet's per-call dispatch dominates for
        many small layers. Without the kernel, the wrapped optimizer's own number.
        """
        size = self.inner.aggregate_num
        if fused_kernel() is None:
            return size
        # A multiple of the wrapped optimizer's own call size, so that its calls (by which it
        # counts updates and asks for scheduled rates) split the wrapper's calls exactly.
        return size * -(-_FUSED_AGGREGATION // size) if size > 0 else _FUSED_AGGREGATION

    @property
    def learning_rate(self) -> float:
        """The wrapped optimizer's current learning rate."""
        return self.inner.learning_rate

    def set_learning_rate(self, lr: float) -> None:
        """Set the wrapped optimizer's learning rate."""
        self.inner.set_learning_rate(lr)

    def set_lr_mult(self, args_lr_mult: Dict[Any, float]) -> None:
        """Set per-parameter learning-rate multipliers on the wrapped optimizer."""
        self.inner.set_lr_mult(args_lr_mult)

    def set_wd_mult(self, args_wd_mult: Dict[Any, float]) -> None:
        """Set per-parameter weight-decay multipliers on the wrapped optimizer."""
        self.inner.set_wd_mult(args_wd_mult)

    def create_state(self, index: Any, weight: Any) -> Any:
        """The wrapped optimizer's state for ``weight``."""
        return self.inner.create_state(index, weight)

    def create_state_multi_precision(self, index: Any, weight: Any) -> Any:
        """The wrapped optimizer's state for ``weight``, with a float32 master copy if asked."""
        return self.inner.create_state_multi_precision(index, weight)

    # -- update + projection ----------------------------------------------------------------
    def update(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer, then project each updated weight."""
        self._guarded(self._update, index, weight, grad, state, False)

    def update_multi_precision(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer (master copy included), then project.

        For the updates the fused kernel computes (SGD and NAG with momentum, Adam, RMSProp) on
        float32 weights it does both in one pass. A call without constrained parameters is
        passed straight through, except during a local kvstore's pushes and with ``every > 1``,
        where it joins the step's one fused call.
        """
        self._guarded(self._update, index, weight, grad, state, True)

    def _guarded(self, run: Any, index: Any, *arguments: Any) -> None:
        """Run one update call; an exception becomes an EnforcementError naming the parameters,
        raised and also kept in :attr:`failure`."""
        try:
            run(index, *arguments)
        except EnforcementError as error:
            self.failure = error
            raise
        except Exception as error:
            raise self._failed(index if isinstance(index, (list, tuple)) else [index], error) from error

    def _failed(self, indices: Sequence[Any], error: Exception) -> EnforcementError:
        """The EnforcementError naming the parameters whose update failed, kept in :attr:`failure`."""
        names = [getattr(self.param_dict.get(i), "name", f"index {i}") for i in indices]
        self.failure = EnforcementError(
            f"Updating and projecting {', '.join(names)} failed: {type(error).__name__}: {error}")
        return self.failure

    def _update(self, index: Any, weight: Any, grad: Any, state: Any, multi_precision: bool) -> None:
        """One update call; while deferring, the queue runs once it holds 2^20 elements."""
        indices, weights, grads, states = _listed(index, weight, grad, state)
        self._update_or_queue(index, indices, weights, grads, states, multi_precision)
        if self._deferred is not None:
            self._deferred_size += sum(w.size for w in weights)
            if self._deferred_size >= _DEFERRED_SIZE:
                self._run_deferred()

    def _update_or_queue(self, index: Any, indices: Sequence[Any], weights: Sequence[Any],
                         grads: Sequence[Any], states: Sequence[Any], multi_precision: bool) -> None:
        if self.param_dict and self.inner.param_dict is not self.param_dict:
            raise EnforcementError(
                f"The optimizer {type(self.inner).__name__} was given to another trainer after "
                f"this one: both now share its parameter table and update counts, so neither "
                f"trainer's learning rates nor constraints are right. Give each trainer its own "
                f"optimizer (by name, or a separate instance).")
        projections = [self._due(i, self.projection_for(i)) for i in indices]
        inner_update = self.inner.update_multi_precision if multi_precision else self.inner.update
        # Deferred (kvstore pushes) or between every-th projections, calls with nothing to
        # project take the fused update too (one call, not MXNet's one per parameter).
        if multi_precision and (any(projections) or self._deferred_updates is not None
                                or self.every > 1):
            planned = self._fused_plans_for(indices, weights, grads, states, projections)
            if planned is not None:
                device, plans = planned
                if self._deferred_updates is not None:
                    # Counted and rated now, in push order, as the kvstore's own update would.
                    rates = fused_rates(self.inner, indices)
                    self._deferred_updates.append((indices, weights, grads, plans, projections, rates))
                else:
                    self._fused_update(indices, weights, projections,
                                       self._fused_call(device, indices, weights, grads, plans))
                return
        if not isinstance(index, (list, tuple)):
            inner_update(index, weights[0], grads[0], states[0])
            self._project_updated(indices, projections, weights, states, multi_precision)
            return
        # In the wrapped optimizer's own call sizes, then every projection of the call at once.
        step = self.inner.aggregate_num
        if step > 0:
            for at in range(0, len(indices), step):
                part = slice(at, at + step)
                inner_update(list(indices[part]), list(weights[part]), list(grads[part]),
                             list(states[part]))
        else:
            for arguments in zip(indices, weights, grads, states):
                inner_update(*arguments)
        self._project_updated(indices, projections, weights, states, multi_precision)

    def _fused_plans_for(self, indices: Sequence[Any], weights: Sequence[Any],
                         grads: Sequence[Any], states: Sequence[Any],
                         projections: Sequence[Optional[Projection]]
                         ) -> Optional[Tuple[int, List[FusedPlan]]]:
        """The call's device id and each parameter's plan in a fused kernel call, or None where
        the kernel cannot do them all. A plan is cached per device (each device's updater has its
        own states) while its projection, optimizer state and dtype stay the same."""
        rule = fused_rule(self.inner)
        if rule is None or fused_kernel() is None:
            return None
        device = weights[0].context.device_id
        plans = []
        for index, weight, grad, state, projection in zip(indices, weights, grads, states, projections):
            signature = (rule[0], self.monitor, id(projection), id(state), weight.dtype)
            cached = self._fused_plans.get((device, index))
            if cached is None or cached[0] != signature:
                # The projection and state are kept with the entry: their ids cannot be reused.
                cached = (signature, plan_fused_update(rule[0], weight, grad, state, projection,
                                                       self.monitor), projection, state)
                self._fused_plans[(device, index)] = cached
            if cached[1] is None:
                return None
            plans.append(cached[1])
        return device, plans

    def _fused_call(self, device: Any, indices: Sequence[Any], weights: Sequence[Any],
                    grads: Sequence[Any], plans: Sequence[FusedPlan]) -> FusedCall:
        """The fused kernel call for these arrays, cached per ``device`` while they are the same
        objects."""
        key = (device, tuple(indices))
        signature = tuple(tuple(map(id, column)) for column in (plans, weights, grads))
        cached = self._fused_calls.get(key)
        if cached is None or cached[0] != signature:
            cached = (signature, assemble_fused_update(fused_rule(self.inner)[0], weights, grads, plans),
                      tuple(plans), tuple(weights), tuple(grads))
            self._fused_calls[key] = cached
        return cached[1]

    def _fused_update(self, indices: Sequence[Any], weights: Sequence[Any],
                      projections: Sequence[Optional[Projection]], call: FusedCall,
                      rates: Optional[Sequence[float]] = None) -> None:
        """Update and project in one fused kernel call (``rates`` counted already, or now)."""
        stats = [self._stats_for(i if p is not None else ("unreported", i), w)
                 for i, p, w in zip(indices, projections, weights)] if self.monitor else []
        if rates is None:
            rates = fused_rates(self.inner, indices)
        fused_update(self.inner, call, rates, stats)

    def _project_updated(self, indices: Sequence[Any], projections: Sequence[Optional[Projection]],
                         weights: Sequence[Any], states: Sequence[Any], multi_precision: bool) -> None:
        """Project every weight this update call wrote, in one batch where possible.

        A stateful constraint (``SpectralNorm``) continues from the vector it left in
        :attr:`iterates` for this parameter and device copy, and leaves the new one there.
        """
        items, stats, casts = [], [], []
        for index, projection, w, s in zip(indices, projections, weights, states):
            if projection is None:
                continue
            constraint, reduction, shape = projection
            target = w
            if multi_precision and self.inner.multi_precision and w.dtype == np.float16:
                target = s[master_copy_slot(type(self.inner))]
                casts.append((target, w))
            full = _full_shape(target, shape)
            if getattr(constraint, "stateful", False):
                project = functools.partial(self._project_with_state, index, constraint, reduction, full)
                if self.monitor:
                    measured(full, reduction, 2, project, self._stats_for(index, full))
                else:
                    project()
            else:
                items.append((full, constraint, reduction))
                stats.append(self._stats_for(index, full))
        if self._deferred is not None:
            self._deferred.append((items, stats, casts, indices))
        else:
            self._project(items, stats, casts)

    def _project(self, items: Sequence[Any], stats: Sequence[Any], casts: Sequence[Any]) -> None:
        """Project ``items`` (in one kernel call where possible), then cast master copies."""
        project_in_place(items, stats=stats if self.monitor else None)
        for master, w in casts:
            ndarray.cast(master, dtype=w.dtype, out=w)

    def defer_projections(self) -> None:
        """Queue the coming updates' projections, and the fused updates themselves, until
        :meth:`flush_projections`.

        The trainer calls this before a local kvstore's pushes (each push runs one parameter's
        update) and flushes before the weights are pulled back: one kernel call per 2^20
        elements pushed (and one at the flush) instead of one per parameter. Stateful
        constraints are not deferred.
        """
        self._deferred, self._deferred_updates, self._deferred_size = [], [], 0

    def flush_projections(self) -> None:
        """Run the queued updates and projections of every update since :meth:`defer_projections`,
        and stop deferring."""
        try:
            self._run_deferred()
        finally:
            self._deferred = self._deferred_updates = None

    def _run_deferred(self) -> None:
        """Run the queued updates and projections, and keep deferring.

        The queued fused updates run in one kernel call (with the rates counted when each was
        queued), then the other updates' projections in one.
        """
        deferred, self._deferred = self._deferred, []
        updates, self._deferred_updates = self._deferred_updates, []
        self._deferred_size = 0
        indices: List[Any] = []
        try:
            if updates:
                queued, weights, grads, plans, projections, rates = (
                    [item for entry in updates for item in entry[k]] for k in range(6))
                indices += queued
                # The kvstore hands the updater new array objects at every push, so there is no
                # call to keep; its own copies are plain, never blocked by a forward pass.
                call = assemble_fused_update(fused_rule(self.inner)[0], weights, grads, plans, plain=True)
                self._fused_update(queued, weights, projections, call, rates)
            if deferred:
                items, stats, casts, projected = (sum((list(part[k]) for part in deferred), [])
                                                  for k in range(4))
                indices += projected
                self._project(items, stats, casts)
        except Exception as error:
            raise self._failed(indices, error) from error

    def rates_depend_on_order(self, indices: Sequence[Any]) -> bool:
        """Whether updating ``indices`` one per call could give them other learning rates in
        another order.

        With a learning-rate schedule, each call's rate is the schedule at ``num_update``, the
        largest update count so far, which a call raises when it counts a parameter that is
        ahead. No order matters when no parameter is ahead: every count is the same, or none
        would exceed ``num_update`` (MXNet counts per device; the counts of every device are
        compared, an index counted nowhere yet as ``begin_num_update``).
        """
        inner = self.inner
        if inner.lr_scheduler is None:
            return False
        tables = compat.update_counts_by_device(inner)
        counts = {table[i] for table in tables for i in indices if i in table}
        if any(all(i not in table for table in tables) for i in indices):
            counts.add(inner.begin_num_update)
        return len(counts) > 1 and max(counts) + 1 > inner.num_update

    def _project_with_state(self, index: Any, constraint: Constraint, reduction: Reduction,
                            full: Any) -> None:
        """Project ``full`` in place, continuing from the state kept for this copy."""
        key = (index, str(full.context))
        last = self.iterates.get(key)
        out, self.iterates[key] = constraint.project_with_state(
            full, reduction, None if last is None else last.as_in_context(full.context))
        out.copyto(full)

    def _stats_for(self, index: Any, array: Any) -> Any:
        """The statistics buffer of parameter ``index`` on ``array``'s context (the fused update
        kernel also writes statistics of unconstrained weights, under ``("unreported", i)``)."""
        key = (index, str(array.context))
        if key not in self.stats:
            self.stats[key] = ndarray.zeros((3,), ctx=array.context, dtype=np.float32)
        return self.stats[key]

    def _due(self, index: Any, projection: Optional[Projection]) -> Optional[Projection]:
        """What the coming update of ``index`` projects: None between every-th updates, a
        ``Scheduled`` constraint resolved at the update's count (the same objects while the
        resolved constraint does not change)."""
        if projection is None or (self.every == 1 and not isinstance(projection.constraint, Scheduled)):
            return projection
        update = compat.update_count(self.inner, index) + 1
        if update % self.every:
            return None
        if not isinstance(projection.constraint, Scheduled):
            return projection
        resolved = projection.constraint.at(update)
        cached = self._resolved.get(index)
        if cached is None or cached[0] is not resolved or cached[1] is not projection:
            cached = (resolved, projection, projection._replace(constraint=resolved))
            self._resolved[index] = cached
        return cached[2]

    def projection_for(self, index: Any) -> Optional[Projection]:
        """The projection of parameter ``index``: live from ``param_dict``, else the snapshot.

        The cached projection is reused while the parameter keeps the same constraint object,
        the same owning layer (or recorded layout) and the same shape (constraints are immutable, so their values
        cannot change behind the cache).

        Parameters
        ----------
        index : int
            The Trainer's index of the parameter (its kvstore key).
        """
        param = self.param_dict.get(index)
        if param is None:
            return self.projections.get(index)
        from ..gluon.attachment import constraint_of, layout_of, owner_of, reduction_of  # workers only

        constraint = constraint_of(param)
        if constraint is None:
            return None
        owner, layout = owner_of(param), layout_of(param)
        shape = compat.data_shape(param)
        cached = self._cache.get(index)
        if cached is not None and cached[0] is constraint and cached[1] is owner \
                and cached[2] is layout and cached[3].shape == shape:
            return cached[3]
        projection = Projection(constraint, reduction_of(param, shape), shape)
        self._cache[index] = (constraint, owner, layout, projection)
        return projection

    def snapshot(self) -> Dict[int, Projection]:
        """``{index: Projection}`` for every constrained parameter in ``param_dict``."""
        table = dict(self.projections)
        for index in self.param_dict:
            projection = self.projection_for(index)
            if projection is not None:
                table[index] = projection
        return table

    def take_failure(self) -> Optional[EnforcementError]:
        """The last update's failure, cleared (None if none)."""
        failure, self.failure = self.failure, None
        return failure

    # -- pickling (kvstore servers, save_states) ----------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        return {"inner": self.inner, "projections": self.snapshot(), "iterates": self.iterates,
                "every": self.every}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Files written by 0.1.0 have neither "iterates" nor "every". Monitoring is off in a copy
        # (on servers nobody reads it); a trainer that loads states sets its own.
        self._own(state["inner"], state["projections"], state.get("iterates", {}),
                  state.get("every", 1), False)

    def __repr__(self) -> str:
        return f"ConstrainedOptimizer({type(self.inner).__name__})"


def cadence(every: Any) -> int:
    """Validate a projection cadence: an int >= 1.

    Raises
    ------
    ConstraintArgumentError
        Naming ``every``, the value and what is expected.
    """
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ConstraintArgumentError(
            f"every must be an int >= 1 (project after every every-th update): got {every!r}.")
    return int(every)


def switch(argument: str, value: Any) -> bool:
    """Validate an on/off option (``monitor``): a bool.

    Raises
    ------
    ConstraintArgumentError
        Naming ``argument`` and the value: strings such as ``"false"`` are not taken for
        booleans.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ConstraintArgumentError(
            f"{argument} must be True or False: got {value!r} of type {type(value).__name__}.")
    return bool(value)


def _listed(index: Any, weight: Any, grad: Any, state: Any) -> Tuple[Sequence[Any], ...]:
    """One update call's arguments as sequences (Updater passes lists when it aggregates)."""
    if isinstance(index, (list, tuple)):
        return index, weight, grad, state
    return (index,), (weight,), (grad,), (state,)


def _full_shape(array: Any, shape: Sequence[int]) -> Any:
    """``array`` viewed with the parameter's shape (servers hold weights flattened to 1-D)."""
    if tuple(array.shape) == tuple(shape):
        return array
    if array.size != math.prod(shape):
        # A server holding a piece of a big array; the trainer refuses this before training.
        raise EnforcementError(f"gluon-constraints got a piece of {array.size} elements of a "
                               f"weight of shape {tuple(shape)}: it cannot be projected.")
    return array.reshape(shape)
