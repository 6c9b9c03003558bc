"""``ConstrainedOptimizer``: the wrapped optimizer's update, then the projection of what it wrote.

The projection has to run where the update runs, on the copy that is authoritative: a device
copy (one context, or ``update_on_kvstore=False``), the kvstore's stored copy
(``update_on_kvstore=True``, the multi-device default, from which every device copy is pulled),
a parameter server's copy (distributed kvstores), or the float32 master copy that
``multi_precision=True`` keeps in the optimizer state and casts to the float16 weight every step.
The one piece of code that runs on exactly that array in every configuration is the optimizer's
update, so this wrapper is a composition: the wrapped optimizer's update, then a
:class:`~.projector.Projector`, or both in one fused kernel call (:mod:`.fused_update`) for
the updates the kernel computes (:mod:`.update_rules`).

Servers unpickle this class while ``import mxnet`` is still running: the module imports only
``mxnet.ndarray``, ``mxnet.optimizer``, the catalogue and the kernels, never ``mxnet.gluon``.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet.optimizer import LAMB, LARS, NAG, SGD, Optimizer

from .. import _mxnet_compat as compat
from ..errors import ConstraintArgumentError, ConstraintTypeError, EnforcementError, UnsupportedOptimizerError
from ..kernels.boundary import MODES
from ..kernels.library import kernel as fused_kernel
from .fused_update import UpdateEntry, run_fused_update
from .projector import Projection, Projector
from .touched_rows import update_row_sparse
from .update_rules import FusedRule, rule_of, step_rates

__all__ = ["ConstrainedOptimizer", "Projection", "master_copy_slot", "projection_interval", "switch"]

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


class _QueuedUpdate(NamedTuple):
    """A fused update queued during a local kvstore's pushes, rated when it was pushed."""

    indices: Sequence[Any]
    weights: Sequence[Any]
    grads: Sequence[Any]
    entries: List[UpdateEntry]
    rates: List[Any]


