"""Keras-style weight constraints for Apache MXNet Gluon.

Only ``mxnet.ndarray`` is needed to import this package: parameter-server processes import it
while ``import mxnet`` is still running, before ``mxnet.nd`` and ``mxnet.gluon`` exist.
"""

from .constraints import Compose, Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from .errors import ConstraintArgumentError, ConstraintShapeError, UnknownConstraintError
from .reduction import Reduction
from .registry import deserialize, get, register_constraint, serialize

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
    "ConstraintArgumentError",
    "ConstraintShapeError",
    "UnknownConstraintError",
]

__version__ = "0.1.0"
