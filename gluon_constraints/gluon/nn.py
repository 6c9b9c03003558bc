"""Drop-in replacement for ``mxnet.gluon.nn`` with constraint arguments on weight layers.

Every public name of ``mxnet.gluon.nn`` is here. ``Dense``, ``Conv1D/2D/3D``,
``Conv1D/2D/3DTranspose`` and ``Embedding`` are subclasses of the originals that also accept
``weight_constraint=None`` and ``bias_constraint=None`` (``Embedding``: weight only);
``BatchNorm``, ``LayerNorm``, ``InstanceNorm`` and ``GroupNorm`` accept ``gamma_constraint=None``
and ``beta_constraint=None``; all in any form :func:`gluon_constraints.get` accepts. They keep
every original argument, default, parameter name and export format; the constraint's
``axis=None`` means the layer's own fan-in (per output unit).

Examples
--------
>>> from gluon_constraints import nn
>>> layer = nn.Dense(64, activation="relu", weight_constraint=gc.MaxNorm(3))  # doctest: +SKIP
"""

from mxnet.gluon import nn as _gluon_nn

from .layer_arguments import constrained_layer

_WEIGHT_AND_BIAS = {"weight": ("weight",), "bias": ("bias",)}
_GAMMA_AND_BETA = {"gamma": ("gamma",), "beta": ("beta",)}
_WEIGHT_DOC = """weight_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the weight after every update; ``axis=None`` means {fan_in}."""
_BIAS_DOC = """
    bias_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the bias (a 1-D vector, reduced as a whole)."""
_GAMMA_BETA_DOC = """gamma_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the scale ``gamma`` (a 1-D vector, reduced as a whole, as Keras's
        ``gamma_constraint``).
    beta_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the shift ``beta`` (a 1-D vector, reduced as a whole)."""
_CONV = ("per output channel, each whole filter (every axis but 0), in any layout and with any "
         "groups")
_TRANSPOSED = ("per output channel: every axis of the (in_channels, channels/groups, *kernel) "
               "weight but the output-channel one, within the channel's group")
_KERNEL = {"kernel_constraint": "weight_constraint"}


def _weights(fan_in, groups=_WEIGHT_AND_BIAS, keras=_KERNEL):
    doc = _WEIGHT_DOC.format(fan_in=fan_in) + (_BIAS_DOC if "bias" in groups else "")
    return groups, doc, keras


# Each wrapped layer: its constraint keywords, their documentation, Keras's names for them.
_LAYERS = {
    "Dense": _weights("per output unit, each row (axis 1) of the (units, in_units) weight"),
    "Conv1D": _weights(_CONV),
    "Conv2D": _weights(_CONV),
    "Conv3D": _weights(_CONV),
    "Conv1DTranspose": _weights(_TRANSPOSED),
    "Conv2DTranspose": _weights(_TRANSPOSED),
    "Conv3DTranspose": _weights(_TRANSPOSED),
    "Embedding": _weights("per embedding vector, each row (axis 1) of the (input_dim, output_dim) "
                          "weight", {"weight": ("weight",)},
                          {"embeddings_constraint": "weight_constraint"}),
    "BatchNorm": (_GAMMA_AND_BETA, _GAMMA_BETA_DOC, {}),
    "LayerNorm": (_GAMMA_AND_BETA, _GAMMA_BETA_DOC, {}),
    "InstanceNorm": (_GAMMA_AND_BETA, _GAMMA_BETA_DOC, {}),
    "GroupNorm": (_GAMMA_AND_BETA, _GAMMA_BETA_DOC, {}),
}

__all__ = sorted({name for name in dir(_gluon_nn) if not name.startswith("_")} | set(_LAYERS))

globals().update({name: getattr(_gluon_nn, name) for name in __all__ if name not in _LAYERS})
globals().update({name: constrained_layer(getattr(_gluon_nn, name), __name__, groups, doc,
                                          keras_names=keras)
                  for name, (groups, doc, keras) in _LAYERS.items()})
