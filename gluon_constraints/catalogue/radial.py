"""``RadialConstraint``: each 2-D convolution kernel slice made the same on every square ring."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError, ConstraintShapeError
from .base import PER_UNIT, Constraint, axis_config
from .reduction import Axis, Reduction, canonical_axis, normalize_axes
from .registry import register_constraint

__all__ = ["RadialConstraint"]


@register_constraint(keras_alias=True)
class RadialConstraint(Constraint):
    """Make every ``(kh, kw)`` kernel slice of a 2-D convolution weight radially symmetric.

    The set is the kernels that are constant on each square ring around the centre (ring ``r``
    holds the cells at Chebyshev distance ``r`` from the centre, or from the central 2x2 block
    of an even-sized kernel). Each ring takes the value of one of its diagonal cells::

        odd k = 2c + 1:   ring r  <-  kernel[c + r, c + r]
        even k = 2c:      ring 0  <-  kernel[c - 1, c - 1];   ring r >= 1  <-  kernel[c + r, c + r]

    This is tf.keras's ``RadialConstraint`` (the same numbers for even kernel sizes). For odd
    sizes tf.keras reads each ring's value from the next ring inwards (the centre gets
    ``kernel[c - 1, c - 1]``), so applying it twice swaps values back and forth; here every ring
    keeps its own value, and a radially symmetric kernel comes back bit-for-bit unchanged.

    Parameters
    ----------
    axis : tuple of two ints or None, default None
        The kernel's two spatial axes in the Gluon weight layout. None means the owning layer's
        (``(2, 3)`` for ``NCHW`` Conv2D and Conv2DTranspose weights, ``(1, 2)`` for ``NHWC``),
        or the last two axes of a bare array.

    Examples
    --------
    >>> gc.RadialConstraint()(mx.nd.arange(9).reshape((1, 1, 3, 3)))  # doctest: +SKIP
    [[[[8. 8. 8.]
       [8. 4. 8.]
       [8. 8. 8.]]]]
    """

    locality = PER_UNIT

    def __init__(self, axis: Axis = None) -> None:
        # Its axis names the kernel axes, not reduction axes: kept apart from Constraint.axis.
        self.kernel_axis = canonical_axis(axis, "RadialConstraint")
        if self.kernel_axis is not None and (isinstance(self.kernel_axis, int) or len(self.kernel_axis) != 2):
            raise ConstraintArgumentError(
                f"RadialConstraint axis must name the kernel's two spatial axes, e.g. (2, 3) for "
                f"an NCHW Conv2D weight, or be None (the layer's): got {axis!r}.")
        self.layered = self.kernel_axis is None

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """Copy each ring's value to its cells, over the kernel axes."""
        rows, cols = self._kernel_axes(tuple(w.shape), reduction)
        size = w.shape[rows]
        order = [a for a in range(w.ndim) if a not in (rows, cols)] + [rows, cols]
        moved = nd.transpose(w, axes=order)
        flat = moved.reshape((-1, size * size))
        source = nd.array(_ring_sources(size), ctx=w.context, dtype=np.int64)
        out = nd.take(flat, source, axis=1).reshape(moved.shape)
        return nd.transpose(out, axes=tuple(int(i) for i in np.argsort(order)))

    def check_shape(self, shape: Tuple[int, ...], reduction: Reduction, name: Optional[str]) -> None:
        """Check that ``shape`` is a 4-D weight whose kernel axes are square."""
        self._kernel_axes(shape, reduction, name)

    def _kernel_axes(self, shape: Tuple[int, ...], reduction: Reduction,
                     name: Optional[str] = None) -> Tuple[int, int]:
        where = f" for parameter '{name}'" if name else ""
        if len(shape) != 4:
            raise ConstraintShapeError(
                f"RadialConstraint{where} needs a 2-D convolution weight (4 dimensions): got "
                f"shape {shape}.")
        if self.kernel_axis is not None:
            rows, cols = normalize_axes(self.kernel_axis, shape,
                                        f"RadialConstraint axis {self.kernel_axis!r}{where}")
        elif reduction.kernel_axes is not None:
            rows, cols = reduction.kernel_axes
        else:
            rows, cols = 2, 3
        if shape[rows] != shape[cols]:
            raise ConstraintShapeError(
                f"RadialConstraint{where} needs square kernels: got {shape[rows]}x{shape[cols]} "
                f"on axes ({rows}, {cols}) of shape {shape}.")
        return rows, cols

    def get_config(self) -> Dict[str, Any]:
        """``{"axis": ...}`` (the kernel axes)."""
        return {"axis": axis_config(self.kernel_axis)}


def _ring_sources(size: int) -> np.ndarray:
    """For each cell of a ``size x size`` kernel (row-major), the flat index it copies."""
    centre = size // 2
    index = np.arange(size)
    if size % 2:
        ring = np.maximum.outer(np.abs(index - centre), np.abs(index - centre))
        diagonal = centre + ring
    else:
        distance = np.abs(index - (size - 1) / 2.0) - 0.5
        ring = np.maximum.outer(distance, distance).astype(np.int64)
        diagonal = np.where(ring == 0, centre - 1, centre + ring)
    return (diagonal * size + diagonal).ravel()
