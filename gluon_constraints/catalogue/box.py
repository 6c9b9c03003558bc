"""Box constraints: elementwise lower and upper bounds."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import ELEMENTWISE, Constraint, real_argument
from .lowering import RowLowering, lowers_to_rows
from .reduction import Reduction
from .registry import register_constraint

__all__ = ["Clip"]


@register_constraint
class Clip(Constraint):
    """Keep every weight between two bounds (a box).

    The set is ``{w : min_value <= w <= max_value}`` entry by entry; elementwise::

        min(max(w, min_value), max_value)

    the nearest point of the box, so entries inside it come back unchanged. It suits biases and
    BatchNorm's gamma (``Clip(0.1, 10.0)``); :class:`NonNeg` computes the values of
    ``Clip(0.0, None)``.

    Parameters
    ----------
    min_value : float or None
        Lower bound, or None for no lower bound: 0 or a number whose magnitude is a normal
        float32 number (weights are computed in float32 at least).
    max_value : float or None
        Upper bound (>= min_value, same range), or None for no upper bound.

    Examples
    --------
    >>> gc.Clip(-1.0, 0.5)(mx.nd.array([[-3.0, 0.2, 0.7]])).asnumpy()
    array([[-1. ,  0.2,  0.5]], dtype=float32)
    """

    locality = ELEMENTWISE
    convex = True
    layered = False

    def __init__(self, min_value: Optional[float], max_value: Optional[float]) -> None:
        self.min_value = _box_bound("min_value", min_value)
        self.max_value = _box_bound("max_value", max_value)
        if self.min_value is None and self.max_value is None:
            raise ConstraintArgumentError(
                "Clip needs min_value or max_value: got None for both (that is no constraint).")
        if self.min_value is not None and self.max_value is not None \
                and self.min_value > self.max_value:
            raise ConstraintArgumentError(
                f"Clip min_value must be <= max_value: got min_value={min_value!r} and "
                f"max_value={max_value!r}.")

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``min(max(w, min_value), max_value)`` elementwise."""
        if self.min_value is not None:
            w = nd.maximum(w, self.min_value)
        if self.max_value is not None:
            w = nd.minimum(w, self.max_value)
        return w

    def get_config(self) -> Dict[str, Any]:
        """``{"min_value": ..., "max_value": ...}``."""
        return {"min_value": self.min_value, "max_value": self.max_value}


@lowers_to_rows(Clip)
def _clip_rows(c: Clip) -> RowLowering:
    """The kernel's elementwise ``clip`` mode (an open side as an infinite bound)."""
    return RowLowering("clip", -math.inf if c.min_value is None else c.min_value,
                       math.inf if c.max_value is None else c.max_value)


_FLOAT32 = np.finfo(np.float32)


def _box_bound(argument: str, value: Any) -> Optional[float]:
    """None, or a real bound that is 0 or of normal float32 magnitude.

    Raises
    ------
    ConstraintArgumentError
        Naming the argument, the value and the allowed range.
    """
    if value is None:
        return None
    number = real_argument("Clip", argument, value)
    if number != 0.0 and not float(_FLOAT32.tiny) <= abs(number) <= float(_FLOAT32.max):
        raise ConstraintArgumentError(
            f"Clip {argument} must be 0 or have a magnitude in float32's normal range "
            f"[{float(_FLOAT32.tiny):.8g}, {float(_FLOAT32.max):.8g}] (weights are computed in "
            f"float32 at least): got {value!r}.")
    return number
