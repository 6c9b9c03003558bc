"""``Reduction`` under the module path of gluon-constraints 0.1.0 (saved optimizer states name it).

It lives in :mod:`gluon_constraints.catalogue.reduction`.
"""

from .catalogue.reduction import Reduction

__all__ = ["Reduction"]
