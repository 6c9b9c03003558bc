"""Every exception and warning gluon-constraints raises.

Each exception subclasses the built-in exception that code not written for this library would
catch for the same mistake, so ``except ValueError`` keeps working:

- ``ValueError``: :class:`ConstraintArgumentError` (a constructor argument out of range),
  :class:`ConstraintShapeError` (axes that do not fit a shape), :class:`UnknownConstraintError`
  (an unregistered name), :class:`ConstraintConfigError` (a malformed constraints config,
  ``constrain`` rule or registration) and :class:`UnsupportedOptimizerError` (a multi-precision state layout
  the library cannot read).
- ``TypeError``: :class:`ConstraintTypeError` (an array or parameter of a kind a projection cannot
  take: integer dtype, sparse storage, not an array).
- ``RuntimeError``: :class:`ConstraintViolationError` (a copy found outside its set by
  verification) and :class:`EnforcementError` (enforcement cannot be installed on, or run with, a
  trainer as configured, or it failed during a step).

The warnings are ``UserWarning`` subclasses, so each can be silenced on its own with
``warnings.simplefilter("ignore", gc.<Name>)``.
"""

__all__ = [
    "ConstraintArgumentError",
    "ConstraintShapeError",
    "UnknownConstraintError",
    "ConstraintConfigError",
    "UnsupportedOptimizerError",
    "ConstraintTypeError",
    "ConstraintViolationError",
    "EnforcementError",
    "AmbiguousLayoutWarning",
    "DivergingCopiesWarning",
    "UnenforcedConstraintWarning",
    "FusedKernelWarning",
    "InfeasibleWeightsWarning",
]


class ConstraintArgumentError(ValueError):
    """A constraint was built with an argument outside its allowed range."""


class ConstraintShapeError(ValueError):
    """A constraint's reduction axes do not fit the shape of the array or parameter."""


class UnknownConstraintError(ValueError):
    """A constraint name or serialized class name is not registered."""


class ConstraintConfigError(ValueError):
    """A constraints config (``constraints_config``'s form), a ``constrain`` rule or a
    registration is malformed or conflicts: it names parameters the network does not have, or a
    name another class holds."""


class UnsupportedOptimizerError(ValueError):
    """The optimizer keeps its float32 master copy where the library cannot find it."""


class ConstraintTypeError(TypeError):
    """A projection was given an array or parameter it cannot take (integer dtype, sparse storage)."""


class ConstraintViolationError(RuntimeError):
    """A copy of a constrained parameter lies outside its constraint set (from verification)."""


class EnforcementError(RuntimeError):
    """Enforcement cannot be installed on, or run with, this trainer as configured."""


class AmbiguousLayoutWarning(UserWarning):
    """A per-output-unit constraint was attached to a parameter whose owning layer is unknown."""


class DivergingCopiesWarning(UserWarning):
    """In this configuration a parameter's device copies do not stay identical (MXNet's own
    behaviour, with or without constraints)."""


class UnenforcedConstraintWarning(UserWarning):
    """Constrained parameters that no trainer updates, so nothing enforces their constraints."""


class FusedKernelWarning(UserWarning):
    """The fused kernel could not be built, cached or loaded; stock operators are used instead."""


class InfeasibleWeightsWarning(UserWarning):
    """Loaded weights lie outside their constraints (an old checkpoint); training or
    ``gc.apply_constraints`` projects them."""
