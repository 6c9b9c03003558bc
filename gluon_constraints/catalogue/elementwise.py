"""Elementwise constraints: each entry's result depends on that entry alone."""

from __future__ import annotations

from mxnet.ndarray import NDArray

from .base import ELEMENTWISE, Constraint
from .lowering import RowLowering, lowers_to_rows
from .reduction import Reduction
from .registry import register_constraint

__all__ = ["NonNeg"]


@register_constraint(keras_alias=True)
class NonNeg(Constraint):
    """Set negative weights to zero.

    The set is ``{w : w >= 0}``; elementwise::

        w * (w >= 0)
    """

    locality = ELEMENTWISE
    convex = True
    layered = False

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``w * (w >= 0)`` elementwise."""
        return w * (w >= 0)


@lowers_to_rows(NonNeg)
def _non_neg_rows(c: NonNeg) -> RowLowering:
    """The kernel's elementwise ``nonneg`` mode."""
    return RowLowering("nonneg")
