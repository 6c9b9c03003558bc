"""``Function``: a plain function ``w -> w`` used as a constraint, as Keras's ``get`` allows."""

from __future__ import annotations

from typing import Any, Callable, Dict

from mxnet.ndarray import NDArray

from ..errors import ConstraintShapeError, ConstraintTypeError
from .base import WHOLE, Constraint
from .reduction import Reduction

__all__ = ["Function"]


class Function(Constraint):
    """A Python function ``fn(w) -> w`` used as a constraint.

    ``fn`` receives the whole weight, a classic ``mx.nd.NDArray`` in Gluon's layout and the
    computation dtype (float32 for float16 weights), and returns the constrained weight with the
    same shape. It is treated as a whole-weight constraint: it never gets a piece of a weight,
    and no layer axes are applied. It is not serializable, so it cannot go into a model's
    constraints config; on parameter servers it runs only if ``fn`` is a module-level function
    the servers can import (the trainer refuses lambdas and functions defined in ``__main__``
    there, before the first step). Prefer a :class:`Constraint` subclass for anything you keep.

    Parameters
    ----------
    fn : callable
        The function.
    """

    locality = WHOLE
    layered = False

    def __init__(self, fn: Callable[[NDArray], NDArray]) -> None:
        if not callable(fn) or isinstance(fn, Constraint):
            raise ConstraintTypeError(
                f"Function expects a plain function w -> w: got {fn!r} of type {type(fn).__name__}. "
                f"A Constraint is used as it is (gc.get returns it).")
        self.fn = fn

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``fn(w)`` on the whole weight, checked to be an array of ``w``'s shape."""
        out = self.fn(w)
        if not isinstance(out, NDArray) or tuple(out.shape) != tuple(w.shape):
            got = f"shape {tuple(out.shape)}" if isinstance(out, NDArray) else repr(type(out).__name__)
            raise ConstraintShapeError(
                f"{self!r} returned {got} for a weight of shape {tuple(w.shape)}: a constraint "
                f"function must return an NDArray of the same shape.")
        return out

    def get_config(self) -> Dict[str, Any]:
        """Refused: a Python function cannot be serialized.

        Raises
        ------
        ConstraintTypeError
            Always; write a registered :class:`Constraint` subclass instead.
        """
        raise ConstraintTypeError(
            f"{self!r} wraps a Python function, which cannot be serialized: write a "
            f"gc.Constraint subclass with get_config and @gc.register_constraint instead.")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Function) and other.fn is self.fn

    def __hash__(self) -> int:
        return hash((Function, id(self.fn)))

    def __repr__(self) -> str:
        return f"Function({getattr(self.fn, '__qualname__', repr(self.fn))})"
