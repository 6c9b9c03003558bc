"""``penalty``: the constraints as a differentiable loss term instead of a projection."""

from __future__ import annotations

from typing import Any, Optional

from mxnet import autograd, ndarray

from ..gluon.attachment import constraint_of, reduction_of
from .apply import Target, parameters_of

__all__ = ["penalty"]


def penalty(target: Target, ctx: Any = None) -> Any:
    """The squared distance of every constrained weight to its set, as a scalar to add to a loss.

    For each trainable parameter with a constraint ``P`` (the projection onto its set)::

        penalty = sum over parameters of || w - P(w) ||^2

    which is 0 inside every set and grows with the distance outside. For ``MaxNorm(c)`` it is
    ``sum_j max(||w_j|| - c, 0)^2``, the squared excess of each unit's norm over the bound; for
    ``NonNeg`` ``sum min(w, 0)^2``. ``P(w)`` is computed outside autograd, so the gradient is
    ``2 (w - P(w))``, which for a convex set (``c.convex``) is the exact gradient of the
    squared distance. Use it for soft constraints, with a plain ``gluon.Trainer`` (or any
    trainer)::

        with autograd.record():
            loss = loss_fn(net(x), y) + 0.01 * gc.penalty(net)

    A ``Scheduled`` constraint uses its final bound, a ``SpectralNorm`` its standalone estimate.

    Parameters
    ----------
    target : Block, ParameterDict, Parameter or iterable of Parameters
        Whose constrained parameters to penalise (``grad_req='null'`` ones are left out).
    ctx : Context or None, default None
        Which device copy to use (the one your loss is computed on); None means the first.

    Returns
    -------
    mx.nd.NDArray
        A 1-element array on ``ctx``, recorded by autograd when called inside
        ``autograd.record()``; 0 if no parameter is constrained.
    """
    total: Optional[Any] = None
    for param in parameters_of(target):
        constraint = constraint_of(param)
        if constraint is None or param.grad_req == "null":
            continue
        w = param.data(ctx).as_nd_ndarray()
        with autograd.pause():
            nearest = constraint(w.detach(), reduction_of(param))
        term = ndarray.sum(ndarray.square(w - nearest))
        total = term if total is None else total + term
    if total is None:
        return ndarray.zeros((1,), ctx=ctx)
    return total
