"""Drop-in replacement for ``mxnet.gluon.rnn`` with constraint arguments on recurrent layers.

Every public name of ``mxnet.gluon.rnn`` is here. ``RNN``, ``LSTM``, ``GRU`` and the cells
``RNNCell``, ``LSTMCell``, ``GRUCell`` also accept ``i2h_weight_constraint``,
``h2h_weight_constraint``, ``i2h_bias_constraint`` and ``h2h_bias_constraint``, and
``weight_constraint`` / ``bias_constraint`` as shorthands for both i2h and h2h (Keras's
``kernel_constraint`` and ``recurrent_constraint``). Weights are ``(gates * hidden, in)`` and
reduce axis 1 with ``axis=None``: each row is one gate unit's incoming weights. A layer with
``projection_size`` also has ``h2r_weight``, which these arguments leave alone; constrain it with
:func:`gluon_constraints.constrain`.
"""

from mxnet.gluon import rnn as _gluon_rnn

from .layer_arguments import constrained_layer

_WRAPPED = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

__all__ = sorted({name for name in dir(_gluon_rnn) if not name.startswith("_")} | set(_WRAPPED))

globals().update({name: getattr(_gluon_rnn, name) for name in __all__ if name not in _WRAPPED})

_LAYER_GROUPS = {"i2h_weight": ("*_i2h_weight",), "h2h_weight": ("*_h2h_weight",),
                 "i2h_bias": ("*_i2h_bias",), "h2h_bias": ("*_h2h_bias",)}
_CELL_GROUPS = {"i2h_weight": ("i2h_weight",), "h2h_weight": ("h2h_weight",),
                "i2h_bias": ("i2h_bias",), "h2h_bias": ("h2h_bias",)}
_SHORTHANDS = {"weight": ("i2h_weight", "h2h_weight"), "bias": ("i2h_bias", "h2h_bias")}
_KERAS_NAMES = {"kernel_constraint": "i2h_weight_constraint",
                "recurrent_constraint": "h2h_weight_constraint"}
_ARGUMENTS_DOC = """i2h_weight_constraint, h2h_weight_constraint : Constraint, str, dict, list or None
        Projections of the input-to-hidden and hidden-to-hidden weights (per gate unit, axis 1).
    i2h_bias_constraint, h2h_bias_constraint : Constraint, str, dict, list or None
        Projections of the biases (1-D, reduced as a whole).
    weight_constraint, bias_constraint : Constraint, str, dict, list or None
        Shorthands setting both i2h and h2h; passing one with its specific form is an error."""


def _layer(name):
    groups = _CELL_GROUPS if name.endswith("Cell") else _LAYER_GROUPS
    return constrained_layer(getattr(_gluon_rnn, name), __name__, groups, _ARGUMENTS_DOC, _SHORTHANDS,
                             keras_names=_KERAS_NAMES)


globals().update({name: _layer(name) for name in _WRAPPED})
