"""Norm constraints per output unit: ``MaxNorm``, ``MinMaxNorm``, ``UnitNorm``.

Each bounds the p-norm ``n_j = ||w_j||_p`` (p = ``ord``: 1, 2 or inf) of every slice ``w_j``
(the weights feeding output unit ``j``) and rescales only the slices outside the allowed set, so
feasible slices come back bit-for-bit. Norms, scales and the rescaled entries are computed in
float64 and rounded once to the weight's dtype, as the fused kernel does: a finite slice never
overflows or underflows on the way (a float32 row of entries 3e38 has a norm beyond float32,
one of entries 1e-40 a scale beyond it), so finite input gives finite output. For p = 2 the rescale is the
Euclidean projection onto the ball; for p = 1 and inf it is PyTorch's ``renorm`` (the nearest
point of the L1 ball is :class:`~gluon_constraints.L1Ball`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import PER_UNIT, Constraint, axis_config, bound_argument, real_argument
from .lowering import RowLowering, lowers_to_rows
from .reduction import Axis, Reduction, canonical_axis, viewed
from .registry import register_constraint

__all__ = ["MaxNorm", "MinMaxNorm", "UnitNorm", "as_rows", "slice_norms", "widened", "rescaled", "norm_order",
           "order_config"]


@register_constraint(keras_alias=True)
class MaxNorm(Constraint):
    """Bound the norm of each output unit's incoming weights.

    The set is ``{w : ||w_j||_p <= max_value for every unit j}`` (p = ``ord``); each slice
    ``w_j`` becomes::

        w_j * max_value / max(||w_j||_p, max_value)

    so slices already inside the ball are returned unchanged. With p = 2 (the default) this is
    the max-norm regularization of Srivastava et al. (2014) and the Euclidean projection onto
    the ball; with p = 1 or inf it is PyTorch's ``renorm(p, 0, max_value)`` (a rescaling, not
    the nearest point: that is :class:`L1Ball` for p = 1).

    Parameters
    ----------
    max_value : float, default 2.0
        Largest allowed L2 norm: finite, > 0 and a normal float32 number.
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit (every axis but 0
        of a bare array, the layer's fan-in axes when attached to a layer).
    ord : {1, 2, inf}, default 2
        Which norm: the sum of absolute values, the Euclidean norm, or the largest absolute
        value (``math.inf``, ``float("inf")`` or ``"inf"``).

    Examples
    --------
    >>> gc.MaxNorm(2.0)(mx.nd.array([[3, 4], [0.3, 0.4]]))  # doctest: +SKIP
    [[1.2 1.6]
     [0.3 0.4]]
    """

    locality = PER_UNIT

    def __init__(self, max_value: float = 2.0, axis: Axis = None, ord: Any = 2) -> None:
        self.max_value = bound_argument("MaxNorm", "max_value", max_value)
        self.axis = canonical_axis(axis, "MaxNorm")
        self.ord = norm_order("MaxNorm", ord)

    @property
    def convex(self) -> bool:  # type: ignore[override]  # base.Constraint's class attribute, computed
        """True for ``ord=2``: the Euclidean projection onto a ball (non-expansive)."""
        return self.ord == 2

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``w * max_value / max(n, max_value)`` per slice, as a new array."""
        rows, axes = as_rows(widened(viewed(w, reduction)), reduction.axes)
        norms = slice_norms(rows, axes, self.ord)
        outside = norms > self.max_value * (1.0 + boundary_rtol)
        return rescaled(rows, norms, outside, self.max_value).astype(w.dtype, copy=False).reshape(w.shape)

    def get_config(self) -> Dict[str, Any]:
        """``{"max_value": ..., "axis": ..., "ord": ...}`` (ord 1, 2 or ``"inf"``)."""
        return {"max_value": self.max_value, "axis": axis_config(self.axis),
                "ord": order_config(self.ord)}


@register_constraint(keras_alias=True)
class MinMaxNorm(Constraint):
    """Keep the norm of each output unit's incoming weights between two bounds.

    The set is ``{w : min_value <= ||w_j||_p <= max_value}`` (p = ``ord``; all-zero slices stay
    zero). With ``n = ||w_j||_p`` the norm of slice ``w_j``, the slice becomes::

        w_j * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / n

    ``rate=1.0`` projects strictly onto the band; a smaller rate moves each slice only part of
    the way per application. Slices inside the band and all-zero slices are unchanged.

    Parameters
    ----------
    min_value : float, default 0.0
        Smallest allowed norm: 0, or a finite normal float32 number > 0.
    max_value : float, default 1.0
        Largest allowed norm: finite, >= min_value and a normal float32 number.
    rate : float, default 1.0
        Fraction of the way to the band moved per application. Must lie in [0, 1].
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit.
    ord : {1, 2, inf}, default 2
        Which norm, as in :class:`MaxNorm`.
    """

    locality = PER_UNIT

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0,
                 axis: Axis = None, ord: Any = 2) -> None:
        self.min_value = bound_argument("MinMaxNorm", "min_value", min_value, allow_zero=True)
        self.max_value = bound_argument("MinMaxNorm", "max_value", max_value)
        self.rate = real_argument("MinMaxNorm", "rate", rate)
        if self.min_value > self.max_value:
            raise ConstraintArgumentError(
                f"MinMaxNorm min_value must be <= max_value: got min_value={min_value!r} "
                f"and max_value={max_value!r}.")
        if not 0.0 <= self.rate <= 1.0:
            raise ConstraintArgumentError(
                f"MinMaxNorm rate must lie in [0, 1]: got {rate!r}.")
        self.axis = canonical_axis(axis, "MinMaxNorm")
        self.ord = norm_order("MinMaxNorm", ord)

    @property
    def convex(self) -> bool:  # type: ignore[override]  # base.Constraint's class attribute, computed
        """True for ``min_value=0``, ``rate=1``, ``ord=2``: then it is MaxNorm's projection."""
        return self.min_value == 0.0 and self.rate == 1.0 and self.ord == 2

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``w * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / n`` per slice."""
        rows, axes = as_rows(widened(viewed(w, reduction)), reduction.axes)
        norms = slice_norms(rows, axes, self.ord)
        above = norms > self.max_value * (1.0 + boundary_rtol)
        below = (norms < self.min_value * (1.0 - boundary_rtol)) * (norms > 0)
        target = nd.where(above, nd.full(norms.shape, self.max_value, norms.context, norms.dtype),
                          nd.full(norms.shape, self.min_value, norms.context, norms.dtype))
        return rescaled(rows, norms, above + below, target, self.rate).astype(w.dtype, copy=False).reshape(w.shape)


    def get_config(self) -> Dict[str, Any]:
        """``{"min_value": ..., "max_value": ..., "rate": ..., "axis": ..., "ord": ...}``."""
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": axis_config(self.axis), "ord": order_config(self.ord)}


@register_constraint(keras_alias=True)
class UnitNorm(Constraint):
    """Rescale each output unit's incoming weights to unit norm.

    The set is ``{w : ||w_j||_p = 1}`` (p = ``ord``); each slice ``w_j`` becomes::

        w_j / ||w_j||_p

    An all-zero slice has no direction and stays zero.

    Parameters
    ----------
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit.
    ord : {1, 2, inf}, default 2
        Which norm, as in :class:`MaxNorm`.
    """

    locality = PER_UNIT

    def __init__(self, axis: Axis = None, ord: Any = 2) -> None:
        self.axis = canonical_axis(axis, "UnitNorm")
        self.ord = norm_order("UnitNorm", ord)

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``w / n`` per slice (zero slices stay zero)."""
        rows, axes = as_rows(widened(viewed(w, reduction)), reduction.axes)
        norms = slice_norms(rows, axes, self.ord)
        off_sphere = (nd.abs(norms - 1.0) > boundary_rtol) * (norms > 0)
        return rescaled(rows, norms, off_sphere, 1.0).astype(w.dtype, copy=False).reshape(w.shape)


    def get_config(self) -> Dict[str, Any]:
        """``{"axis": ..., "ord": ...}``."""
        return {"axis": axis_config(self.axis), "ord": order_config(self.ord)}


