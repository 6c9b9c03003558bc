"""The constraint catalogue: projections that map a weight back into an allowed set.

Math only: nothing here knows about Gluon parameters, layers or trainers. ``base`` holds the
contract every family implements, each family has its own module (``norms``, ``elementwise``,
``box``, ``simplex``, ...) and registers itself there (``@register_constraint``), ``compose``
and ``schedule`` combine families, ``lowering`` says which ones the fused kernel computes and
``registry`` names them. Every module of this package is imported here, so a family defined in
a new module is registered, and named here and in the package, without a line anywhere else.
Only ``mxnet.ndarray`` is imported, because parameter servers import the catalogue while
``import mxnet`` is still running (a test enforces it).
"""

import importlib
import pkgutil

from .base import BOUNDARY_RTOL, ELEMENTWISE, PER_UNIT, WHOLE, Constraint
from .function import Function
from .lowering import RowLowering
from .reduction import Reduction
from .registry import deserialize, get, public_names, register_constraint, registered_constraints, serialize

for _module in sorted(found.name for found in pkgutil.iter_modules(__path__)):
    importlib.import_module(f".{_module}", __name__)

#: The families this package defines, by class name, and Keras's snake_case aliases of some
#: (``max_norm``): what ``@register_constraint`` registered while the modules above loaded.
FAMILIES = public_names(__name__.split(".")[0])
globals().update(FAMILIES)

__all__ = ["Constraint", "Function", "Reduction", "RowLowering", "get", "serialize", "deserialize",
           "register_constraint", "registered_constraints", "BOUNDARY_RTOL", "ELEMENTWISE",
           "PER_UNIT", "WHOLE", "FAMILIES", *FAMILIES]
