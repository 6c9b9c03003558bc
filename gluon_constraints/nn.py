"""Drop-in replacement for ``mxnet.gluon.nn``: ``from gluon_constraints import nn``.

See :mod:`gluon_constraints.gluon.nn`, where the layers are defined.
"""

from .gluon import nn as _layers
from .gluon.nn import *  # noqa: F401,F403 - the module's whole public namespace is the point

__all__ = _layers.__all__
