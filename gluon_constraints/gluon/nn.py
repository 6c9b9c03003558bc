"""Drop-in replacement for ``mxnet.gluon.nn`` with constraint arguments on weight layers.

Every public name of ``mxnet.gluon.nn`` is here. ``Dense``, ``Conv1D/2D/3D``,
``Conv1D/2D/3DTranspose`` and ``Embedding`` are subclasses of the originals that also accept
``weight_constraint=None`` and ``bias_constraint=None`` (``Embedding``: weight only), in any form
:func:`gluon_constraints.get` accepts. They keep every original argument, default, parameter name
and export format; the constraint's ``axis=None`` means the layer's own fan-in (per output unit).

Examples
--------
>>> from gluon_constraints import nn
>>> layer = nn.Dense(64, activation="relu", weight_constraint=gc.MaxNorm(3))  # doctest: +SKIP
"""

from mxnet.gluon import nn as _gluon_nn

from .layer_arguments import constrained_layer

_WEIGHT_AND_BIAS = {"weight": ("weight",), "bias": ("bias",)}
_WEIGHT_DOC = """weight_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the weight after every update; ``axis=None`` means {fan_in}."""
_BIAS_DOC = """
    bias_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the bias (a 1-D vector, reduced as a whole)."""
_CONV = ("per output channel, each whole filter (every axis but 0), in any layout and with any "
         "groups")
_TRANSPOSED = ("per output channel: every axis of the (in_channels, channels/groups, *kernel) "
               "weight but the output-channel one, within the channel's group")


# Each wrapped layer: its fan-in in words (for the docstring) and its constraint keywords.
_LAYERS = {
    "Dense": ("per output unit, each row (axis 1) of the (units, in_units) weight", _WEIGHT_AND_BIAS),
    "Conv1D": (_CONV, _WEIGHT_AND_BIAS),
    "Conv2D": (_CONV, _WEIGHT_AND_BIAS),
    "Conv3D": (_CONV, _WEIGHT_AND_BIAS),
    "Conv1DTranspose": (_TRANSPOSED, _WEIGHT_AND_BIAS),
    "Conv2DTranspose": (_TRANSPOSED, _WEIGHT_AND_BIAS),
    "Conv3DTranspose": (_TRANSPOSED, _WEIGHT_AND_BIAS),
    "Embedding": ("per embedding vector, each row (axis 1) of the (input_dim, output_dim) weight",
                  {"weight": ("weight",)}),
}


def _layer(name, fan_in, groups):
    doc = _WEIGHT_DOC.format(fan_in=fan_in) + (_BIAS_DOC if "bias" in groups else "")
    return constrained_layer(getattr(_gluon_nn, name), __name__, groups, doc)


__all__ = sorted({name for name in dir(_gluon_nn) if not name.startswith("_")} | set(_LAYERS))

globals().update({name: getattr(_gluon_nn, name) for name in __all__ if name not in _LAYERS})
globals().update({name: _layer(name, *spec) for name, spec in _LAYERS.items()})
