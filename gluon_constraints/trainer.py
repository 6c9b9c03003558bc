"""Enforcing constraints during training: ``ConstrainedTrainer`` and ``enforce``.

Both install a :class:`~gluon_constraints.optimizer.ConstrainedOptimizer` around the trainer's
optimizer before the first step, so the projection runs inside the update, on whichever copy the
update writes (device copy, kvstore copy, server copy or float32 master). A post-``step()`` hook
on the device copies would be undone at the next step whenever the kvstore or a master copy is
authoritative.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, List, Optional

import numpy as np
from mxnet import ndarray
from mxnet.gluon import Trainer

from .attachment import attached_parameters, constraint_of, reduction_of
from .distributed import prepare_distributed, settle_initial_weights
from .errors import ConstraintViolationError, EnforcementError
from .optimizer import ConstrainedOptimizer, master_copy_slot

__all__ = ["ConstrainedTrainer", "enforce", "verify_constraints"]

# A projected copy may differ from its projection by float rounding only.
_VERIFY_RTOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


class ConstrainedTrainer(Trainer):
    """A ``gluon.Trainer`` that keeps every constrained parameter inside its constraint.

    Same constructor as :class:`mxnet.gluon.Trainer`. After ``step()`` (and after ``update()``
    when ``allreduce_grads()`` / ``update()`` are called separately) every parameter with a
    constraint satisfies it on every context, all copies bitwise identical, in every
    configuration Gluon supports: one or several contexts, kvstore None / ``'device'`` /
    ``'local'`` / a ``KVStore`` object, ``update_on_kvstore`` True, False or None, and float16
    weights with ``multi_precision=True`` (the float32 master copy is projected).

    Parameters
    ----------
    params : ParameterDict, dict or list of Parameter
        The parameters to optimize.
    optimizer : str or mxnet.optimizer.Optimizer
        The optimizer, by name or instance.
    optimizer_params : dict or None, default None
        Keyword arguments for the optimizer when it is given by name.
    kvstore : str or KVStore, default 'device'
        As for ``gluon.Trainer``.
    compression_params : dict or None, default None
        As for ``gluon.Trainer``.
    update_on_kvstore : bool or None, default None
        As for ``gluon.Trainer``.

    Raises
    ------
    ValueError
        If a constraint does not fit its parameter's shape (naming the parameter).
    UnsupportedOptimizerError
        If ``multi_precision=True``, a constrained parameter is float16 and the optimizer keeps its
        float32 master copy in a layout the wrapper does not know.
    """

    def __init__(self, params: Any, optimizer: Any, optimizer_params: Optional[dict] = None,
                 kvstore: Any = "device", compression_params: Optional[dict] = None,
                 update_on_kvstore: Optional[bool] = None) -> None:
        super().__init__(params, optimizer, optimizer_params=optimizer_params, kvstore=kvstore,
                         compression_params=compression_params, update_on_kvstore=update_on_kvstore)
        enforce(self)

    def verify_constraints(self) -> None:
        """Check every copy this trainer owns; see :func:`verify_constraints`."""
        verify_constraints(self)


def enforce(trainer: Trainer) -> Trainer:
    """Install constraint enforcement into an existing ``gluon.Trainer`` before its first step.

    Works on any ``gluon.Trainer`` instance, subclasses such as
    ``horovod.mxnet.DistributedTrainer`` included. Installing twice is harmless. The trainer also
    gets a ``verify_constraints()`` method.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        A trainer that has not stepped yet.

    Returns
    -------
    mxnet.gluon.Trainer
        ``trainer`` itself.

    Raises
    ------
    EnforcementError
        If the trainer has already stepped: its kvstore may already hold an unconstrained
        optimizer, so the constraints could not be guaranteed.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(f"enforce expects an mxnet.gluon.Trainer: got {trainer!r}.")
    if isinstance(trainer._optimizer, ConstrainedOptimizer):
        return trainer
    if trainer._kv_initialized:
        raise EnforcementError(
            "enforce() was called after the trainer's first step (its kvstore is initialized and "
            "may hold an unconstrained optimizer): install enforcement before the first step, or "
            "build a gc.ConstrainedTrainer.")
    _check_parameters(trainer)
    trainer._init_optimizer(ConstrainedOptimizer(trainer._optimizer), {})
    _run_around(trainer, "_init_kvstore", before=_before_first_step, after=settle_initial_weights)
    _run_around(trainer, "load_states", after=_rewrap_loaded_optimizer)
    if not isinstance(trainer, ConstrainedTrainer):
        trainer.verify_constraints = functools.partial(verify_constraints, trainer)
    return trainer


