"""The constraint catalogue: projections that map a weight back into an allowed set.

Math only: nothing here knows about Gluon parameters, layers or trainers. ``base`` holds the
contract every family implements, each family has its own module (``norms``, ``elementwise``, ``box``, ``simplex``, ...),
``compose`` chains them and ``registry`` names them. Only ``mxnet.ndarray`` is imported, because
parameter servers import the catalogue while ``import mxnet`` is still running (a test enforces
it).
"""

from .base import ELEMENTWISE, PER_UNIT, WHOLE, BOUNDARY_RTOL, Constraint, RowLowering
from .box import Clip
from .compose import Compose
from .elementwise import NonNeg
from .function import Function
from .norms import MaxNorm, MinMaxNorm, UnitNorm
from .orthogonal import Orthogonal
from .radial import RadialConstraint
from .reduction import Reduction
from .schedule import Scheduled
from .simplex import L1Ball, Simplex
from .spectral import SpectralNorm
from .registry import deserialize, get, register_constraint, registered_constraints, serialize

# Keras's module-level snake_case aliases of the classes (keras.constraints.max_norm, ...).
max_norm, min_max_norm, unit_norm, non_neg = MaxNorm, MinMaxNorm, UnitNorm, NonNeg
radial_constraint = RadialConstraint

__all__ = ["Constraint", "RowLowering", "MaxNorm", "MinMaxNorm", "UnitNorm", "NonNeg", "Compose",
           "Function", "RadialConstraint", "Clip", "Simplex", "L1Ball", "SpectralNorm", "Orthogonal", "Scheduled", "Reduction", "get", "serialize", "deserialize", "register_constraint", "registered_constraints",
           "max_norm", "min_max_norm", "unit_norm", "non_neg", "radial_constraint", "BOUNDARY_RTOL", "ELEMENTWISE",
           "PER_UNIT", "WHOLE"]
