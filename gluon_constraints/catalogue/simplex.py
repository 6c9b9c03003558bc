"""Per-unit Euclidean projections onto the probability simplex and the L1 ball.

Both use the sort-based algorithm of Duchi et al. (2008, "Efficient projections onto the
l1-ball for learning in high dimensions"): for a slice ``v`` of length ``d`` and radius ``r``,
sort ``v`` in decreasing order into ``u``, let ``rho`` be the largest ``k`` with
``u_k > (sum_{i<=k} u_i - r) / k`` and ``theta = (sum_{i<=rho} u_i - r) / rho``; the projection
onto ``{x >= 0, sum x = r}`` is ``max(v - theta, 0)``. Slices are computed in float64, so that
the projected slice's sum is ``r`` to within its own rounding and a second application finds it
feasible and leaves it unchanged.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from .base import PER_UNIT, Constraint, bound_argument
from .reduction import Reduction, unit_rows, viewed
from .registry import register_constraint

__all__ = ["Simplex", "L1Ball"]


@register_constraint
class Simplex(Constraint):
    """Project each output unit's incoming weights onto the simplex of the given radius.

    The set is ``{w : w_j >= 0 and sum(w_j) = radius for every unit j}`` (mixture or attention
    weights); each slice becomes its nearest point of that set::

        w_j -> max(w_j - theta_j, 0),  theta_j such that sum(max(w_j - theta_j, 0)) = radius

    Slices already in the set (nonnegative, summing to ``radius`` within rounding) are returned
    unchanged.

    Parameters
    ----------
    radius : float, default 1.0
        The sum of every slice: finite, > 0 and a normal float32 number.

    Examples
    --------
    >>> gc.Simplex()(mx.nd.array([[0.5, 1.5, -1.0]])).asnumpy()
    array([[0., 1., 0.]], dtype=float32)
    """

    locality = PER_UNIT
    convex = True

    def __init__(self, radius: float = 1.0) -> None:
        self.radius = bound_argument("Simplex", "radius", radius)

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``max(w_j - theta_j, 0)`` per slice, as a new array."""
        rows, restore = unit_rows(viewed(w, reduction), reduction.axes)
        exact = rows.astype(np.float64)
        tolerance = _tolerance(boundary_rtol, rows.shape[1]) * self.radius
        inside = (nd.min(exact, axis=1, keepdims=True) >= 0) \
            * (nd.abs(nd.sum(exact, axis=1, keepdims=True) - self.radius) <= tolerance)
        projected = _onto_simplex(exact, self.radius)
        return restore(nd.where(nd.broadcast_like(inside, rows), rows,
                                projected.astype(rows.dtype))).reshape(w.shape)

    def get_config(self) -> Dict[str, Any]:
        """``{"radius": ...}``."""
        return {"radius": self.radius}


@register_constraint
class L1Ball(Constraint):
    """Project each output unit's incoming weights onto the L1 ball of the given radius.

    The set is ``{w : ||w_j||_1 <= radius}``; a slice outside it becomes its nearest point of
    the ball (soft thresholding, which makes the slice sparse)::

        w_j -> sign(w_j) * max(|w_j| - theta_j, 0),  theta_j such that the L1 norm is radius

    Slices inside the ball are returned unchanged. ``MaxNorm(radius, ord=1)`` instead rescales
    the slice, which keeps its direction but is not the nearest point.

    Parameters
    ----------
    radius : float, default 1.0
        The largest allowed L1 norm: finite, > 0 and a normal float32 number.

    Examples
    --------
    >>> gc.L1Ball(1.0)(mx.nd.array([[2.0, -0.5, 0.1]])).asnumpy()
    array([[ 1., -0.,  0.]], dtype=float32)
    """

    locality = PER_UNIT
    convex = True

    def __init__(self, radius: float = 1.0) -> None:
        self.radius = bound_argument("L1Ball", "radius", radius)

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``sign(w_j) * max(|w_j| - theta_j, 0)`` for the slices outside the ball."""
        rows, restore = unit_rows(viewed(w, reduction), reduction.axes)
        exact = rows.astype(np.float64)
        magnitudes = nd.abs(exact)
        tolerance = _tolerance(boundary_rtol, rows.shape[1])
        inside = nd.sum(magnitudes, axis=1, keepdims=True) <= self.radius * (1.0 + tolerance)
        projected = nd.sign(exact) * _onto_simplex(magnitudes, self.radius)
        return restore(nd.where(nd.broadcast_like(inside, rows), rows,
                                projected.astype(rows.dtype))).reshape(w.shape)

    def get_config(self) -> Dict[str, Any]:
        """``{"radius": ...}``."""
        return {"radius": self.radius}


def _onto_simplex(v: NDArray, radius: float) -> NDArray:
    """Row-wise projection of the 2-D float64 ``v`` onto ``{x >= 0, sum x = radius}``.

    Each row is first shifted by its largest entry (the projection does not change when every
    entry of a row moves by the same amount): the sums then stay within the radius's scale, so
    a row of entries like 1e35 is not absorbed by rounding and its largest entries share the
    radius."""
    v = nd.broadcast_sub(v, nd.max(v, axis=1, keepdims=True))
    u = nd.sort(v, axis=1, is_ascend=False)
    sums = nd.np.cumsum(u.as_np_ndarray(), axis=1).as_nd_ndarray()
    k = nd.arange(1, v.shape[1] + 1, ctx=v.context, dtype=v.dtype).reshape((1, -1))
    positive = u > nd.broadcast_div(sums - radius, k)
    rho = nd.sum(positive, axis=1)  # the condition holds for a prefix of k = 1, 2, ...
    theta = (nd.pick(sums, rho - 1, axis=1) - radius) / rho
    return nd.maximum(nd.broadcast_sub(v, theta.reshape((-1, 1))), 0.0)


def _tolerance(boundary_rtol: float, length: int) -> float:
    """Relative band for a slice's sum: the dtype's band, at least float64 summation error."""
    return max(boundary_rtol, 4.0 * length * float(np.finfo(np.float64).eps))
