"""``Scheduled``: a constraint whose bound follows the update count (a warm-up ramp)."""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, Optional, Tuple, Type

from mxnet.ndarray import NDArray

from ..errors import ConstraintArgumentError
from .base import Constraint, real_argument
from .compose import Compose
from .reduction import Reduction
from .registry import deserialize, register_constraint, serialize

__all__ = ["Scheduled"]


@register_constraint
class Scheduled(Constraint):
    """A constraint whose numeric argument moves linearly from ``start`` to its own value.

    At update ``t`` (1 for the first step of each parameter) the trainer projects with
    ``constraint`` rebuilt with::

        argument = start + (value - start) * min(t, steps) / steps

    where ``value`` is ``constraint``'s own value of ``argument``: after ``steps`` updates it is
    ``constraint`` itself. ``Scheduled(gc.MaxNorm(3.0), start=10.0, steps=1000)`` is a warm-up
    that tightens the bound from 10 to 3 over the first 1000 updates. The update count is the
    optimizer's own, which ``save_states`` writes and ``load_states`` restores, so a resumed run
    projects with the bound an uninterrupted one would. Called outside a trainer (``c(w)``,
    ``apply_constraints``, ``verify_constraints`` without a count) it is ``constraint``.

    Parameters
    ----------
    constraint : Constraint
        The constraint at the end of the ramp (any registered, serializable one but a
        ``Compose`` or another ``Scheduled``).
    start : float
        The argument's value at update 0; ``constraint`` rebuilt with it must be valid.
    steps : int
        Length of the ramp in updates, >= 1.
    argument : str, default "max_value"
        Which constructor argument the schedule moves: one whose value is a float (a bound, a
        radius, a rate), such as ``"radius"`` for ``Simplex`` and ``L1Ball`` or ``"min_value"``
        and ``"max_value"`` for ``MinMaxNorm`` and ``Clip``. Integer and categorical arguments
        (``ord``, ``power_iterations``) cannot move linearly and are refused.

    Raises
    ------
    ConstraintArgumentError
        If ``constraint`` is not one constraint, ``argument`` is not one of its float
        arguments, ``steps`` is not an int >= 1, or the constraint rebuilt with ``start`` is
        not valid (its own error).
    ConstraintTypeError
        If ``start`` is not a real number.
    """

    def __init__(self, constraint: Constraint, start: float, steps: int,
                 argument: str = "max_value") -> None:
        if not isinstance(constraint, Constraint) or isinstance(constraint, (Compose, Scheduled)):
            raise ConstraintArgumentError(
                f"Scheduled wraps one constraint (not a Compose or a Scheduled): got {constraint!r}.")
        name = type(constraint).__name__
        config = constraint.get_config()
        schedulable = sorted(k for k, v in config.items() if isinstance(v, float))
        if argument not in schedulable:
            raise ConstraintArgumentError(
                f"Scheduled cannot move argument {argument!r} of {name}: a schedule moves a float "
                f"argument linearly, and {name}'s are {schedulable or '(none)'}. Got "
                f"{name}({', '.join(f'{k}={v!r}' for k, v in config.items())}).")
        start = real_argument(f"Scheduled({name})", "start", start)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConstraintArgumentError(f"Scheduled steps must be an int >= 1: got {steps!r}.")
        _rebuilt(type(constraint), json.dumps({**config, argument: start}, sort_keys=True))  # validates start
        self.constraint, self.start, self.steps, self.argument = constraint, start, steps, argument
        # Outside a trainer it is the constraint itself: its declarations are the constraint's.
        self.locality, self.convex = constraint.locality, constraint.convex
        self.layered, self.stateful, self.axis = constraint.layered, constraint.stateful, constraint.axis
        self.scheduled = True

    def at(self, update: int) -> Constraint:
        """The constraint to project with after update number ``update`` (1, 2, ...)."""
        if update >= self.steps:
            return self.constraint
        config = self.constraint.get_config()
        end = config[self.argument]
        value = self.start + (end - self.start) * max(update, 0) / self.steps
        return _rebuilt(type(self.constraint), json.dumps({**config, self.argument: value}, sort_keys=True))

    def project(self, w: NDArray, reduction: Reduction, boundary_rtol: float) -> NDArray:
        """``constraint``'s projection (the end of the ramp)."""
        return self.constraint.project(w, reduction, boundary_rtol)

    def continue_from(self, w: NDArray, reduction: Reduction, boundary_rtol: float,
                      state: Any) -> Tuple[NDArray, Any]:
        """``constraint``'s projection with state (a scheduled ``SpectralNorm``)."""
        return self.constraint.continue_from(w, reduction, boundary_rtol, state)

    def check_shape(self, shape: Tuple[int, ...], reduction: Reduction, name: Optional[str]) -> None:
        """``constraint``'s check."""
        self.constraint.check_shape(shape, reduction, name)

    def get_config(self) -> Dict[str, Any]:
        """``{"constraint": serialized, "start": ..., "steps": ..., "argument": ...}``."""
        return {"constraint": serialize(self.constraint), "start": self.start, "steps": self.steps,
                "argument": self.argument}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Scheduled":
        """Build from :meth:`get_config`'s output (the wrapped constraint deserialized)."""
        if isinstance(config, dict) and isinstance(config.get("constraint"), dict):
            config = {**config, "constraint": deserialize(config["constraint"])}
        return super().from_config(config)


@functools.lru_cache(maxsize=64)
def _rebuilt(cls: Type[Constraint], config: str) -> Constraint:
    """``cls`` built from a JSON config (cached: a constant bound gives the same object)."""
    return cls.from_config(json.loads(config))
