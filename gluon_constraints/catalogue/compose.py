"""``Compose``: several constraints applied in order on one parameter."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import ELEMENTWISE, PER_UNIT, WHOLE, Constraint
from .reduction import Reduction

__all__ = ["Compose"]

_WIDTH = {ELEMENTWISE: 0, PER_UNIT: 1, WHOLE: 2}


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

    def __init__(self, constraints: Iterable[Any]) -> None:
        if isinstance(constraints, (str, dict, Constraint)) or not isinstance(constraints, Iterable):
            raise TypeError(
                f"Compose expects a list or tuple of constraints: got {constraints!r}.")
        members = tuple(constraints)
        if not members:
            raise ConstraintArgumentError("Compose needs at least one constraint: got [].")
        if any(m is None for m in members):
            raise TypeError(f"Compose members cannot be None: got {list(members)!r}.")
        self.constraints = tuple(_resolve(m) for m in members)
        stateful = [m for m in self.constraints if getattr(m, "stateful", False) or hasattr(m, "at")]
        if stateful:
            raise ConstraintArgumentError(
                f"Compose cannot hold {stateful[0]!r}: it changes between training steps (a "
                f"power-iteration vector or a schedule), which a composition would not carry. "
                f"Attach it alone, or put the other constraints on another parameter.")
        self.locality = max((m.locality for m in self.constraints), key=_WIDTH.__getitem__)

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

    def uses_layer_layout(self) -> bool:
        """Whether any member uses the owning layer's fan-in axes."""
        return any(m.uses_layer_layout() for m in self.constraints)

    def get_config(self) -> Dict[str, Any]:
        """``{"constraints": [serialized member, ...]}``."""
        from .registry import serialize  # the registry imports this module

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
        return super().from_config(config)  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"Compose({list(self.constraints)!r})"


def _resolve(member: Any) -> Constraint:
    get: Callable[[Any], Constraint]
    from .registry import get  # the registry imports this module

    return get(member)
