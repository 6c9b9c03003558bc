"""Whether an array lies in a constraint's set, to float rounding (a check; it synchronises)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from mxnet.ndarray import NDArray

from .host import host_copy
from .base import Constraint
from .reduction import Reduction

__all__ = ["violation"]

# A projected array may differ from its projection by float rounding only.
_RTOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def violation(constraint: Constraint, array: NDArray, reduction: Optional[Reduction] = None) -> Optional[str]:
    """Describe how ``array`` violates ``constraint``, or return None if it satisfies it.

    An array violates its constraint if it holds a NaN or an infinity, or if projecting it
    would change it by more than float rounding (relative to its largest entry: 2e-3 for
    float16, 1e-5 for float32, 1e-12 for float64). Reads the array on the host.

    Parameters
    ----------
    constraint : Constraint
        The constraint.
    array : mx.nd.NDArray
        The weight.
    reduction : Reduction or None, default None
        The per-output-unit reduction of the layer that owns the weight.
    """
    values = host_copy(array).astype(np.float64)
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        return f"{bad} of {values.size} entries are NaN or infinite"
    target = constraint(array, reduction).asnumpy().astype(np.float64)
    scale = max(float(np.abs(values).max(initial=0.0)), float(np.finfo(np.float64).tiny))
    change = float(np.abs(target - values).max(initial=0.0)) / scale
    if change > _RTOL.get(np.dtype(array.dtype), 1e-5):
        return f"projection would change it by {change:.3g} relative to its largest entry"
    return None
