"""Kernel lowerings: which constraints the fused row kernel computes, and with what parameters.

A family whose projection the kernel can compute registers, next to its class, a function from
an instance to its :class:`RowLowering` with :func:`lowers_to_rows`. The registration is for
that exact class: a subclass computes whatever it overrides, so it reaches the kernel only by
registering its own lowering. Everything else takes the family's stock-operator projection.
This is a declaration about the math, not a use of the kernel: the catalogue imports no kernel.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, TypeVar

from ..errors import ConstraintTypeError

__all__ = ["RowLowering", "lowers_to_rows", "row_lowering"]


class RowLowering(NamedTuple):
    """What the fused row kernel computes for one constraint on each unit (an output unit's
    slice).

    ``mode`` is ``"norm"`` (rescale a unit whose ``ord``-norm ``n`` lies outside ``[lo, hi]`` by
    ``rate * t / n + (1 - rate)``, ``t`` the violated bound), ``"nonneg"`` (``w * (w >= 0)``
    elementwise) or ``"clip"`` (``min(max(w, lo), hi)`` elementwise).
    """

    mode: str
    lo: float = 0.0
    hi: float = 0.0
    rate: float = 1.0
    ord: float = 2.0


F = TypeVar("F", bound=Callable[[Any], RowLowering])

_LOWERINGS: Dict[type, Callable[[Any], RowLowering]] = {}


def lowers_to_rows(family: type) -> Callable[[F], F]:
    """Register the decorated function ``constraint -> RowLowering`` as the kernel lowering of
    exactly the class ``family``.

    Examples
    --------
    >>> @lowers_to_rows(MaxNorm)                                           # doctest: +SKIP
    ... def _max_norm_rows(c):
    ...     return RowLowering("norm", 0.0, c.max_value, 1.0, c.ord)

    Raises
    ------
    ConstraintTypeError
        If ``family`` is not a class.
    """
    if not isinstance(family, type):
        raise ConstraintTypeError(f"lowers_to_rows expects a constraint class: got {family!r}.")

    def register(lowering: F) -> F:
        _LOWERINGS[family] = lowering
        return lowering

    return register


def row_lowering(constraint: Any) -> Optional[RowLowering]:
    """The kernel lowering registered for ``constraint``'s exact class, or None (stock operators)."""
    lowering = _LOWERINGS.get(type(constraint))
    return None if lowering is None else lowering(constraint)
