"""Keras-style weight constraints for Apache MXNet Gluon.

Importing the package needs only ``mxnet.ndarray``: parameter-server processes import it while
``import mxnet`` is still running, before ``mxnet.nd`` and ``mxnet.gluon`` exist. Names that need
Gluon (attaching, layers, enforcement) are loaded on first use.
"""

import importlib

from .constraints import Compose, Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from .errors import (
    ConstraintArgumentError,
    ConstraintShapeError,
    ConstraintViolationError,
    EnforcementError,
    UnknownConstraintError,
)
from .reduction import Reduction
from .registry import deserialize, get, register_constraint, serialize

# Public names defined in modules that import mxnet.gluon, loaded lazily (PEP 562).
_LAZY = {
    "attach": "attachment",
    "constrain": "attachment",
    "register_layout": "layouts",
    "apply_constraints": "enforcement",
    "ConstrainedTrainer": "trainer",
    "enforce": "trainer",
    "verify_constraints": "trainer",
    "ConstrainedOptimizer": "optimizer",
    "ConstraintHandler": "estimator",
    "nn": None,
    "rnn": None,
}

__all__ = [
    "Constraint",
    "MaxNorm",
    "MinMaxNorm",
    "UnitNorm",
    "NonNeg",
    "Compose",
    "Reduction",
    "get",
    "serialize",
    "deserialize",
    "register_constraint",
    "attach",
    "constrain",
    "register_layout",
    "apply_constraints",
    "ConstrainedTrainer",
    "enforce",
    "verify_constraints",
    "ConstrainedOptimizer",
    "ConstraintHandler",
    "nn",
    "rnn",
    "ConstraintArgumentError",
    "ConstraintShapeError",
    "UnknownConstraintError",
    "ConstraintViolationError",
    "EnforcementError",
]

__version__ = "0.1.0"


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'gluon_constraints' has no attribute '{name}'")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f".{name}", __name__)
    return getattr(importlib.import_module(f".{module_name}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