def verify_constraints(trainer: Trainer) -> None:
    """Check that every copy of every constrained parameter satisfies its constraint.

    Checks each device copy and, where the update runs on a kvstore (``update_on_kvstore``), the
    copy the kvstore keeps (pulled back; on a distributed kvstore, the servers' copy). All copies
    must also be bitwise identical, except a ``dist_async`` server copy, which moves on with other
    workers' pushes. A debugging aid: it synchronises with the host.

    Parameters
    ----------
    trainer : mxnet.gluon.Trainer
        A trainer with enforcement installed.

    Raises
    ------
    ConstraintViolationError
        Naming each violated parameter, the copy, and by how much the projection would change it
        (largest change relative to the largest entry), and each parameter whose device copies
        differ.
    """
    problems: List[str] = []
    on_kvstore = bool(trainer._kvstore) and bool(trainer._update_on_kvstore)
    for index, param in enumerate(trainer._params):
        constraint = constraint_of(param)
        if constraint is None or param.grad_req == "null":
            continue
        reduction = reduction_of(param)
        copies = [(f"context {a.context}", a.as_nd_ndarray()) for a in param.list_data()]
        if on_kvstore:
            stored = ndarray.zeros(param.shape, ctx=copies[0][1].context, dtype=param.dtype)
            trainer._kvstore.pull(index, out=stored)
            copies.append(("kvstore copy", stored))
        for label, array in copies:
            values = array.asnumpy().astype(np.float64)
            projected = constraint(array, reduction).asnumpy().astype(np.float64)
            scale = max(float(np.abs(values).max(initial=0.0)), np.finfo(np.float64).tiny)
            change = float(np.abs(projected - values).max(initial=0.0)) / scale
            if change > _VERIFY_RTOL.get(np.dtype(param.dtype), 1e-5):
                problems.append(f"{param.name} ({label}): projection would change it by "
                                f"{change:.3g} relative to its largest entry")
        first = copies[0][1].asnumpy()
        comparable = copies[1:-1] if on_kvstore and "async" in trainer._kvstore.type else copies[1:]
        for label, array in comparable:
            if array.asnumpy().tobytes() != first.tobytes():
                problems.append(f"{param.name} ({label}): differs from {copies[0][0]}")
    if problems:
        raise ConstraintViolationError(
            "Constraints are violated:\n" + "\n".join(f"  {p}" for p in problems))


def _check_parameters(trainer: Trainer) -> None:
    """Refuse constraints that cannot be enforced, before anything runs."""
    inner = getattr(trainer._optimizer, "inner", trainer._optimizer)
    for param in trainer._params:
        constraint = constraint_of(param)
        if constraint is None:
            continue
        if param._stype != "default":
            raise EnforcementError(
                f"Parameter '{param.name}' has a constraint but {param._stype} storage: "
                f"gluon-constraints projects dense weights only.")
        if all(d > 0 for d in param.shape):
            constraint.validate(param.shape, reduction_of(param), name=param.name)
        if inner.multi_precision and np.dtype(param.dtype) == np.float16:
            master_copy_slot(inner)


def _before_first_step(trainer: Trainer) -> None:
    _check_parameters(trainer)
    prepare_distributed(trainer)
    owned = {id(p) for p in trainer._params}
    stray = sorted(p.name for p in attached_parameters()
                   if id(p) not in owned and p.grad_req != "null" and p._trainer is None
                   and p._data is not None)
    if stray:
        warnings.warn(
            f"These constrained parameters are not updated by this trainer (nor by any other), "
            f"so their constraints are not enforced: {', '.join(stray)}.", stacklevel=4)


def _rewrap_loaded_optimizer(trainer: Trainer) -> None:
    """After ``load_states`` from a plain trainer's file, wrap the loaded optimizer again."""
    if isinstance(trainer._optimizer, ConstrainedOptimizer):
        return
    wrapper = ConstrainedOptimizer(trainer._optimizer)
    trainer._optimizer = wrapper
    for updater in trainer._updaters:
        updater.optimizer = wrapper
    if trainer._kvstore and trainer._update_on_kvstore:
        trainer._kvstore._updater.optimizer = wrapper


def _run_around(trainer: Trainer, method: str, before: Any = None, after: Any = None) -> None:
    """Run ``before(trainer)`` / ``after(trainer)`` around one trainer instance's method."""
    original = getattr(trainer, method)

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(trainer)
        result = original(*args, **kwargs)
        if after is not None:
            after(trainer)
        return result

    setattr(trainer, method, wrapped)