# The fused kernel computes all three: a band [lo, hi] on each unit's ord-norm.
@lowers_to_rows(MaxNorm)
def _max_norm_rows(c: MaxNorm) -> RowLowering:
    """The band ``[0, max_value]``."""
    return RowLowering("norm", 0.0, c.max_value, 1.0, c.ord)


@lowers_to_rows(MinMaxNorm)
def _min_max_norm_rows(c: MinMaxNorm) -> RowLowering:
    """The band ``[min_value, max_value]`` and ``rate``."""
    return RowLowering("norm", c.min_value, c.max_value, c.rate, c.ord)


@lowers_to_rows(UnitNorm)
def _unit_norm_rows(c: UnitNorm) -> RowLowering:
    """The band ``[1, 1]``."""
    return RowLowering("norm", 1.0, 1.0, 1.0, c.ord)


def as_rows(w: NDArray, axes: Tuple[int, ...]) -> Tuple[NDArray, Tuple[int, ...]]:
    """``w`` viewed as 2-D rows, one per slice, when the reduced axes are the trailing ones.

    A reshape is free, and MXNet reduces one axis much faster than several (a convolution
    filter's three). Other reductions are returned as they are.
    """
    first = w.ndim - len(axes)
    if len(axes) < 2 or first < 1 or tuple(axes) != tuple(range(first, w.ndim)):
        return w, axes
    return w.reshape((-1, math.prod(w.shape[first:]))), (1,)


