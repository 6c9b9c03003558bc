"""The constraint catalogue: projections that map a weight back into an allowed set.

Each constraint is a small object whose ``__init__`` validates and stores its arguments and whose
``__call__`` returns a new array; nothing here knows about Gluon parameters or trainers. The
arithmetic follows Keras 3 with one change: the scale is computed from the norm itself, never from
``eps + norm``, so a slice already inside the set is returned bit-for-bit unchanged, a second
application changes nothing, and an all-zero slice stays zero.

Only ``mxnet.ndarray`` is imported: this module also runs inside parameter-server processes, where
``mxnet.nd`` and ``mxnet.gluon`` do not exist yet.
"""

from __future__ import annotations

import json
import math
import sys
from numbers import Real
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from mxnet import ndarray as nd
from mxnet.ndarray import NDArray

from .errors import ConstraintArgumentError
from .reduction import Axis, Reduction, canonical_axis, normalize_axes, per_output_unit

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "UnitNorm", "NonNeg", "Compose"]

# A norm within this relative distance of a bound counts as on the bound. Rounding the rescaled
# entries and recomputing the norm moves it by a few units in the last place; without the band a
# slice on the boundary would be rescaled again on every step (the hidden decay Keras's epsilon
# causes) and a second projection would not equal the first. float16 weights are rescaled in
# float32 but stored in float16, so their band is relative to float16's precision.
BOUNDARY_RTOL = {np.dtype(np.float16): 2.0**-10, np.dtype(np.float32): 2.0**-18,
                  np.dtype(np.float64): 2.0**-44}


class Constraint:
    """Base class of all constraints: a projection of a weight onto an allowed set.

    ``c(w)`` returns a new array of the same kind (``mx.nd.NDArray`` or ``mx.np.ndarray``),
    shape, dtype and context as ``w`` and never modifies ``w``. float16 weights are computed in
    float32 and returned as float16. The base class itself is the identity.

    Subclasses implement :meth:`project`, which receives a classic NDArray in the computation
    dtype and the reduction axes already resolved, and :meth:`get_config` returning the
    constructor arguments. Register a subclass with :func:`gluon_constraints.register_constraint`
    so that :func:`~gluon_constraints.get` and :func:`~gluon_constraints.deserialize` find it.
    """

    #: Reduction axes in the weight's own layout; None means per output unit.
    axis: Axis = None
    #: Whether each entry's result depends on that entry alone, so the constraint can be applied
    #: to any piece of a flattened weight (what a parameter server holds of a big array).
    elementwise: bool = False

    def __call__(self, w: NDArray, reduction: Optional[Reduction] = None) -> NDArray:
        """Project ``w`` and return the result as a new array.

        Parameters
        ----------
        w : mx.nd.NDArray or mx.np.ndarray
            The weight. It is not modified.
        reduction : Reduction or None, default None
            Per-output-unit slices to use when the constraint's ``axis`` is None. None means the
            bare-array default: every axis but 0 (axis 0 of a 1-D array). Layers pass their
            fan-in reduction here.

        Returns
        -------
        mx.nd.NDArray or mx.np.ndarray
            The projected weight, same kind, shape, dtype and context as ``w``.
        """
        if not isinstance(w, NDArray):
            raise TypeError(
                f"{type(self).__name__} expects an mx.nd.NDArray or mx.np.ndarray: "
                f"got {type(w).__name__}."
            )
        numpy_mode = _is_numpy_array(w)
        legacy = w.as_nd_ndarray() if numpy_mode else w
        dtype = np.dtype(legacy.dtype)
        work = legacy.astype(np.float32) if dtype == np.float16 else legacy
        out = self.apply_to(work, reduction, boundary_rtol=BOUNDARY_RTOL.get(dtype, 0.0))
        if out.dtype != dtype:
            out = out.astype(dtype)
        return out.as_np_ndarray() if numpy_mode else out

    def apply_to(self, w: NDArray, reduction: Optional[Reduction] = None,
                 boundary_rtol: float = 0.0) -> NDArray:
        """Project a classic NDArray already in the computation dtype.

        This is the step :meth:`__call__` performs after converting kinds and dtypes; trainers
        call it on the float32 master copy of float16 weights.

        Parameters
        ----------
        w : mx.nd.NDArray
            The weight, float32 or float64. It is not modified.
        reduction : Reduction or None, default None
            As in :meth:`__call__`.
        boundary_rtol : float, default 0.0
            Relative distance from a bound within which a norm counts as on it.
        """
        resolved = self.reduction_for(w.shape, reduction)
        view = w.reshape(resolved.view_shape) if resolved.view_shape is not None else w
        out = self.project(view, resolved.axes, boundary_rtol)
        return out.reshape(w.shape) if resolved.view_shape is not None else out

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """Return the projection of ``w`` as a new array (the identity here).

        Parameters
        ----------
        w : mx.nd.NDArray
            Weight (or its reshaped view) in the computation dtype.
        axes : tuple of int
            Non-negative reduction axes of ``w``.
        boundary_rtol : float
            Relative distance from a bound within which a norm counts as on it.
        """
        return w.copy()

    def reduction_for(self, shape: Sequence[int], default: Optional[Reduction] = None,
                      name: Optional[str] = None) -> Reduction:
        """Resolve the reduction this constraint uses on an array of ``shape``.

        An explicit ``axis`` wins; otherwise ``default`` (a layer's fan-in), otherwise every axis
        but 0.

        Parameters
        ----------
        shape : sequence of int
            Shape of the weight.
        default : Reduction or None, default None
            Per-output-unit reduction supplied by the layer that owns the weight.
        name : str or None, default None
            Parameter name to quote in the error message.

        Raises
        ------
        ConstraintShapeError
            If the explicit ``axis`` does not fit ``shape``.
        """
        if self.axis is not None:
            where = f"{type(self).__name__} axis {self.axis!r}"
            if name is not None:
                where += f" for parameter '{name}'"
            return Reduction(normalize_axes(self.axis, shape, where))
        return default if default is not None else per_output_unit(shape)

    def validate(self, shape: Sequence[int], default: Optional[Reduction] = None,
                 name: Optional[str] = None) -> None:
        """Check that this constraint can be applied to a weight of ``shape``.

        Parameters
        ----------
        shape : sequence of int
            Shape of the weight.
        default : Reduction or None, default None
            Per-output-unit reduction supplied by the layer that owns the weight.
        name : str or None, default None
            Parameter name to quote in the error message.

        Raises
        ------
        ConstraintShapeError
            If the constraint's axes do not fit ``shape``.
        """
        self.reduction_for(shape, default, name)

    def get_config(self) -> Dict[str, Any]:
        """Return the constructor arguments as a JSON-serializable dict."""
        return {}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Constraint":
        """Build a constraint from the output of :meth:`get_config`.

        Parameters
        ----------
        config : dict
            Constructor arguments by name.
        """
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), json.dumps(self.get_config(), sort_keys=True)))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class MaxNorm(Constraint):
    """Bound the L2 norm of each output unit's incoming weights.

    Each slice ``w_j`` (the weights feeding output unit ``j``) becomes::

        w_j * max_value / max(||w_j||, max_value)

    so slices already inside the ball are returned unchanged. This is the max-norm
    regularization of Srivastava et al. (2014).

    Parameters
    ----------
    max_value : float, default 2.0
        Largest allowed L2 norm. Must be finite and > 0.
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit (every axis but 0
        of a bare array, the layer's fan-in axes when attached to a layer).

    Examples
    --------
    >>> gc.MaxNorm(2.0)(mx.nd.array([[3, 4], [0.3, 0.4]]))  # doctest: +SKIP
    [[1.2 1.6]
     [0.3 0.4]]
    """

    def __init__(self, max_value: float = 2.0, axis: Axis = None) -> None:
        self.max_value = _number("MaxNorm", "max_value", max_value)
        if self.max_value <= 0:
            raise ConstraintArgumentError(
                f"MaxNorm max_value must be > 0: got {max_value!r}.")
        self.axis = canonical_axis(axis, "MaxNorm")

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """``w * max_value / max(n, max_value)`` per slice, as a new array."""
        norms = _slice_norms(w, axes)
        outside = norms > self.max_value * (1.0 + boundary_rtol)
        scale = nd.where(outside, self.max_value / norms, nd.ones_like(norms))
        return nd.broadcast_mul(w, scale)

    def get_config(self) -> Dict[str, Any]:
        """``{"max_value": ..., "axis": ...}``."""
        return {"max_value": self.max_value, "axis": _axis_config(self.axis)}


