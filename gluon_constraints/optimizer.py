"""``ConstrainedOptimizer``: projects each weight onto its constraint right after its update.

The projection has to run where the update runs, on the copy that is authoritative: a device
copy (one context, or ``update_on_kvstore=False``), the kvstore's stored copy
(``update_on_kvstore=True``, the multi-device default, from which every device copy is pulled),
a parameter server's copy (distributed kvstores), or the float32 master copy that
``multi_precision=True`` keeps in the optimizer state and casts to the float16 weight every step.
The one piece of code that runs on exactly that array in every configuration is the optimizer's
update, so this wrapper calls the user's optimizer and then projects what it just updated.

Servers unpickle this class while ``import mxnet`` is still running: the module imports only
``mxnet.ndarray`` and ``mxnet.optimizer``, never ``mxnet.nd`` or ``mxnet.gluon``.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from mxnet import ndarray
from mxnet.optimizer import LAMB, LARS, NAG, SGD, Optimizer

from .constraints import Constraint
from .fused import kernel as fused_kernel
from .projection import fused_sgd_attributes, fused_sgd_update, project_in_place
from .reduction import Reduction

__all__ = ["ConstrainedOptimizer", "Projection", "UnsupportedOptimizerError", "master_copy_slot"]


class UnsupportedOptimizerError(ValueError):
    """The optimizer keeps its float32 master copy where the wrapper cannot find it."""


class Projection(NamedTuple):
    """What to project for one parameter: the constraint, its reduction and the full shape."""

    constraint: Constraint
    reduction: Reduction
    shape: Tuple[int, ...]


# Where Optimizer.create_state_multi_precision puts the float32 master copy, by the class that
# defines it: the base class returns (master, state); SGD, NAG and LARS return (state, master).
# Parameters per update call when the fused SGD kernel runs (MXNet's own SGD takes 4).
_FUSED_AGGREGATION = 256

_MASTER_SLOT_BY_CREATOR = {Optimizer: 0, SGD: 1, NAG: 1, LARS: 1}
# Classes whose update_multi_precision updates that master copy and casts it into the weight.
_CASTING_UPDATERS = {Optimizer: (Optimizer, LAMB), SGD: (SGD,), NAG: (NAG,), LARS: (LARS,)}


def master_copy_slot(optimizer: Optimizer) -> int:
    """Index of the float32 master copy in a multi-precision state of ``optimizer``.

    Parameters
    ----------
    optimizer : mxnet.optimizer.Optimizer
        The (unwrapped) optimizer.

    Raises
    ------
    UnsupportedOptimizerError
        If the class defines its own multi-precision state layout that is not a built-in one.
    """
    mro = type(optimizer).__mro__
    creator = next(c for c in mro if "create_state_multi_precision" in c.__dict__)
    updater = next(c for c in mro if "update_multi_precision" in c.__dict__)
    if creator in _MASTER_SLOT_BY_CREATOR and updater in _CASTING_UPDATERS[creator]:
        return _MASTER_SLOT_BY_CREATOR[creator]
    raise UnsupportedOptimizerError(
        f"Optimizer {type(optimizer).__name__} defines its own multi-precision state layout "
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
    ``rescale_grad``, ``param_dict``, schedulers, update counts) reads and writes through to the
    wrapped optimizer, so Gluon's Trainer and kvstores use the wrapper like the original.

    On a worker the constraint is read from ``param_dict[index].constraint`` at each update;
    a pickled copy (what distributed kvstores send to their servers) carries a snapshot of the
    projections, because ``param_dict`` is not pickled.

    Parameters
    ----------
    inner : mxnet.optimizer.Optimizer
        The optimizer that performs the update.
    projections : dict or None, default None
        ``{index: Projection}`` to use where ``param_dict`` is empty (on servers).
    """

    _OWN = ("inner", "projections", "_cache", "_fused_calls", "_fuses_sgd")

    def __init__(self, inner: Optimizer, projections: Optional[Dict[int, Projection]] = None) -> None:
        if not isinstance(inner, Optimizer):
            raise TypeError(f"ConstrainedOptimizer wraps an mxnet.optimizer.Optimizer: got {inner!r}.")
        if isinstance(inner, ConstrainedOptimizer):
            raise TypeError("ConstrainedOptimizer is already wrapping this optimizer.")
        self._own(inner, projections or {})

    def _own(self, inner: Optimizer, projections: Dict[int, Projection]) -> None:
        """Set the wrapper's own attributes (everything else lives on ``inner``)."""
        for name, value in (("inner", inner), ("projections", dict(projections)), ("_cache", {}),
                            ("_fused_calls", {}), ("_fuses_sgd", None)):
            object.__setattr__(self, name, value)

    # -- delegation -----------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in ConstrainedOptimizer._OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ConstrainedOptimizer._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    @property
    def aggregate_num(self) -> int:
        """How many parameters an ``Updater`` passes per update call.

        With the fused SGD kernel one call can take every parameter of a step (fewer, larger
        calls: MXNet's per-call dispatch dominates for many small layers); otherwise the wrapped
        optimizer's own number.
        """
        inner = self.inner.aggregate_num
        return max(inner, _FUSED_AGGREGATION) if inner > 0 and self._fused_sgd_possible() else inner

    def _fused_sgd_possible(self) -> bool:
        """Whether the fused SGD kernel can serve this optimizer (decided once: read per call)."""
        if self._fuses_sgd is None:
            self._fuses_sgd = (type(self.inner) is SGD and self.inner.momentum > 0
                               and fused_kernel() is not None)
        return self._fuses_sgd

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

    def _set_current_context(self, device_id: int) -> None:
        self.inner._set_current_context(device_id)

    def create_state(self, index: Any, weight: Any) -> Any:
        """The wrapped optimizer's state for ``weight``."""
        return self.inner.create_state(index, weight)

    def create_state_multi_precision(self, index: Any, weight: Any) -> Any:
        """The wrapped optimizer's state for ``weight``, with a float32 master copy if asked."""
        return self.inner.create_state_multi_precision(index, weight)

    # -- update + projection ----------------------------------------------------------------
    def update(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer, then project each updated weight."""
        self.inner.update(index, weight, grad, state)
        indices, weights, _, states = _listed(index, weight, grad, state)
        self._project_updated(indices, weights, states, multi_precision=False)

    def update_multi_precision(self, index: Any, weight: Any, grad: Any, state: Any) -> None:
        """Update like the wrapped optimizer (master copy included), then project.

        For SGD with momentum on float32 weights the fused kernel does both in one pass. A call
        without constrained parameters is passed straight through.
        """
        indices, weights, grads, states = _listed(index, weight, grad, state)
        projections = [self.projection_for(i) for i in indices]
        if not any(projections):
            self.inner.update_multi_precision(index, weight, grad, state)
            return
        attributes = self._fused_sgd_attributes(indices, weights, grads, states, projections)
        if attributes is not None:
            fused_sgd_update(self.inner, indices, weights, grads, states, attributes)
            return
        if not isinstance(index, (list, tuple)):
            self.inner.update_multi_precision(index, weight, grad, state)
            self._project_updated(indices, weights, states, multi_precision=True)
            return
        step = max(self.inner.aggregate_num, 1)  # the wrapped optimizer's own call size
        for at in range(0, len(indices), step):
            part = slice(at, at + step)
            self.inner.update_multi_precision(indices[part], weights[part], grads[part], states[part])
            self._project_updated(indices[part], weights[part], states[part], multi_precision=True)

    def _fused_sgd_attributes(self, indices: Sequence[Any], weights: Sequence[Any],
                              grads: Sequence[Any], states: Sequence[Any],
                              projections: Sequence[Optional[Projection]]) -> Optional[Dict[str, str]]:
        """The fused kernel's attributes for this call, cached while nothing they depend on changes."""
        if not self._fused_sgd_possible():
            return None
        key = tuple(indices)
        signature = (tuple(map(id, projections)), weights[0].dtype, weights[0].context)
        cached = self._fused_calls.get(key)
        if cached is None or cached[0] != signature:
            cached = (signature, fused_sgd_attributes(self.inner, weights, grads, states, projections))
            self._fused_calls[key] = cached
        return cached[1]

    def _project_updated(self, indices: Sequence[Any], weights: Sequence[Any], states: Sequence[Any],
                         multi_precision: bool) -> None:
        """Project every weight this update call wrote, in one batch where possible."""
        items, casts = [], []
        for i, w, s in zip(indices, weights, states):
            projection = self.projection_for(i)
            if projection is None:
                continue
            constraint, reduction, shape = projection
            if multi_precision and self.inner.multi_precision and w.dtype == np.float16:
                master = s[master_copy_slot(self.inner)]
                items.append((_full_shape(master, shape), constraint, reduction))
                casts.append((master, w))
            else:
                items.append((_full_shape(w, shape), constraint, reduction))
        project_in_place(items)
        for master, w in casts:
            ndarray.cast(master, dtype=w.dtype, out=w)

    def projection_for(self, index: Any) -> Optional[Projection]:
        """The projection of parameter ``index``: live from ``param_dict``, else the snapshot.

        Parameters
        ----------
        index : int
            The Trainer's index of the parameter (its kvstore key).
        """
        param = self.inner.param_dict.get(index)
        if param is None:
            return self.projections.get(index)
        constraint = getattr(param, "constraint", None)
        if constraint is None:
            return None
        cached = self._cache.get(index)
        if cached is not None and cached.constraint is constraint and cached.shape == param.shape:
            return cached
        from .attachment import reduction_of  # workers only: needs mxnet.gluon

        projection = Projection(constraint, reduction_of(param), tuple(param.shape))
        self._cache[index] = projection
        return projection

    def snapshot(self) -> Dict[int, Projection]:
        """``{index: Projection}`` for every constrained parameter in ``param_dict``."""
        table = dict(self.projections)
        for index in self.inner.param_dict:
            projection = self.projection_for(index)
            if projection is not None:
                table[index] = projection
        return table

    # -- pickling (kvstore servers, save_states) ----------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        return {"inner": self.inner, "projections": self.snapshot()}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._own(state["inner"], state["projections"])

    def __repr__(self) -> str:
        return f"ConstrainedOptimizer({type(self.inner).__name__})"


def _listed(index: Any, weight: Any, grad: Any, state: Any) -> Tuple[Sequence[Any], ...]:
    """One update call's arguments as sequences (Updater passes lists when it aggregates)."""
    if isinstance(index, (list, tuple)):
        return index, weight, grad, state
    return (index,), (weight,), (grad,), (state,)


def _full_shape(array: Any, shape: Sequence[int]) -> Any:
    """``array`` viewed with the parameter's shape (servers hold weights flattened to 1-D)."""
    if tuple(array.shape) == tuple(shape):
        return array
    if array.size != int(np.prod(shape)):
        # A server holding a piece of a big array; the trainer refuses this before training.
        raise ValueError(f"gluon-constraints got a piece of {array.size} elements of a weight of "
                         f"shape {tuple(shape)}: it cannot be projected.")
    return array.reshape(shape)
