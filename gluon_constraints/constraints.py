"""The constraint classes under the module path of gluon-constraints 0.1.0.

Saved optimizer states and kvstore servers unpickle constraints by module path; files written by
0.1.0 name ``gluon_constraints.constraints``. The classes live in :mod:`gluon_constraints.catalogue`.
"""

from .catalogue import BOUNDARY_RTOL, Compose, Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "UnitNorm", "NonNeg", "Compose", "BOUNDARY_RTOL"]