class MinMaxNorm(Constraint):
    """Keep the L2 norm of each output unit's incoming weights between two bounds.

    With ``n = ||w_j||`` the norm of slice ``w_j``, the slice becomes::

        w_j * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / n

    ``rate=1.0`` projects strictly onto the band; a smaller rate moves each slice only part of
    the way per application. Slices inside the band and all-zero slices are unchanged.

    Parameters
    ----------
    min_value : float, default 0.0
        Smallest allowed norm. Must be finite and >= 0.
    max_value : float, default 1.0
        Largest allowed norm. Must be finite and >= min_value.
    rate : float, default 1.0
        Fraction of the way to the band moved per application. Must lie in [0, 1].
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit.
    """

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0,
                 axis: Axis = None) -> None:
        self.min_value = _number("MinMaxNorm", "min_value", min_value)
        self.max_value = _number("MinMaxNorm", "max_value", max_value)
        self.rate = _number("MinMaxNorm", "rate", rate)
        if self.min_value < 0:
            raise ConstraintArgumentError(
                f"MinMaxNorm min_value must be >= 0: got {min_value!r}.")
        if self.min_value > self.max_value:
            raise ConstraintArgumentError(
                f"MinMaxNorm min_value must be <= max_value: got min_value={min_value!r} "
                f"and max_value={max_value!r}.")
        if not 0.0 <= self.rate <= 1.0:
            raise ConstraintArgumentError(
                f"MinMaxNorm rate must lie in [0, 1]: got {rate!r}.")
        self.axis = canonical_axis(axis, "MinMaxNorm")

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """``w * (rate * clip(n, min_value, max_value) + (1 - rate) * n) / n`` per slice."""
        norms = _slice_norms(w, axes)
        ones = nd.ones_like(norms)
        above = norms > self.max_value * (1.0 + boundary_rtol)
        below = (norms < self.min_value * (1.0 - boundary_rtol)) * (norms > 0)
        # rate * clip(n)/n + (1 - rate): the same as the formula above, and finite for n = inf.
        ratio = nd.where(above, self.max_value / norms, nd.where(below, self.min_value / norms, ones))
        scale = nd.where(above + below, self.rate * ratio + (1.0 - self.rate), ones)
        return nd.broadcast_mul(w, scale)

    def get_config(self) -> Dict[str, Any]:
        """``{"min_value": ..., "max_value": ..., "rate": ..., "axis": ...}``."""
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": _axis_config(self.axis)}


