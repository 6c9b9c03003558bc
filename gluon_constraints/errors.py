"""Every exception and warning gluon-constraints raises.

Each exception subclasses the built-in exception that code not written for this library would
catch for the same mistake, so ``except ValueError`` keeps working, and each message names the
object, the value and the fix:

- ``ValueError``: :class:`ConstraintArgumentError` (a constructor argument out of range),
  :class:`ConstraintShapeError` (axes that do not fit a shape), :class:`UnknownConstraintError`
  (an unregistered name), :class:`ConstraintConfigError` (a malformed constraints config,
  ``constrain`` rule, layer keyword or registration), :class:`UnsupportedOptimizerError` (a
  multi-precision state layout the library cannot read) and :class:`LaunchError` (a local
  cluster job that cannot start as asked).
- ``TypeError``: :class:`ConstraintTypeError` (an argument of the wrong kind: not a number,
  not a constraint, an integer or sparse array a projection cannot take).
- ``AttributeError``: :class:`ImmutableConstraintError` (setting an attribute of a constraint).
- ``RuntimeError``: :class:`ConstraintViolationError` (a copy found outside its set by
  verification), :class:`EnforcementError` (enforcement cannot be installed on, or run with, a
  trainer as configured, or it failed during a step) and :class:`KernelCallError` (the fused
  kernel refused a call; also an ``MXNetError``, as MXNet's own operators raise).
- ``ImportError``: :class:`DependencyError` (MXNet or an optional package missing or of an
  unsupported version); ``FileNotFoundError``: :class:`ConstraintsFileNotFoundError`;
  ``OSError``: :class:`KernelCacheError` (the fused kernel's cache has no place to live).

The warnings are ``UserWarning`` subclasses, so each can be silenced on its own with
``warnings.simplefilter("ignore", gc.<Name>)``.
"""

try:
    from mxnet.base import MXNetError as _MXNetError
except ImportError:  # no MXNet: _mxnet_compat raises DependencyError saying what to install
    _MXNetError = RuntimeError

__all__ = [
    "ConstraintArgumentError",
    "ConstraintShapeError",
    "UnknownConstraintError",
    "ConstraintConfigError",
    "LaunchError",
    "UnsupportedOptimizerError",
    "ConstraintTypeError",
    "ImmutableConstraintError",
    "ConstraintViolationError",
    "EnforcementError",
    "KernelCallError",
    "DependencyError",
    "ConstraintsFileNotFoundError",
    "KernelCacheError",
    "CertificationError",
    "ConstraintWarning",
    "AmbiguousLayoutWarning",
    "DivergingCopiesWarning",
    "UnenforcedConstraintWarning",
    "FusedKernelWarning",
    "InfeasibleWeightsWarning",
    "ClippingWarning",
]


class ConstraintArgumentError(ValueError):
    """A constraint was built with an argument outside its allowed range."""


class ConstraintShapeError(ValueError):
    """A constraint's reduction axes do not fit the shape of the array or parameter."""


class CertificationError(ValueError):
    """A network (or a block of it) that ``lipschitz_bound`` cannot bound, or arguments that a
    certification function cannot take; the message names the block or the value."""


class UnknownConstraintError(ValueError):
    """A constraint name or serialized class name is not registered."""


class ConstraintConfigError(ValueError):
    """A constraints config (``constraints_config``'s form), a ``constrain`` rule or a
    registration is malformed or conflicts: it names parameters the network does not have, or a
    name another class holds."""


class UnsupportedOptimizerError(ValueError):
    """The optimizer keeps its float32 master copy where the library cannot find it."""


class ConstraintTypeError(TypeError):
    """An argument of the wrong kind: not a number, not a constraint, not a parameter or layer,
    or an array or parameter a projection cannot take (integer dtype, sparse storage)."""


class ImmutableConstraintError(AttributeError):
    """An attribute of a constraint was set or deleted: constraints are values; build a new one."""


class ConstraintViolationError(RuntimeError):
    """A copy of a constrained parameter lies outside its constraint set (from verification)."""


class EnforcementError(RuntimeError):
    """Enforcement cannot be installed on, or run with, this trainer as configured."""


class KernelCallError(_MXNetError):
    """The fused kernel's library refused a call (a malformed group, rule or array count); as an
    ``MXNetError``, what MXNet's own operators raise. Nothing was queued."""


class DependencyError(ImportError):
    """MXNet, or an optional package a feature needs, is missing or of an unsupported version."""


class ConstraintsFileNotFoundError(FileNotFoundError):
    """``gc.imports`` found no constraints file beside the exported model."""


class KernelCacheError(OSError):
    """The fused kernel's cache directory cannot be found: ``GLUON_CONSTRAINTS_CACHE`` is unset
    and there is no home directory to hold it (set the variable to a writable directory)."""


class LaunchError(ValueError):
    """A local parameter-server job cannot start as asked (no workers or servers, no command)."""


class ConstraintWarning(UserWarning):
    """The base of every warning this package gives (filter them all with it)."""


class AmbiguousLayoutWarning(ConstraintWarning):
    """A per-output-unit constraint was attached to a parameter whose owning layer is unknown."""


class DivergingCopiesWarning(ConstraintWarning):
    """In this configuration a parameter's device copies do not stay identical (MXNet's own
    behaviour, with or without constraints)."""


class UnenforcedConstraintWarning(ConstraintWarning):
    """Constrained parameters that no trainer updates, so nothing enforces their constraints."""


class FusedKernelWarning(ConstraintWarning):
    """The fused kernel could not be built, cached or loaded; stock operators are used instead."""


class InfeasibleWeightsWarning(ConstraintWarning):
    """Loaded weights lie outside their constraints (an old checkpoint); training or
    ``gc.apply_constraints`` projects them."""


class ClippingWarning(ConstraintWarning):
    """A constraint moves most of a parameter's units on most steps: the updates keep pushing
    the weights out of their set (a learning rate too high for the bound)."""
