"""``Compose``: several constraints applied in order on one parameter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Dict, Optional, Tuple

from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError, ConstraintTypeError
from .base import ELEMENTWISE, PER_UNIT, WHOLE, Constraint
from .reduction import Reduction
from .registry import get, register_constraint, serialize

__all__ = ["Compose"]

_WIDTH = {ELEMENTWISE: 0, PER_UNIT: 1, WHOLE: 2}


@register_constraint
class Compose(Constraint):
    """Apply several constraints in order, left to right.

    ``Compose([a, b])(w) == b(a(w))``. Each member keeps its own axes; members whose ``axis`` is
    None use the reduction of the layer the composition is attached to. The result lies in the
    last member's set; it lies in every member's set when the later members keep the earlier
    sets (``Compose([NonNeg(), MaxNorm(3)])``: rescaling keeps signs).

    Parameters
    ----------
    constraints : sequence
        The members, each anything :func:`gluon_constraints.get` accepts except None.
        At least one is required.
    """

    def __init__(self, constraints: Iterable) -> None:
        if isinstance(constraints, (str, dict, Constraint)) or not isinstance(constraints, Iterable):
            raise ConstraintTypeError(
                f"Compose expects a list or tuple of constraints, e.g. Compose([gc.NonNeg(), "
                f"gc.MaxNorm(3)]): got {constraints!r}.")
        members = tuple(constraints)
        if not members:
            raise ConstraintArgumentError("Compose needs at least one constraint: got [].")
        if any(m is None for m in members):
            raise ConstraintTypeError(
                f"Compose members cannot be None: got {list(members)!r}. Leave the member out.")
        built = [get(m) for m in members]
        self.constraints: Tuple[Constraint, ...] = tuple(m for m in built if m is not None)  # none is None
        changing = [m for m in self.constraints if m.stateful or m.scheduled]
        if changing:
            raise ConstraintArgumentError(
                f"Compose cannot hold {changing[0]!r}: it changes between training steps (a "
                f"power-iteration vector or a schedule), which a composition would not carry. "
                f"Attach it alone, or put the other constraints on another parameter.")
        self.locality = max((m.locality for m in self.constraints), key=_WIDTH.__getitem__)
        self.layered = any(m.uses_layer_layout() for m in self.constraints)

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """Every member's projection in order, each with its own axes (the layer's, ``reduction``,
        where its ``axis`` is None)."""
        for member in self.constraints:
            w = member.project(w, member.reduction_for(w.shape, reduction), boundary_rtol)
        return w

    def check_shape(self, shape: Tuple[int, ...], reduction: Reduction, name: Optional[str]) -> None:
        """Validate every member."""
        for member in self.constraints:
            member.validate(shape, reduction, name)

    def get_config(self) -> Dict[str, Any]:
        """``{"constraints": [serialized member, ...]}``."""
        return {"constraints": [serialize(m) for m in self.constraints]}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Compose":
        """Build from ``{"constraints": [serialized member, ...]}``.

        Raises
        ------
        ConstraintArgumentError
            If the config has no ``constraints`` list.
        """
        if not isinstance(config, dict) or not isinstance(config.get("constraints"), list):
            raise ConstraintArgumentError(
                f"Compose config must be {{'constraints': [serialized member, ...]}}: "
                f"got {config!r}.")
        return super().from_config(config)

    def __repr__(self) -> str:
        return f"Compose({list(self.constraints)!r})"