class UnitNorm(Constraint):
    """Rescale each output unit's incoming weights to unit L2 norm.

    Each slice ``w_j`` becomes::

        w_j / ||w_j||

    An all-zero slice has no direction and stays zero.

    Parameters
    ----------
    axis : int, tuple of int or None, default None
        Reduction axes in the Gluon weight layout; None means per output unit.
    """

    def __init__(self, axis: Axis = None) -> None:
        self.axis = canonical_axis(axis, "UnitNorm")

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """``w / n`` per slice (zero slices stay zero)."""
        norms = _slice_norms(w, axes)
        off_sphere = (nd.abs(norms - 1.0) > boundary_rtol) * (norms > 0)
        scale = nd.where(off_sphere, 1.0 / norms, nd.ones_like(norms))
        return nd.broadcast_mul(w, scale)

    def get_config(self) -> Dict[str, Any]:
        """``{"axis": ...}``."""
        return {"axis": _axis_config(self.axis)}


class NonNeg(Constraint):
    """Set negative weights to zero.

    Elementwise::

        w * (w >= 0)
    """

    elementwise = True

    def project(self, w: NDArray, axes: Tuple[int, ...], boundary_rtol: float) -> NDArray:
        """``w * (w >= 0)`` elementwise."""
        return w * (w >= 0)


class Compose(Constraint):
    """Apply several constraints in order, left to right.

    ``Compose([a, b])(w) == b(a(w))``. Each member keeps its own axes; members whose ``axis`` is
    None use the reduction of the layer the composition is attached to.

    Parameters
    ----------
    constraints : sequence
        The members, each anything :func:`gluon_constraints.get` accepts except None.
        At least one is required.
    """

    def __init__(self, constraints: Iterable[Any]) -> None:
        from .registry import get  # registry builds Compose, so it is imported late

        if isinstance(constraints, (str, dict, Constraint)) or not isinstance(constraints, Iterable):
            raise TypeError(
                f"Compose expects a list or tuple of constraints: got {constraints!r}.")
        members = tuple(constraints)
        if not members:
            raise ConstraintArgumentError("Compose needs at least one constraint: got [].")
        if any(m is None for m in members):
            raise TypeError(f"Compose members cannot be None: got {list(members)!r}.")
        self.constraints = tuple(get(m) for m in members)
        self.elementwise = all(m.elementwise for m in self.constraints)

    def apply_to(self, w: NDArray, reduction: Optional[Reduction] = None,
                 boundary_rtol: float = 0.0) -> NDArray:
        """Apply every member in order."""
        for member in self.constraints:
            w = member.apply_to(w, reduction, boundary_rtol)
        return w

    def validate(self, shape: Sequence[int], default: Optional[Reduction] = None,
                 name: Optional[str] = None) -> None:
        """Validate every member."""
        for member in self.constraints:
            member.validate(shape, default, name)

    def get_config(self) -> Dict[str, Any]:
        """``{"constraints": [serialized member, ...]}``."""
        from .registry import serialize

        return {"constraints": [serialize(m) for m in self.constraints]}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Compose":
        return cls(config["constraints"])

    def __repr__(self) -> str:
        return f"Compose({list(self.constraints)!r})"


def _slice_norms(w: NDArray, axes: Tuple[int, ...]) -> NDArray:
    """L2 norm of every slice over ``axes``, kept as broadcastable size-1 dimensions."""
    if not axes:
        return nd.abs(w)
    return nd.sqrt(nd.sum(nd.square(w), axis=axes, keepdims=True))


def _is_numpy_array(w: NDArray) -> bool:
    """Whether ``w`` is an ``mx.np.ndarray`` (checked without importing ``mxnet.numpy``)."""
    numpy_module = sys.modules.get("mxnet.numpy")
    return numpy_module is not None and isinstance(w, numpy_module.ndarray)


def _number(owner: str, argument: str, value: object) -> float:
    """Validate a real, finite constructor argument and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        raise TypeError(f"{owner} {argument} must be a real number: got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ConstraintArgumentError(f"{owner} {argument} must be finite: got {value!r}.")
    return number


def _axis_config(axis: Axis) -> Any:
    """The JSON form of an axis: None, an int or a list of ints."""
    return list(axis) if isinstance(axis, tuple) else axis
