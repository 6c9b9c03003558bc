"""Spectral norm: bound the largest singular value of each weight matrix (power iteration)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import WHOLE, Constraint, bound_argument
from .reduction import Reduction, unit_rows, viewed
from .registry import register_constraint

__all__ = ["SpectralNorm"]


@register_constraint
class SpectralNorm(Constraint):
    """Bound the spectral norm (largest singular value) of each weight matrix.

    The weight is viewed as the matrix ``W`` of shape (units, fan-in) given by the layer's
    layout (a convolution filter bank (out, in, kh, kw) as (out, in * kh * kw), as in Miyato
    et al. 2018; this is not the convolution's exact operator norm). The set is
    ``{W : sigma_max(W) <= max_value}``, and a weight outside it becomes::

        W * max_value / sigma,   sigma = u^T W v

    where ``u`` and ``v`` come from power iteration, ``v <- W^T u / ||W^T u||``,
    ``u <- W v / ||W v||``, in float64. ``sigma`` approaches ``sigma_max(W)`` from below, so
    right after a projection the true spectral norm can exceed ``max_value`` by the estimate's
    error. A weight whose estimate is within the band (2**-18 for float32) of ``max_value`` or
    below is returned unchanged.

    Called on its own (``c(w)``, :func:`~gluon_constraints.apply_constraints`) it starts from
    a fixed pseudo-random ``u`` and runs ``initial_iterations`` iterations, so the result is
    reproducible and a second call changes nothing. In training the trainer keeps each
    parameter's ``u`` (one per device copy) and runs ``power_iterations`` per step from the
    last one, as Miyato et al. do: the estimate keeps converging across steps. These vectors
    are part of the optimizer's state: ``Trainer.save_states`` writes them and ``load_states``
    restores them bitwise, so a resumed run computes what an uninterrupted one would.

    Parameters
    ----------
    max_value : float, default 1.0
        The largest allowed singular value: finite, > 0 and a normal float32 number.
    power_iterations : int, default 1
        Iterations per training step, continuing from the previous step's vector.
    initial_iterations : int, default 20
        Iterations from the fixed starting vector (standalone calls, the first step).

    Examples
    --------
    >>> w = gc.SpectralNorm(1.0)(mx.nd.array([[3.0, 0.0], [0.0, 0.5]]))
    >>> w.asnumpy()
    array([[1.        , 0.        ],
           [0.        , 0.16666667]], dtype=float32)
    """

    locality = WHOLE
    #: The trainer keeps a power-iteration vector per parameter and device copy.
    stateful = True

    def __init__(self, max_value: float = 1.0, power_iterations: int = 1,
                 initial_iterations: int = 20) -> None:
        self.max_value = bound_argument("SpectralNorm", "max_value", max_value)
        self.power_iterations = _count("power_iterations", power_iterations)
        self.initial_iterations = _count("initial_iterations", initial_iterations)

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``W * max_value / sigma`` if ``sigma`` exceeds the bound, from the fixed vector."""
        return self.continue_from(w, reduction, boundary_rtol, None)[0]

    def continue_from(self, w: NDArray, reduction: Reduction, boundary_rtol: float,
                      state: Optional[NDArray]) -> Tuple[NDArray, NDArray]:
        """Project ``w`` continuing power iteration from ``state``; return (result, new state).

        ``state`` is the last vector ``u`` (float64, one entry per unit), or None to start from
        the fixed vector with ``initial_iterations``; then ``power_iterations`` iterations run.
        Other arguments as in :meth:`~gluon_constraints.Constraint.project`.
        """
        rows, restore = unit_rows(viewed(w, reduction), reduction.axes)
        if state is None:
            state, iterations = self.initial_vector(rows.shape[0], rows.context), self.initial_iterations
        else:
            state, iterations = state.as_in_context(rows.context), self.power_iterations
        out, u = self._rescaled(rows, state, iterations, boundary_rtol)
        return restore(out).reshape(w.shape), u

    @staticmethod
    def initial_vector(units: int, ctx: Any) -> NDArray:
        """The fixed starting vector ``u``: unit-norm float64 draws of a seeded generator."""
        u = np.random.default_rng(units).standard_normal(units)
        return nd.array(u / np.linalg.norm(u), ctx=ctx, dtype=np.float64)

    def _rescaled(self, rows: NDArray, u: NDArray, iterations: int,
                  boundary_rtol: float) -> Tuple[NDArray, NDArray]:
        """(rows rescaled if the estimate exceeds the bound, the last ``u``)."""
        exact = rows.astype(np.float64)
        u = u.reshape((-1, 1))
        for _ in range(iterations):
            v = _normalized(nd.dot(exact, u, transpose_a=True))
            u = _normalized(nd.dot(exact, v))
        sigma = nd.sum(u * nd.dot(exact, v))
        above = sigma > self.max_value * (1.0 + boundary_rtol)
        scale = nd.where(above, self.max_value / nd.maximum(sigma, 1e-300), nd.ones_like(sigma))
        return nd.broadcast_mul(rows, scale.astype(rows.dtype).reshape((1, 1))), u.reshape((-1,))

    def get_config(self) -> Dict[str, Any]:
        """``{"max_value": ..., "power_iterations": ..., "initial_iterations": ...}``."""
        return {"max_value": self.max_value, "power_iterations": self.power_iterations,
                "initial_iterations": self.initial_iterations}


def _normalized(x: NDArray) -> NDArray:
    """``x / ||x||`` (a zero vector stays zero)."""
    return nd.broadcast_div(x, nd.maximum(nd.norm(x), 1e-300))


def _count(argument: str, value: Any) -> int:
    """A positive int argument of SpectralNorm."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConstraintArgumentError(
            f"SpectralNorm {argument} must be an int >= 1: got {value!r}.")
    return int(value)
