"""Drop-in replacement for ``mxnet.gluon.rnn``: ``from gluon_constraints import rnn``.

See :mod:`gluon_constraints.gluon.rnn`, where the layers are defined.
"""

from .gluon import rnn as _layers
from .gluon.rnn import *  # noqa: F401,F403 - the module's whole public namespace is the point

__all__ = _layers.__all__
