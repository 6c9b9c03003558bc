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

from .layer_arguments import ConstraintArguments, extend_signature

_WRAPPED = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]

__all__ = sorted({name for name in dir(_gluon_rnn) if not name.startswith("_")} | set(_WRAPPED))

globals().update({name: getattr(_gluon_rnn, name) for name in __all__ if name not in _WRAPPED})

_LAYER_GROUPS = {"i2h_weight": ("*_i2h_weight",), "h2h_weight": ("*_h2h_weight",),
                 "i2h_bias": ("*_i2h_bias",), "h2h_bias": ("*_h2h_bias",)}
_CELL_GROUPS = {"i2h_weight": ("i2h_weight",), "h2h_weight": ("h2h_weight",),
                "i2h_bias": ("i2h_bias",), "h2h_bias": ("h2h_bias",)}
_SHORTHANDS = {"weight": ("i2h_weight", "h2h_weight"), "bias": ("i2h_bias", "h2h_bias")}

_ARGUMENTS_DOC = """

    Constraints (gluon-constraints)
    -------------------------------
    i2h_weight_constraint, h2h_weight_constraint : Constraint, str, dict, list or None
        Projections of the input-to-hidden and hidden-to-hidden weights (per gate unit, axis 1).
    i2h_bias_constraint, h2h_bias_constraint : Constraint, str, dict, list or None
        Projections of the biases (1-D, reduced as a whole).
    weight_constraint, bias_constraint : Constraint, str, dict, list or None
        Shorthands setting both i2h and h2h; passing one with its specific form is an error.
"""


class RNN(ConstraintArguments, _gluon_rnn.RNN):
    constraint_groups = _LAYER_GROUPS
    shorthands = _SHORTHANDS


class LSTM(ConstraintArguments, _gluon_rnn.LSTM):
    constraint_groups = _LAYER_GROUPS
    shorthands = _SHORTHANDS


class GRU(ConstraintArguments, _gluon_rnn.GRU):
    constraint_groups = _LAYER_GROUPS
    shorthands = _SHORTHANDS


class RNNCell(ConstraintArguments, _gluon_rnn.RNNCell):
    constraint_groups = _CELL_GROUPS
    shorthands = _SHORTHANDS


class LSTMCell(ConstraintArguments, _gluon_rnn.LSTMCell):
    constraint_groups = _CELL_GROUPS
    shorthands = _SHORTHANDS


class GRUCell(ConstraintArguments, _gluon_rnn.GRUCell):
    constraint_groups = _CELL_GROUPS
    shorthands = _SHORTHANDS


for _cls in (RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell):
    _base = _cls.__mro__[2]
    _cls.__doc__ = (_base.__doc__ or "").rstrip() + _ARGUMENTS_DOC
    extend_signature(_cls, _base, list(_cls.shorthands) + list(_cls.constraint_groups))
del _cls, _base
