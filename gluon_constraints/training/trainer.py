"""Enforcing constraints during training: ``ConstrainedTrainer`` and ``enforce``.

Both make the trainer's optimizer a :class:`~gluon_constraints.training.optimizer.ConstrainedOptimizer`
before the first step, so the projection runs inside the update, on whichever copy the update
writes (device copy, kvstore copy, server copy or float32 master). A post-``step()`` hook on the
device copies would be undone at the next step whenever the kvstore or a master copy is
authoritative.

What an enforcing trainer adds to ``gluon.Trainer`` is one mixin, :class:`EnforcedTraining`,
and one record of its own state, :class:`TrainerState`, under the attribute
``_gluon_constraints``. ``ConstrainedTrainer`` is ``gluon.Trainer`` with the mixin;
:func:`enforce` gives an existing trainer of any class (``horovod.mxnet.DistributedTrainer``
included) the same mixin by making the instance's class a subclass of its own class with the
mixin (cached per class): the one extension point on a trainer, so the instance keeps its type
for ``isinstance`` and no method is replaced on the instance.
"""

from __future__ import annotations

import os
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
from mxnet.gluon import Trainer
from mxnet.gluon.parameter import Parameter
from mxnet.optimizer import SGLD, Nadam, Optimizer

from .. import _mxnet_compat as compat
from ..distributed.parameter_server import prepare_distributed, settle_initial_weights
from ..errors import ConstraintTypeError, DivergingCopiesWarning, EnforcementError, UnenforcedConstraintWarning
from ..gluon.attachment import (attached_parameters, check_parameter, constraint_of, layout_of, owner_of,
                                reduction_of)
from ..kernels.projection import project_in_place
from .apply import check_storage
from .clipping_watch import ClippingWatch, clipping_watch
from .optimizer import ConstrainedOptimizer, Projection, master_copy_slot, projection_interval, switch
from .monitoring import collect_stats
from .verify import verify_constraints

__all__ = ["ConstrainedTrainer", "EnforcedTraining", "TrainerState", "enforce", "STATE"]

#: The one attribute this package sets on a trainer (besides making its class enforcing).
STATE = "_gluon_constraints"

# Optimizers whose update mutates optimizer-wide state or draws random numbers, so device copies
# updated one by one (update_on_kvstore=False) drift apart: MXNet's behaviour, measured on 1.9.1.
_PER_DEVICE_DIVERGING = (Nadam, SGLD)
# The trainer each enforced optimizer belongs to (one optimizer, one trainer).
_OPTIMIZER_USERS: "weakref.WeakKeyDictionary[Optimizer, weakref.ref]" = weakref.WeakKeyDictionary()


@dataclass
class TrainerState:
    """Everything an enforcing trainer keeps, under its ``_gluon_constraints`` attribute.

    Attributes
    ----------
    every, monitor
        The trainer's ``every=`` and ``monitor=`` (given again to an optimizer that
        ``load_states`` brings back).
    given_order : dict
        Parameter name to its position in the parameters the trainer was given (a
        :class:`ConstrainedTrainer`'s ``collect_params()`` order): the push order's reverse.
    checked : dict
        Per index, the ``(constraint, owner, layout, shape)`` last checked and given to the
        optimizer; a parameter whose objects differ is checked and given again.
    updates : int
        Updates this trainer made (the parameter servers count theirs).
    dense_gradients : bool or None
        Whether every trained parameter has dense gradients (decided at the first push).
    warned_rates : bool
        Whether the warning about devices' scheduled rates was given.
    watch : ClippingWatch or None
        The watch for constraints that fight the learning rate (``monitor=True`` and
        ``clip_warning`` not None).
    averages : list
        The ``gc.WeightAverage`` objects to update after each step.
    """

    every: int
    monitor: bool
    given_order: Dict[str, int] = field(default_factory=dict)
    checked: Dict[int, Tuple[Any, Any, Any, Any]] = field(default_factory=dict)
    updates: int = 0
    dense_gradients: Optional[bool] = None
    warned_rates: bool = False
    watch: Optional[ClippingWatch] = None
    averages: List[Any] = field(default_factory=list)


