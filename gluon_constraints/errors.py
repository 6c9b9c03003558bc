"""The exceptions gluon-constraints raises.

Every error is a subclass of a built-in exception (``ValueError`` or ``TypeError``), so code that
catches the built-in keeps working; the subclasses let callers tell our errors apart.
"""

__all__ = [
    "ConstraintViolationError",
    "EnforcementError",
    "ConstraintArgumentError",
    "ConstraintShapeError",
    "UnknownConstraintError",
]


class ConstraintArgumentError(ValueError):
    """A constraint was built with an argument outside its allowed range."""


class ConstraintShapeError(ValueError):
    """A constraint's reduction axes do not fit the shape of the array or parameter."""


class UnknownConstraintError(ValueError):
    """A constraint name or serialized class name is not registered."""


class ConstraintViolationError(RuntimeError):
    """A copy of a constrained parameter lies outside its constraint set (from verification)."""


class EnforcementError(RuntimeError):
    """Constraint enforcement cannot be installed on, or run with, this trainer as configured."""
