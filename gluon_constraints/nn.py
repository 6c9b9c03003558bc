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

from .layer_arguments import ConstraintArguments, extend_signature

_WRAPPED = ["Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
            "Conv3DTranspose", "Embedding"]

__all__ = sorted({name for name in dir(_gluon_nn) if not name.startswith("_")} | set(_WRAPPED))

globals().update({name: getattr(_gluon_nn, name) for name in __all__ if name not in _WRAPPED})

_WEIGHT_AND_BIAS = {"weight": ("weight",), "bias": ("bias",)}

_DOC = """{base_doc}

    Constraints (gluon-constraints)
    -------------------------------
    {arguments}
"""
_WEIGHT_BIAS_DOC = """weight_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the weight after every update; ``axis=None`` means {fan_in}.
    bias_constraint : Constraint, str, dict, list or None, default None
        Projection applied to the bias (a 1-D vector, reduced as a whole)."""


def _document(cls, fan_in, arguments=_WEIGHT_BIAS_DOC):
    base = cls.__mro__[2]
    cls.__doc__ = _DOC.format(base_doc=(base.__doc__ or "").rstrip(),
                              arguments=arguments.format(fan_in=fan_in))
    extend_signature(cls, base, list(cls.constraint_groups))
    return cls


class Dense(ConstraintArguments, _gluon_nn.Dense):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv1D(ConstraintArguments, _gluon_nn.Conv1D):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv2D(ConstraintArguments, _gluon_nn.Conv2D):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv3D(ConstraintArguments, _gluon_nn.Conv3D):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv1DTranspose(ConstraintArguments, _gluon_nn.Conv1DTranspose):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv2DTranspose(ConstraintArguments, _gluon_nn.Conv2DTranspose):
    constraint_groups = _WEIGHT_AND_BIAS


class Conv3DTranspose(ConstraintArguments, _gluon_nn.Conv3DTranspose):
    constraint_groups = _WEIGHT_AND_BIAS


class Embedding(ConstraintArguments, _gluon_nn.Embedding):
    constraint_groups = {"weight": ("weight",)}


_document(Dense, "per output unit, each row (axis 1) of the (units, in_units) weight")
for _conv in (Conv1D, Conv2D, Conv3D):
    _document(_conv, "per output channel, each whole filter (every axis but 0), in any layout "
                     "and with any groups")
for _conv in (Conv1DTranspose, Conv2DTranspose, Conv3DTranspose):
    _document(_conv, "per output channel: every axis of the (in_channels, channels/groups, "
                     "*kernel) weight but the output-channel one, within the channel's group")
_document(Embedding, "per embedding vector, each row (axis 1) of the (input_dim, output_dim) "
                     "weight", _WEIGHT_BIAS_DOC.split("\n    bias_constraint")[0])
del _conv
