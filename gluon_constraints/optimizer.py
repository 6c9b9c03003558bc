"""``ConstrainedOptimizer`` under its module path of gluon-constraints 0.1.0.

Saved optimizer states and kvstore servers unpickle it by module path; files written by 0.1.0
name ``gluon_constraints.optimizer``. It lives in :mod:`gluon_constraints.training.optimizer`.
"""

from .training.optimizer import ConstrainedOptimizer, Projection, master_copy_slot

__all__ = ["ConstrainedOptimizer", "Projection", "master_copy_slot"]
