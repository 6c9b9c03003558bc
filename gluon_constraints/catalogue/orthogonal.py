"""Orthogonality: each weight matrix onto the Stiefel manifold, exactly or by Parseval steps."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import WHOLE, Constraint, real_argument
from .reduction import Reduction, unit_rows, viewed
from .registry import register_constraint

__all__ = ["Orthogonal"]


@register_constraint
class Orthogonal(Constraint):
    """Keep each weight matrix orthonormal: rows when it is wide, columns when it is tall.

    The weight is viewed as the matrix ``W`` of shape (units, fan-in) given by the layer's
    layout (a convolution filter bank (out, in, kh, kw) as (out, in * kh * kw)). The set is the
    Stiefel manifold ``{W : W W^T = I}`` when ``units <= fan-in``, ``{W : W^T W = I}`` otherwise.

    - ``beta=None``: the exact retraction, the polar factor ``U V^T`` of ``W = U S V^T`` (its
      nearest point of the set in the Frobenius norm), computed by an SVD in float64.
    - ``beta`` a float: one step of Parseval networks (Cisse et al. 2017),
      ``W <- (1 + beta) W - beta W W^T W``, which only moves toward the set (cheap, no SVD;
      not a projection, so a second application moves the weight again).

    A matrix already orthonormal (``max |W W^T - I| <= 4 * band``, computed in float64; band
    2**-18 for float32) is returned unchanged.

    Parameters
    ----------
    beta : float or None, default None
        None for the exact retraction, or the Parseval step size: finite, in (0, 1].

    Examples
    --------
    >>> w = gc.Orthogonal()(mx.nd.array([[2.0, 0.0], [0.0, 0.5]]))
    >>> w.asnumpy()
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """

    locality = WHOLE

    def __init__(self, beta: Optional[float] = None) -> None:
        self.beta = None if beta is None else real_argument("Orthogonal", "beta", beta)
        if self.beta is not None and not 0.0 < self.beta <= 1.0:
            raise ConstraintArgumentError(f"Orthogonal beta must be None or lie in (0, 1]: got {beta!r}.")

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """The polar factor (``beta=None``) or one Parseval step of the (units, fan-in) matrix."""
        rows, restore = unit_rows(viewed(w, reduction), reduction.axes)
        exact = rows.astype(np.float64)
        wide = rows.shape[0] <= rows.shape[1]
        gram = nd.dot(exact, exact, transpose_b=wide, transpose_a=not wide)
        identity = nd.eye(gram.shape[0], ctx=gram.context, dtype=np.float64)
        inside = nd.max(nd.abs(gram - identity)) <= 4.0 * boundary_rtol
        if self.beta is None:
            moved = _polar_factor(exact if wide else exact.T)
            moved = moved if wide else moved.T
        else:
            moved = (1.0 + self.beta) * exact - self.beta * nd.dot(gram, exact) if wide \
                else (1.0 + self.beta) * exact - self.beta * nd.dot(exact, gram)
        kept = nd.broadcast_like(inside.reshape((1, 1)), rows)
        return restore(nd.where(kept, rows, moved.astype(rows.dtype))).reshape(w.shape)

    def get_config(self) -> Dict[str, Any]:
        """``{"beta": ...}``."""
        return {"beta": self.beta}


def _polar_factor(wide: NDArray) -> NDArray:
    """``U V^T`` for the SVD ``U S V^T`` of a float64 matrix with rows <= columns."""
    u, _, v = nd.np.linalg.svd(wide.as_np_ndarray())
    return nd.dot(u.as_nd_ndarray(), v.as_nd_ndarray())