class EnforcedTraining(compat.TrainerHooks):
    """Mixin for a ``gluon.Trainer`` (subclass): enforce every constraint at every update.

    Before the kvstore is created (first step, or ``load_states``) every constrained parameter
    is checked with its now-known shape and distributed settings are prepared; before each
    ``step()`` / ``update()`` constraints changed since the last step are checked, so a failing
    check leaves every weight as it was; after it, an exception that MXNet's kvstore discarded
    during the update is raised as :class:`~gluon_constraints.EnforcementError`.
    """

    _gluon_constraints: TrainerState
    optimizer: Any  # gluon.Trainer's (the wrapping ConstrainedOptimizer once the kvstore is made)

    def step(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """As ``gluon.Trainer.step``; every constrained parameter is projected after its update.

        Raises
        ------
        ConstraintShapeError, ConstraintTypeError
            If a constraint set or changed since the last step does not fit its parameter
            (checked before anything is updated).
        EnforcementError
            If an update or projection failed inside the kvstore (naming the parameters).

        Notes
        -----
        With ``ignore_stale_grad=True``, Gluon skips the device copies whose gradient is stale
        (where the devices update; a kvstore that updates takes every gradient). Each skipped
        copy of a constrained parameter is projected as it is, so every constrained parameter is
        feasible after the step, skipped or not.
        """
        self._stepping(super().step, batch_size, ignore_stale_grad)  # type: ignore[misc]

    def update(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """As ``gluon.Trainer.update``; every constrained parameter is projected after its update
        (skipped copies as in :meth:`step`)."""
        self._stepping(super().update, batch_size, ignore_stale_grad)  # type: ignore[misc]

    def verify_constraints(self) -> None:
        """Check every copy this trainer owns; see :func:`gluon_constraints.verify_constraints`."""
        verify_constraints(self)

    def constraint_stats(self) -> Dict[str, Dict[str, Any]]:
        """Statistics of the last projection of every constrained parameter (``monitor=True``).

        Returns
        -------
        dict
            ``{parameter name: {"moved": ..., "max_norm": ..., "mean_norm": ...}}``, each a
            1-element float32 NDArray on the parameter's first context, copied when this is
            called (no host synchronisation: read them with ``asscalar()`` when you want):
            ``moved`` is the fraction of output units the last projection changed,
            ``max_norm`` and ``mean_norm`` the largest and mean unit norm after it (the norm
            the constraint bounds, by its ``ord``; L2 for other families). Parameters not
            projected yet are left out.

        Raises
        ------
        EnforcementError
            If the trainer was built without ``monitor=True``, or parameter servers run the
            projections (their statistics stay on the servers).
        """
        return collect_stats(self)

    # -- hooks ----------------------------------------------------------------------------------
    def before_kvstore(self) -> None:
        """Check every constrained parameter (shapes are known now), give the optimizer the
        projections (before a distributed kvstore sends it to the servers) and prepare
        distribution."""
        check_parameters(compat.trainer_parameters(self), self.optimizer, owner=self)
        self._give_changed_projections()
        prepare_distributed(self)
        _warn_unenforced(self)

    def after_kvstore(self) -> None:
        """Settle the initial weights of a distributed job."""
        settle_initial_weights(self)

    def ordered_for_pushes(self, updated: List[Tuple[int, Any]]) -> List[Tuple[int, Any]]:
        """Last layer first: the order in which the backward pass computes the gradients, so the
        updates queued first (one kernel call per 2^20 elements) can run while it goes on.

        A :class:`ConstrainedTrainer` knows the order its parameters were given in (a network's
        ``collect_params()``: registration order, which is the order of the forward pass in
        most networks); a trainer given enforcement by :func:`enforce` pushes by reversed index
        (Gluon sorts its parameters by name). Where the order could change a scheduled learning
        rate (some parameters are ahead in their update counts, after layers were frozen for a
        while), Gluon's own order.
        """
        if self.optimizer.rates_depend_on_order([index for index, _ in updated]):
            return updated
        given = self._gluon_constraints.given_order
        return sorted(updated, key=lambda pair: -given.get(pair[1].name, pair[0]))

    def pushes_all_then_pulls(self) -> bool:
        """Whether a local kvstore that updates may take every push before any pull: every
        trained parameter has dense gradients (decided once: it cannot change)."""
        state = self._gluon_constraints
        if state.dense_gradients is None:
            state.dense_gradients = all(p.list_grad()[0].stype == "default"
                                        for p in compat.trainer_parameters(self) if p.grad_req != "null")
        return state.dense_gradients

    def before_pushes(self) -> None:
        """Let the kvstore's updates queue their projections (a local kvstore updates one
        parameter per call: one kernel call per parameter would cost more than the update)."""
        self.optimizer.defer_projections()

    def between_pushes_and_pulls(self) -> None:
        """Project everything the kvstore updated, in one batch, before the weights are pulled."""
        self.optimizer.flush_projections()

    def after_load_states(self) -> None:
        """After ``load_states``: wrap a plain trainer's loaded optimizer again, give the loaded
        optimizer this trainer's settings and every parameter's projection."""
        if not isinstance(self.optimizer, ConstrainedOptimizer):
            compat.replace_loaded_optimizer(self, ConstrainedOptimizer(self.optimizer))
        state = self._gluon_constraints
        optimizer = self.optimizer
        optimizer.every, optimizer.monitor = state.every, state.monitor  # this trainer's, not the file's
        optimizer.installed = True
        _OPTIMIZER_USERS[optimizer.inner] = weakref.ref(self)
        state.checked.clear()
        self._give_changed_projections()

    # -- internals ------------------------------------------------------------------------------
    def _give_changed_projections(self) -> None:
        """Check the constraints attached or replaced since the last step, and give the
        optimizer their projections (cheap when none changed: an identity check per parameter)."""
        checked, optimizer = self._gluon_constraints.checked, self.optimizer
        for index, param in enumerate(compat.trainer_parameters(self)):
            shape = compat.data_shape(param)
            now = (getattr(param, "constraint", None), owner_of(param), layout_of(param), shape)
            kept = checked.get(index)
            if kept is not None and all(a is b for a, b in zip(kept[:3], now[:3])) and kept[3] == shape:
                continue
            if kept is None and now[0] is None:
                continue
            constraint = constraint_of(param)
            if constraint is not None:
                check_parameter(param, constraint, shape, now[1])
                check_storage(param, constraint, shape)
            known = constraint is not None and shape is not None
            projection = (Projection(constraint, reduction_of(param, shape), shape)
                          if constraint is not None and shape is not None else None)
            optimizer.set_projection(index, projection)
            checked[index] = now if known or constraint is None else (None, None, None, None)

    def _stepping(self, run: Any, batch_size: int, ignore_stale_grad: bool) -> None:
        """Check changed constraints (giving the optimizer their projections), run Gluon's
        ``step`` or ``update``, raise what the kvstore swallowed, then project the copies the
        update skipped."""
        for average in self._gluon_constraints.averages:
            average.check_not_swapped("trainer.step()")
        self._give_changed_projections()
        stale = _stale_copies(self) if ignore_stale_grad else []
        self._warn_diverging_rates()
        self._surfacing_failures(run, batch_size, ignore_stale_grad)
        if stale and not compat.updates_on_kvstore(self):
            _project_copies(self.optimizer.inner, stale)
        self._watch_clipping()
        for average in self._gluon_constraints.averages:
            average.after_step()

    def _watch_clipping(self) -> None:
        """Count this step's projection statistics in the clipping watch (monitoring on; none
        where parameter servers project: their statistics stay there)."""
        state = self._gluon_constraints
        if state.watch is None or not state.monitor:
            return
        buffers: Dict[int, Any] = {}
        for (index, _), buffer in self.optimizer.stats.items():
            buffers.setdefault(index, buffer)
        names = {index: param.name for index, param in enumerate(compat.trainer_parameters(self))}
        state.watch.observe(buffers.items(), names)

    def _warn_diverging_rates(self) -> None:
        """Warn once where the devices' updaters will give a parameter's copies different
        scheduled rates (MXNet's behaviour, plain Trainer too)."""
        state = self._gluon_constraints
        if state.warned_rates or not compat.kvstore_initialized(self) or compat.updates_on_kvstore(self):
            return
        updated = [(i, p) for i, p in enumerate(compat.trainer_parameters(self)) if p.grad_req != "null"]
        if len({c for _, p in updated for c in p.list_ctx()}) < 2:
            return
        if self.optimizer.rates_depend_on_order([i for i, _ in updated]):
            state.warned_rates = True
            warnings.warn(
                "A learning-rate schedule with update_on_kvstore=False on several contexts, while "
                "some parameters have had fewer updates than others (layers frozen for a while, or "
                "stale gradients skipped): MXNet's devices share one num_update, so the second "
                "device's update of such a parameter can get a later scheduled rate than the "
                "first's, and its device copies diverge (MXNet's behaviour, plain Trainer too; each "
                "copy still satisfies its constraints). Leave update_on_kvstore at its default to "
                "keep them identical.", DivergingCopiesWarning, stacklevel=4)

    def _surfacing_failures(self, run: Any, *arguments: Any) -> None:
        optimizer = self.optimizer
        try:
            run(*arguments)
        except BaseException:
            optimizer.take_failure()  # it surfaced by itself
            raise
        failure = optimizer.take_failure()
        if failure is not None:  # raised inside MXNet's kvstore update, which discards it
            raise failure
        self._gluon_constraints.updates += 1


class ConstrainedTrainer(EnforcedTraining, Trainer):
    """A ``gluon.Trainer`` that keeps every constrained parameter inside its constraint.

    Same constructor as :class:`mxnet.gluon.Trainer`. After ``step()`` (and after ``update()``
    when ``allreduce_grads()`` / ``update()`` are called separately) every parameter with a
    constraint satisfies it on every context, in every configuration Gluon supports: one or
    several contexts, kvstore None / ``'device'`` / ``'local'`` / a ``KVStore`` object,
    ``update_on_kvstore`` True, False or None, and float16 weights with ``multi_precision=True``
    (the float32 master copy is projected). Device copies are bitwise identical wherever MXNet
    keeps them identical; where it does not (several contexts with ``kvstore=None``, or with the
    update on the devices and Nadam or SGLD) a :class:`~gluon_constraints.DivergingCopiesWarning`
    says so at construction.

    Everything is checked before any parameter is bound to the trainer: a refused trainer leaves
    the parameters free for another.

    Parameters
    ----------
    params : ParameterDict, dict or list of Parameter
        The parameters to optimize.
    optimizer : str or mxnet.optimizer.Optimizer
        The optimizer, by name or instance. An instance belongs to one trainer.
    optimizer_params : dict or None, default None
        Keyword arguments for the optimizer when it is given by name.
    kvstore : str or KVStore, default 'device'
        As for ``gluon.Trainer``.
    compression_params : dict or None, default None
        As for ``gluon.Trainer``.
    update_on_kvstore : bool or None, default None
        As for ``gluon.Trainer``.
    every : int, default 1
        Project after updates ``every``, ``2 * every``, ``3 * every``, ... of each parameter
        only (the optimizer's update count, which ``save_states`` keeps, so a resumed run keeps
        the interval). Between those steps the weights may leave their sets.
    monitor : bool, default False
        Record statistics of every projection for :meth:`constraint_stats`, as device arrays
        (no host synchronisation). Off, it costs nothing.
    clip_warning : float or None, default 0.9
        With ``monitor=True``: warn once per parameter (:class:`~gluon_constraints.ClippingWarning`)
        when its projection moved more than this share of its units on most steps of a window
        (the constraint fights the learning rate). None turns the warning off.
    clip_window : int, default 50
        The window's length in steps. Counts stay on the device; a window's are read when the
        next one ends, so the warning comes one window late and never waits for the device.

    Raises
    ------
    ConstraintArgumentError
        If ``every`` is not an int >= 1, ``clip_warning`` not None or in [0, 1), or
        ``clip_window`` not an int >= 1.
    ConstraintShapeError, ConstraintTypeError
        If a constraint is not a Constraint, does not fit its parameter's shape or its dtype
        (naming the parameter).
    EnforcementError
        If a row-sparse weight has a constraint that does not project each row on its own, or
        the optimizer instance already belongs to another live trainer.
    UnsupportedOptimizerError
        If ``multi_precision=True``, a constrained parameter is float16 and the optimizer keeps its
        float32 master copy in a layout the wrapper does not know.
    """

    def __init__(self, params: Any, optimizer: Any, optimizer_params: Optional[dict] = None,
                 kvstore: Any = "device", compression_params: Optional[dict] = None,
                 update_on_kvstore: Optional[bool] = None, every: int = 1,
                 monitor: bool = False, clip_warning: Optional[float] = 0.9, clip_window: int = 50) -> None:
        every, monitor = projection_interval(every), switch("monitor", monitor)
        watch = clipping_watch(clip_warning, clip_window)
        listed = _listed_parameters(params)
        check_parameters(listed, optimizer, optimizer_params)
        super().__init__(params, optimizer, optimizer_params=optimizer_params, kvstore=kvstore,
                         compression_params=compression_params, update_on_kvstore=update_on_kvstore)
        _install(self, every, monitor, {p.name: position for position, p in enumerate(listed)}, watch)


def enforce(trainer: Trainer, every: int = 1, monitor: bool = False, clip_warning: Optional[float] = 0.9,
            clip_window: int = 50) -> Trainer:
    """Install constraint enforcement into an existing ``gluon.Trainer`` before its first step.

    Works on any ``gluon.Trainer`` instance, subclasses such as
    ``horovod.mxnet.DistributedTrainer`` included: the instance's class becomes a subclass of its
    class with :class:`EnforcedTraining` (a plain ``gluon.Trainer`` becomes a
    :class:`ConstrainedTrainer`), so ``isinstance`` checks keep working. Installing twice is
    harmless (a second call only turns monitoring on if asked). A refused call changes nothing.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        A trainer whose kvstore is not created yet (no ``step``, ``update``,
        ``allreduce_grads`` or ``load_states`` so far).
    every : int, default 1
        As for :class:`ConstrainedTrainer`.
    monitor : bool, default False
        As for :class:`ConstrainedTrainer`.
    clip_warning, clip_window : float or None, and int, default 0.9 and 50
        As for :class:`ConstrainedTrainer`.

    Returns
    -------
    mxnet.gluon.Trainer
        ``trainer`` itself.

    Raises
    ------
    EnforcementError
        If the trainer's kvstore already exists: it may hold an unconstrained optimizer (on
        parameter servers too), so the constraints could not be guaranteed.
    """
    if not isinstance(trainer, Trainer):
        raise ConstraintTypeError(
            f"enforce expects an mxnet.gluon.Trainer (or a subclass such as Horovod's): got "
            f"{trainer!r} of type {type(trainer).__name__}.")
    every, monitor = projection_interval(every), switch("monitor", monitor)
    watch = clipping_watch(clip_warning, clip_window)
    if isinstance(trainer, EnforcedTraining):
        if monitor:  # turning monitoring on is safe at any time
            trainer._gluon_constraints.monitor = trainer.optimizer.monitor = True
        return trainer
    if compat.kvstore_initialized(trainer):
        raise EnforcementError(
            "enforce() was called after the trainer created its kvstore (done by its first "
            "step(), update(), allreduce_grads() or load_states()), which may hold an "
            "unconstrained optimizer: call gc.enforce(trainer) right after building the "
            "trainer, before load_states and the first step, or build a gc.ConstrainedTrainer.")
    check_parameters(compat.trainer_parameters(trainer), trainer.optimizer, owner=trainer)
    trainer.__class__ = _enforced_class(type(trainer))
    _install(trainer, every, monitor, {}, watch)
    return trainer


def check_parameters(params: Iterable[Parameter], optimizer: Any,
                     optimizer_params: Optional[dict] = None, owner: Optional[Trainer] = None) -> None:
    """Refuse constraints and optimizers that cannot be enforced, before anything is bound.

    Parameters
    ----------
    params : iterable of Parameter
        The trainer's parameters.
    optimizer : str or Optimizer
        The optimizer as given to the trainer (or the trainer's optimizer).
    optimizer_params : dict or None, default None
        Its keyword arguments when given by name.
    owner : Trainer or None, default None
        The trainer the optimizer already belongs to, if it exists.
    """
    params = list(params)
    inner = getattr(optimizer, "inner", optimizer)
    if isinstance(inner, Optimizer):
        _refuse_shared(inner, owner, params)
        optimizer_class, multi_precision = type(inner), inner.multi_precision
    else:
        optimizer_class = Optimizer.opt_registry.get(str(optimizer).lower())
        multi_precision = bool((optimizer_params or {}).get("multi_precision", False))
    for param in params:
        constraint = constraint_of(param)
        if constraint is None:
            continue
        check_parameter(param, constraint, compat.data_shape(param), owner_of(param))
        check_storage(param, constraint, compat.data_shape(param))
        if multi_precision and optimizer_class is not None and np.dtype(param.dtype) == np.float16:
            master_copy_slot(optimizer_class)


def _install(trainer: Trainer, every: int, monitor: bool, given_order: Dict[str, int],
             watch: Optional[ClippingWatch]) -> None:
    """Wrap the optimizer, record its owner and the trainer's state, and warn where device
    copies will diverge."""
    wrapper = ConstrainedOptimizer(trainer.optimizer, every=every, monitor=monitor)
    wrapper.installed = True
    compat.install_optimizer(trainer, wrapper)
    _OPTIMIZER_USERS[wrapper.inner] = weakref.ref(trainer)
    setattr(trainer, STATE, TrainerState(every, monitor, given_order, watch=watch))
    _warn_diverging(trainer, type(wrapper.inner))


_ENFORCED_CLASSES: Dict[type, type] = {Trainer: ConstrainedTrainer}


def _enforced_class(cls: type) -> type:
    """``cls`` with :class:`EnforcedTraining` (``ConstrainedTrainer`` for ``gluon.Trainer``)."""
    if cls not in _ENFORCED_CLASSES:
        _ENFORCED_CLASSES[cls] = type(f"Constrained{cls.__name__}", (EnforcedTraining, cls),
                                      {"__module__": cls.__module__, "__doc__": cls.__doc__})
    return _ENFORCED_CLASSES[cls]


def _refuse_shared(optimizer: Optimizer, owner: Optional[Trainer], params: List[Parameter]) -> None:
    """Refuse an optimizer instance that another live trainer uses for other parameters.

    A trainer whose parameters are all among ``params`` is being replaced (a notebook rebuilding
    its trainer), not shared with.
    """
    ours = {id(p) for p in params}
    user = _OPTIMIZER_USERS.get(optimizer)
    candidates = [user() if user is not None else None]
    candidates += [compat.trainer_of(p) for p in optimizer.param_dict.values()]
    other = next((t for t in candidates if t is not None and t is not owner
                  and not {id(p) for p in compat.trainer_parameters(t)} <= ours), None)
    if other is not None:
        raise EnforcementError(
            f"The optimizer {type(optimizer).__name__} instance is shared: it already belongs "
            f"to another trainer. MXNet optimizers keep per-parameter tables and update counts "
            f"by index, so two trainers on one instance get each other's learning-rate "
            f"multipliers, step counts and constraints. Give each trainer its own optimizer, "
            f"by name (gc.ConstrainedTrainer(params, 'adam', {{...}})) or as a separate instance "
            f"(e.g. one for the generator and one for the discriminator of a GAN).")


def _warn_diverging(trainer: Trainer, optimizer_class: type) -> None:
    """Warn where MXNet itself leaves a parameter's device copies different."""
    contexts = set()
    for param in compat.trainer_parameters(trainer):
        try:
            contexts.update(param.list_ctx())
        except RuntimeError:  # not initialized yet: contexts unknown
            continue
    if len(contexts) < 2:
        return
    kvstore, update_on_kvstore = compat.kvstore_setting(trainer)
    if kvstore is None:
        warnings.warn(
            f"kvstore=None with {len(contexts)} contexts: gradients are never summed across "
            f"devices, so each device copy trains on its own part of the batch and the copies "
            f"diverge (MXNet's behaviour; each copy still satisfies its constraints). Use "
            f"kvstore='device' to keep the copies identical.", DivergingCopiesWarning, stacklevel=3)
        return
    per_device = update_on_kvstore is False or (
        update_on_kvstore is None and os.getenv("MXNET_UPDATE_ON_KVSTORE", "1") == "0")
    if per_device and issubclass(optimizer_class, _PER_DEVICE_DIVERGING):
        warnings.warn(
            f"{optimizer_class.__name__} with update_on_kvstore=False on {len(contexts)} "
            f"contexts: each device's update draws its own random numbers or advances shared "
            f"optimizer state, so the device copies diverge (MXNet's behaviour, plain Trainer "
            f"too; each copy still satisfies its constraints). Leave update_on_kvstore at its "
            f"default to keep them identical.", DivergingCopiesWarning, stacklevel=3)


def _warn_unenforced(trainer: Trainer) -> None:
    """Warn about constrained parameters that no trainer updates (before the first step)."""
    owned = {id(p) for p in compat.trainer_parameters(trainer)}
    stray = sorted(p.name for p in attached_parameters()
                   if id(p) not in owned and p.grad_req != "null" and compat.trainer_of(p) is None
                   and compat.is_allocated(p))
    if stray:
        warnings.warn(
            f"These constrained parameters are not updated by this trainer (nor by any other), "
            f"so their constraints are not enforced: {', '.join(stray)}. If they belong to a "
            f"network you still train, give its parameters to a trainer; if they belong to "
            f"another network that is merely still alive (an old model in a notebook), delete "
            f"it or silence this warning with warnings.simplefilter('ignore', "
            f"gc.UnenforcedConstraintWarning).", UnenforcedConstraintWarning, stacklevel=5)


def _stale_copies(trainer: Trainer) -> List[Tuple[int, Parameter, Any]]:
    """``(index, parameter, device copy)`` of every constrained, trained parameter's copy whose
    gradient is stale: what ``step(..., ignore_stale_grad=True)`` skips on the devices. Read
    before the step, which clears the flags."""
    return [(index, param, copy)
            for index, param in enumerate(compat.trainer_parameters(trainer))
            if param.grad_req != "null" and constraint_of(param) is not None
            for copy in param.list_data() if not compat.has_fresh_gradient(copy)]


def _project_copies(optimizer: Optimizer, copies: List[Tuple[int, Parameter, Any]]) -> None:
    """Project each ``(index, parameter, copy)`` in place (a ``Scheduled`` constraint with the
    bound of the parameter's last update on that copy's device)."""
    items = []
    for index, param, copy in copies:
        constraint = constraint_of(param)
        if constraint is None:  # the copies are those of constrained parameters
            continue
        if constraint.scheduled:
            constraint = constraint.at(compat.update_count(optimizer, index, copy.context.device_id))
        items.append((copy.as_nd_ndarray(), constraint, reduction_of(param)))
    project_in_place(items)


def _listed_parameters(params: Any) -> List[Parameter]:
    """The parameters as ``gluon.Trainer`` reads them (it raises its own error for other input)."""
    if hasattr(params, "values") and callable(params.values):
        return list(params.values())
    if isinstance(params, (list, tuple)):
        return [p for p in params if isinstance(p, Parameter)]
    return []