def slice_norms(w: NDArray, axes: Tuple[int, ...], order: float = 2) -> NDArray:
    """``order``-norm (1, 2 or inf) of every slice over ``axes``, kept as size-1 dimensions.

    MXNet's L2 ``norm`` reduces with a scaled sum of squares, so it is exact where squaring
    would overflow or underflow the weight's dtype.
    """
    if not axes:
        return nd.abs(w)
    if order == math.inf:
        return nd.max(nd.abs(w), axis=axes, keepdims=True)
    return nd.norm(w, ord=int(order), axis=axes, keepdims=True)


_ORDERS = {1: 1, 2: 2, math.inf: math.inf, "inf": math.inf}


def norm_order(owner: str, value: Any) -> float:
    """Validate a norm order: 1, 2 or infinity (``math.inf`` or ``"inf"``).

    Raises
    ------
    ConstraintArgumentError
        Naming ``owner``, the value and the orders accepted.
    """
    try:
        order = _ORDERS[value] if not isinstance(value, bool) else None
    except (KeyError, TypeError):
        order = None
    if order is None:
        raise ConstraintArgumentError(
            f"{owner} ord must be 1, 2 or inf (math.inf or 'inf'): got {value!r}.")
    return order


def order_config(order: float) -> Any:
    """The JSON form of a norm order: 1, 2 or ``"inf"``."""
    return "inf" if order == math.inf else int(order)


def widened(w: NDArray) -> NDArray:
    """``w`` in float64 (a copy; float64 ``w`` itself): what norms and rescales compute in."""
    return w if w.dtype == np.float64 else w.astype(np.float64)


def rescaled(w: NDArray, norms: NDArray, active: NDArray, target: Any, rate: float = 1.0) -> NDArray:
    """``w`` with each active slice moved to norm ``target`` (``rate`` of the way); others as is.

    One pass over ``w``: each slice is multiplied by ``rate * target / n + (1 - rate)``, computed
    on the small array of norms, and inactive slices by exactly 1.0, so they come back
    bit-for-bit. Active slices have ``n > 0``. In float64 (:func:`widened`) a finite slice's
    scale and result are finite.
    """
    ones = nd.ones_like(norms)
    safe = nd.where(active, norms, ones)
    scale = nd.where(active, rate * nd.broadcast_div(target if isinstance(target, NDArray) else
                                                     target * ones, safe) + (1.0 - rate), ones)
    return nd.broadcast_mul(w, scale)