class ConstrainedOptimizer(Optimizer):
    """Wrap an optimizer so every update is followed by the parameter's constraint.

    After ``inner.update_multi_precision(index, weight, grad, state)`` each updated weight whose
    parameter has a constraint is projected in place; with ``multi_precision=True`` and float16
    weights the float32 master copy in ``state`` is projected and then cast into the weight, so
    the next step starts from a feasible master. Every other attribute (learning rate,
    ``rescale_grad``, schedulers, update counts) reads and writes through to the wrapped
    optimizer, so Gluon's Trainer and kvstores use the wrapper like the original.

    It projects what the enforcing trainer (:class:`~gluon_constraints.ConstrainedTrainer`,
    :func:`~gluon_constraints.enforce`) tells it: the trainer gives it each parameter's
    projection before the first step and again whenever a constraint is attached or replaced
    (:meth:`set_projection`). A pickled copy (what distributed kvstores send to their servers,
    and what ``save_states`` writes) carries those projections.

    The wrapper keeps its own ``param_dict`` (the trainer's parameters, also given to the
    wrapped optimizer for its learning-rate multipliers): if another trainer takes the wrapped
    optimizer, the next update raises instead of projecting that trainer's parameters.

    Stateful constraints (``SpectralNorm``) keep a vector per parameter and device copy
    (:attr:`iterates`); it is pickled with the wrapper, so ``save_states``/``load_states``
    carry it.

    An exception during an update is raised as an
    :class:`~gluon_constraints.EnforcementError` naming the parameters and also kept in
    :attr:`failure`: MXNet's kvstore calls the update from C++ and discards exceptions, so the
    trainer raises it again after the step.

    Parameters
    ----------
    inner : mxnet.optimizer.Optimizer
        The optimizer that performs the update.
    projections : dict or None, default None
        ``{index: Projection}`` of the constrained parameters.
    every : int, default 1
        Project after updates ``every``, ``2 * every``, ... of each parameter (by the
        optimizer's own update count, which ``save_states`` keeps), not after the others.
    monitor : bool, default False
        Also record, at each projection, the fraction of output units it changed and the
        largest and mean unit norm after it, in :attr:`stats` (device arrays, no host sync).
    """

    _OWN = ("inner", "projector", "param_dict", "failure", "installed", "_queued", "_queued_size")
    failure: Optional[EnforcementError]
    _queued: Optional[List["_QueuedUpdate"]]  # None: updates are not deferred
    _queued_size: int

    def __init__(self, inner: Optimizer, projections: Optional[Dict[int, Projection]] = None,
                 every: int = 1, monitor: bool = False) -> None:
        if not isinstance(inner, Optimizer):
            raise ConstraintTypeError(
                f"ConstrainedOptimizer wraps an mxnet.optimizer.Optimizer: got {inner!r}. Give "
                f"the optimizer by name or instance to gc.ConstrainedTrainer instead.")
        if isinstance(inner, ConstrainedOptimizer):
            raise ConstraintTypeError(
                f"ConstrainedOptimizer is already wrapping {inner!r}: use it as it is.")
        self._set_own_state(inner, Projector(dict(projections or {}), projection_interval(every),
                                             switch("monitor", monitor), fused_kernel()))

    def _set_own_state(self, inner: Optimizer, projector: Projector) -> None:
        """Set the wrapper's own attributes (everything else lives on ``inner``)."""
        for name, value in (("inner", inner), ("projector", projector), ("param_dict", inner.param_dict),
                            ("failure", None), ("installed", False), ("_queued", None),
                            ("_queued_size", 0)):
            object.__setattr__(self, name, value)

    # -- delegation -----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in ConstrainedOptimizer._OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "param_dict":  # ours for the shared-optimizer check, the inner's for lr/wd multipliers
            setattr(self.inner, name, value)
        if name in ConstrainedOptimizer._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    @property
    def aggregate_num(self) -> int:
        """How many parameters an ``Updater`` passes per update call.

        With the kernel loaded, one call takes every parameter of a step (up to 256, or the
        next multiple of the wrapped optimizer's own number): the wrapper updates and projects
        them in one fused kernel call for the updates the kernel computes
        (:func:`~.update_rules.rule_of`: SGD and NAG with momentum, Adam, RMSProp), else updates
        them in the wrapped optimizer's own call sizes and projects all of them in one kernel
        call. MXNet's per-call dispatch dominates for many small layers. Without the kernel, the
        wrapped optimizer's own number.
        """
        size = self.inner.aggregate_num
        if self.projector.kernel is None:
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

    # -- what the trainer tells it ----------------------------------------------------------
    def set_projection(self, index: Any, projection: Optional[Projection]) -> None:
        """Project parameter ``index`` with ``projection`` from its next update (None: not)."""
        self.projector.set_projection(index, projection)

    @property
    def projections(self) -> Dict[Any, Projection]:
        """``{index: Projection}`` of every parameter it projects."""
        return {i: r.projection for i, r in self.projector.records.items() if r.projection is not None}

    @property
    def every(self) -> int:
        """The projection interval (``every=``)."""
        return self.projector.every

    @every.setter
    def every(self, value: int) -> None:
        self.projector.every = projection_interval(value)

    @property
    def monitor(self) -> bool:
        """Whether projection statistics are recorded."""
        return self.projector.monitor

    @monitor.setter
    def monitor(self, value: bool) -> None:
        self.projector.monitor = switch("monitor", value)

    @property
    def iterates(self) -> Dict[Tuple[Any, str], Any]:
        """Stateful constraints' state, ``{(index, context): state}``."""
        return {(i, c): v for i, r in self.projector.records.items() for c, v in r.iterates.items()}

    @property
    def stats(self) -> Dict[Tuple[Any, str], Any]:
        """Monitoring buffers, ``{(index, context): float32 array of 3}``."""
        return {(i, c): v for i, r in self.projector.records.items() for c, v in r.stats.items()}

    # -- update + projection ----------------------------------------------------------------
    def update(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer, then project each updated weight."""
        self._guarded(index, weight, grad, state, False)

    def update_multi_precision(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer (master copy included), then project.

        For the updates the fused kernel computes (SGD and NAG with momentum, Adam, RMSProp) on
        float32 weights it does both in one pass. A call without constrained parameters is
        passed straight through, except during a local kvstore's pushes and with ``every > 1``,
        where it joins the step's one fused call.
        """
        self._guarded(index, weight, grad, state, True)

    def _guarded(self, index: Any, weight: Any, grad: Any, state: Any, multi_precision: bool) -> None:
        """Run one update call; an exception becomes an EnforcementError naming the parameters,
        raised and also kept in :attr:`failure`."""
        try:
            self._update(index, weight, grad, state, multi_precision)
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
        """One update call: fused where the kernel computes it (queued during a local kvstore's
        pushes, which run once 2^20 elements are queued), else the wrapped optimizer's update and
        the projector."""
        self._refuse_unowned()
        indices, weights, grads, states = _listed(index, weight, grad, state)
        projector = self.projector
        projections = [projector.due(self.inner, i) for i in indices]
        if any(g.stype == "row_sparse" for g in grads):
            dense = self._update_row_sparse(indices, weights, grads, states, projections, multi_precision)
            if not dense:
                return
            indices, weights, grads, states, projections = (list(column) for column in zip(*dense))
            index = indices if isinstance(index, (list, tuple)) else indices[0]
        # Deferred (kvstore pushes) or between every-th projections, calls with nothing to
        # project take the fused update too (one call, not MXNet's one per parameter).
        rule = rule_of(self.inner) if multi_precision and (
            any(projections) or self._queued is not None or projector.every > 1) else None
        entries = self._update_entries(rule, indices, weights, grads, states, projections) if rule else None
        if entries is not None and rule is not None:
            rates = step_rates(self.inner, rule, indices)  # counted now, as the inner's own update would
            if self._queued is not None:
                self._queued.append(_QueuedUpdate(indices, weights, grads, entries, rates))
                self._queued_size += sum(w.size for w in weights)
            else:
                self._run_fused(rule, indices, weights, grads, entries, rates, plain=False)
        else:
            self._inner_update(index, indices, weights, grads, states, multi_precision)
            master = master_copy_slot(type(self.inner)) if multi_precision and self.inner.multi_precision else None
            projector.project(list(zip(indices, projections, weights, states)), master)
            self._queued_size += sum(w.size for w in weights) if projector.deferring else 0
        if self._queued is not None and self._queued_size >= _DEFERRED_SIZE:
            self._run_queued()

    def _update_row_sparse(self, indices: Sequence[Any], weights: Sequence[Any], grads: Sequence[Any],
                           states: Sequence[Any], projections: Sequence[Optional[Projection]],
                           multi_precision: bool) -> List[Tuple[Any, ...]]:
        """Update (and project) the parameters of a call whose gradients are row-sparse, one by
        one (:mod:`.touched_rows`); return the others' arguments."""
        master = master_copy_slot(type(self.inner)) if multi_precision and self.inner.multi_precision else None
        inner_update = self.inner.update_multi_precision if multi_precision else self.inner.update
        dense = []
        for arguments in zip(indices, weights, grads, states, projections):
            i, w, g, s, projection = arguments
            if g.stype != "row_sparse":
                dense.append(arguments)
                continue
            def inner_update_of_this(i: Any = i, w: Any = w, g: Any = g, s: Any = s) -> None:
                inner_update(i, w, g, s)

            update_row_sparse(self.inner, self.projector, i, w, g, s, projection, master, inner_update_of_this)
        return dense

    def _refuse_unowned(self) -> None:
        """Refuse to update for a trainer that did not install it, or after another trainer
        took the wrapped optimizer (on servers, which have no parameters, neither can happen)."""
        if self.param_dict and not self.installed:
            raise EnforcementError(
                "This ConstrainedOptimizer was given to a trainer that does not enforce "
                "constraints, so it would project nothing: build a gc.ConstrainedTrainer with the "
                "wrapped optimizer, or call gc.enforce(trainer) on a trainer built with it.")
        if self.param_dict and self.inner.param_dict is not self.param_dict:
            raise EnforcementError(
                f"The optimizer {type(self.inner).__name__} was given to another trainer after "
                f"this one: both now share its parameter table and update counts, so neither "
                f"trainer's learning rates nor constraints are right. Give each trainer its own "
                f"optimizer (by name, or a separate instance).")

    def _update_entries(self, rule: FusedRule, indices: Sequence[Any], weights: Sequence[Any],
                        grads: Sequence[Any], states: Sequence[Any],
                        projections: Sequence[Optional[Projection]]) -> Optional[List[UpdateEntry]]:
        """Each weight's entry in a fused update call, or None where the kernel cannot take
        them all (then the wrapped optimizer updates)."""
        if self.projector.kernel is None:
            return None
        entries = []
        for arguments in zip(indices, weights, grads, states, projections):
            entry = self.projector.update_entry(rule, *arguments)
            if entry is None:
                return None
            entries.append(entry)
        return entries

    def _run_fused(self, rule: FusedRule, indices: Sequence[Any], weights: Sequence[Any],
                   grads: Sequence[Any], entries: Sequence[UpdateEntry], rates: Sequence[Any],
                   plain: bool) -> None:
        """Update and project in one fused kernel call. ``plain``: the weights are a local
        kvstore's own copies, which only copies and updates write (MXNet's copy into a plain
        array reorders a blocked source), so no filter bank needs its conversion first."""
        projector = self.projector
        filters = [] if plain else [projector.first_filter(i, w)
                                    for i, w, e in zip(indices, weights, entries) if e.bank]
        # A weight not projected this step (unconstrained, or between every-th projections)
        # writes its statistics apart, so constraint_stats keeps the last projection's.
        stats = [projector.stats_for(i, w, reported=e.group.mode != MODES["none"])
                 for i, w, e in zip(indices, weights, entries)] if projector.monitor else []
        run_fused_update(projector.kernel, rule.settings(self.inner), rates, weights, grads, entries, filters, stats)

    def _inner_update(self, index: Any, indices: Sequence[Any], weights: Sequence[Any],
                      grads: Sequence[Any], states: Sequence[Any], multi_precision: bool) -> None:
        """The wrapped optimizer's update, in its own call sizes."""
        inner_update = self.inner.update_multi_precision if multi_precision else self.inner.update
        if not isinstance(index, (list, tuple)):
            inner_update(index, weights[0], grads[0], states[0])
            return
        step = self.inner.aggregate_num
        if step > 0:
            for at in range(0, len(indices), step):
                part = slice(at, at + step)
                inner_update(list(indices[part]), list(weights[part]), list(grads[part]), list(states[part]))
        else:
            for arguments in zip(indices, weights, grads, states):
                inner_update(*arguments)

    def defer_projections(self) -> None:
        """Queue the coming updates' projections, and the fused updates themselves, until
        :meth:`flush_projections`.

        The trainer calls this before a local kvstore's pushes (each push runs one parameter's
        update) and flushes before the weights are pulled back: one kernel call per 2^20
        elements pushed (and one at the flush) instead of one per parameter. Stateful
        constraints are not deferred.
        """
        self._queued, self._queued_size = [], 0
        self.projector.defer()

    def flush_projections(self) -> None:
        """Run the queued updates and projections of every update since :meth:`defer_projections`,
        and stop deferring."""
        try:
            self._run_queued()
        finally:
            self._queued = None
            self.projector.stop_deferring()

    def _run_queued(self) -> None:
        """Run the queued fused updates in one kernel call, then the other updates' projections in
        one, and keep deferring. The kvstore hands the updater new array objects at every push,
        so nothing about them is kept."""
        queued, self._queued, self._queued_size = self._queued or [], [], 0
        indices = [i for update in queued for i in update.indices] + self.projector.deferred_indices
        try:
            if queued:
                rule = rule_of(self.inner)
                if rule is None:  # queued under a rule the optimizer's settings no longer give
                    raise EnforcementError(f"{type(self.inner).__name__}'s settings changed while its updates "
                                           f"were deferred: they no longer give a fused update rule.")
                queued_indices, weights, grads, entries, rates = (
                    [item for update in queued for item in getattr(update, field)]
                    for field in ("indices", "weights", "grads", "entries", "rates"))
                self._run_fused(rule, queued_indices, weights, grads, entries, rates, plain=True)
            self.projector.run_deferred()
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

    def take_failure(self) -> Optional[EnforcementError]:
        """The last update's failure, cleared (None if none)."""
        failure, self.failure = self.failure, None
        return failure

    # -- pickling (kvstore servers, save_states) ----------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        return {"inner": self.inner, "projections": self.projections, "iterates": self.iterates,
                "every": self.every}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Files written by 0.1.0 have neither "iterates" nor "every". Monitoring is off in a copy
        # (on servers nobody reads it); a trainer that loads states sets its own.
        projector = Projector(dict(state["projections"]), state.get("every", 1), False, fused_kernel())
        for (index, context), value in state.get("iterates", {}).items():
            projector.record(index).iterates[context] = value
        self._set_own_state(state["inner"], projector)

    def __repr__(self) -> str:
        return f"ConstrainedOptimizer({type(self.inner).__name__})"


def projection_interval(every: Any) -> int:
    """Validate ``every=``, the projection interval: an int >= 1.

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
