"""Which axes a norm constraint reduces over, and the view of the weight it reduces on.

A :class:`Reduction` describes the slices of a weight whose norms a constraint bounds: the weight
is viewed with ``view_shape`` (``None`` keeps its own shape) and each slice is the set of entries
that share an index on every axis *not* in ``axes``. Layers whose output units are not a plain
axis of the weight (grouped transposed convolutions) use a reshaped view.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import ConstraintShapeError, ConstraintTypeError

__all__ = ["Axis", "Reduction", "canonical_axis", "normalize_axes", "per_output_unit", "viewed", "unit_rows"]

Axis = Union[None, int, Tuple[int, ...]]


class Reduction(NamedTuple):
    """Reduction axes of a norm, on an optional reshaped view of the weight.

    Parameters
    ----------
    axes : tuple of int
        Non-negative axes of the (viewed) weight that each norm reduces over.
    view_shape : tuple of int or None, default None
        Shape to view the weight with before reducing; None means the weight's own shape.
    kernel_axes : tuple of int or None, default None
        A convolution weight's spatial (kernel) axes, in the weight's own layout; None where the
        layer has none. Constraints on kernel slices (``RadialConstraint``) read them.
    """

    axes: Tuple[int, ...]
    view_shape: Optional[Tuple[int, ...]] = None
    kernel_axes: Optional[Tuple[int, ...]] = None


def canonical_axis(axis: object, owner: str) -> Axis:
    """Validate a constructor's ``axis`` argument and return it as None, an int or a tuple.

    Parameters
    ----------
    axis : None, int or sequence of int
        The argument as given (a list, as read back from JSON, becomes a tuple).
    owner : str
        Name of the constraint class, for the error message.

    Raises
    ------
    ConstraintTypeError
        If ``axis`` is not None, an int or a sequence of ints.
    """
    if axis is None:
        return None
    if isinstance(axis, (list, tuple)):
        return tuple(_as_int(a, owner, axis) for a in axis)
    return _as_int(axis, owner, axis)


def _as_int(value: object, owner: str, whole: object) -> int:
    message = (f"{owner} axis must be None, an int or a tuple of ints (axes of the weight in "
               f"Gluon's layout, e.g. axis=(1, 2)): got {whole!r}.")
    if isinstance(value, bool):
        raise ConstraintTypeError(message)
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConstraintTypeError(message) from None


def normalize_axes(axis: Union[int, Sequence[int]], shape: Sequence[int], where: str) -> Tuple[int, ...]:
    """Turn an explicit axis or axes into sorted non-negative axes of ``shape``.

    Parameters
    ----------
    axis : int or sequence of int
        Axes, negative ones counting from the end.
    shape : sequence of int
        Shape of the array the axes refer to.
    where : str
        Description of the constraint and array for the error message, for example
        ``"MaxNorm axis (2,) for parameter 'dense0_weight'"``.

    Raises
    ------
    ConstraintShapeError
        If an axis lies outside ``[-ndim, ndim - 1]`` or two axes name the same dimension.
    """
    ndim = len(shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if any(not -ndim <= a < ndim for a in axes):
        raise ConstraintShapeError(
            f"{where} is out of range for shape {tuple(shape)}: "
            f"axes must lie in [{-ndim}, {ndim - 1}]."
        )
    positive = tuple(sorted(a % ndim for a in axes))
    if len(set(positive)) != len(positive):
        raise ConstraintShapeError(
            f"{where} names the same dimension twice for shape {tuple(shape)}."
        )
    return positive


def per_output_unit(shape: Sequence[int]) -> Reduction:
    """The default reduction of a bare array: every axis but 0, or axis 0 of a 1-D array.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array.
    """
    ndim = len(shape)
    if ndim <= 1:
        return Reduction(tuple(range(ndim)))
    return Reduction(tuple(range(1, ndim)))


def viewed(w: Any, reduction: Reduction) -> Any:
    """``w`` viewed with ``reduction.view_shape`` (``w`` itself where that is None): the array
    whose ``reduction.axes`` each slice reduces over. Reshape a result back with ``w.shape``."""
    return w.reshape(reduction.view_shape) if reduction.view_shape is not None else w


def unit_rows(w: Any, axes: Tuple[int, ...]) -> Tuple[Any, Callable[[Any], Any]]:
    """``w`` as a 2-D (units, fan-in) matrix, one row per slice over ``axes``, and the map back.

    The kept axes come first and the reduced ones last (a transpose only where they are not
    already in that order), so a convolution filter bank (out, in, kh, kw) over (1, 2, 3) is
    the free reshape (out, in * kh * kw), and the returned function maps an array of the
    matrix's shape back to ``w``'s layout.
    """
    kept = [a for a in range(w.ndim) if a not in axes]
    order = kept + list(axes)
    moved = w.transpose(order) if order != list(range(w.ndim)) else w
    moved_shape = moved.shape
    rows = moved.reshape((math.prod(w.shape[a] for a in kept), -1))
    inverse = sorted(range(len(order)), key=order.__getitem__)

    def restore(out: Any) -> Any:
        back = out.reshape(moved_shape)
        return back.transpose(inverse) if inverse != list(range(w.ndim)) else back

    return rows, restore
