"""Elementwise constraints: each entry's result depends on that entry alone."""

from __future__ import annotations

from typing import Optional, Tuple

from mxnet.ndarray import NDArray

from .base import ELEMENTWISE, Constraint, RowLowering

__all__ = ["NonNeg"]


class NonNeg(Constraint):
    """Set negative weights to zero.

    The set is ``{w : w >= 0}``; elementwise::

        w * (w >= 0)
    """

    locality = ELEMENTWISE
    convex = True

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """``w * (w >= 0)`` elementwise."""
        return w * (w >= 0)

    def row_lowering(self) -> Optional[RowLowering]:
        """The kernel's elementwise ``nonneg`` mode."""
        return RowLowering("nonneg")
