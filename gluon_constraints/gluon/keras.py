"""Migrating from Keras: Keras constraints and layer configs translated to Gluon's layouts.

Keras and Gluon store the same weights with their axes in different orders (a Dense kernel is
``(in, units)`` in Keras and ``(units, in)`` in Gluon), so a Keras constraint's explicit ``axis``
copied literally constrains the wrong slices. :func:`from_keras` translates the axes through
the permutation between the two layouts of the layer's weight:

==================================  ==========================  ===============================
layer                               Keras weight                Gluon weight
==================================  ==========================  ===============================
Dense                               kernel ``(in, units)``      ``(units, in)``
ConvND (NC* layouts)                ``(*k, in/g, out)``         ``(out, in/g, *k)``
ConvND (channels-last layouts)      ``(*k, in/g, out)``         ``(out, *k, in/g)``
ConvNDTranspose (NC*)               ``(*k, out, in)``           ``(in, out/g, *k)``
ConvNDTranspose (channels-last)     ``(*k, out, in)``           ``(in, *k, out/g)``
Embedding                           ``(input_dim, output_dim)`` the same
RNN/LSTM/GRU kernel, recurrent      ``(in or u, gates*u)``      ``(gates*u, in or u)``
biases, gamma, beta                 ``(n,)``                    the same
==================================  ==========================  ===============================

Translated axes that equal the layer's per-output-unit axes become ``axis=None``, so the
layer's own fan-in applies (grouped convolutions included). Keras itself is not needed: the
constraint may be given as a Keras object or as its serialized dict.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mxnet.gluon import nn, rnn
from mxnet.gluon.block import Block

from .. import _mxnet_compat as compat
from ..catalogue import Constraint
from ..catalogue.elementwise import NonNeg
from ..catalogue.norms import MaxNorm, MinMaxNorm, UnitNorm
from ..catalogue.radial import RadialConstraint
from ..errors import ConstraintConfigError, ConstraintTypeError, UnknownConstraintError
from .attachment import attach
from .layouts import fan_in

__all__ = ["from_keras", "from_keras_layer"]

# Keras class names (and their snake_case and old aliases) to ours, with Keras's default axis.
_KERAS_CLASSES: Dict[str, Tuple[type, Optional[int]]] = {
    "MaxNorm": (MaxNorm, 0), "max_norm": (MaxNorm, 0), "maxnorm": (MaxNorm, 0),
    "MinMaxNorm": (MinMaxNorm, 0), "min_max_norm": (MinMaxNorm, 0),
    "UnitNorm": (UnitNorm, 0), "unit_norm": (UnitNorm, 0), "unitnorm": (UnitNorm, 0),
    "NonNeg": (NonNeg, None), "non_neg": (NonNeg, None), "nonneg": (NonNeg, None),
    # Keras's kernel is (kh, kw, in, out); the layer gives the Gluon kernel axes.
    "RadialConstraint": (RadialConstraint, None), "radial_constraint": (RadialConstraint, None),
}
# Keras layer-config keys to the Keras weight they constrain.
_KERAS_KEYS = {"kernel_constraint": "kernel", "recurrent_constraint": "recurrent_kernel",
               "bias_constraint": "bias", "embeddings_constraint": "embeddings",
               "gamma_constraint": "gamma", "beta_constraint": "beta"}
_UNSUPPORTED_KEYS = ("depthwise_constraint", "pointwise_constraint")


def from_keras(keras_constraint: Any, layer: Block, weight: Optional[str] = None) -> Constraint:
    """Translate a Keras constraint for a weight of the Gluon block ``layer``.

    Parameters
    ----------
    keras_constraint : object, dict or str
        A constraint from ``keras.constraints`` (or ``tf.keras``), its serialized dict
        ``{"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 0}}``, or a Keras name
        (``"max_norm"``). A missing ``axis`` means Keras's default, 0.
    layer : Block
        The Gluon layer whose weight it constrains (an instance: its type, layout and rank
        decide the translation).
    weight : str or None, default None
        Which Keras weight: ``"kernel"``, ``"recurrent_kernel"``, ``"bias"``, ``"embeddings"``,
        ``"gamma"`` or ``"beta"``; None means the layer's main weight (``"embeddings"`` for
        Embedding, ``"gamma"`` for normalization layers, else ``"kernel"``).

    Returns
    -------
    Constraint
        The equivalent constraint on the Gluon weight: ``axis=None`` where the translated axes
        are the layer's per-output-unit axes, else the translated explicit axes.

    Raises
    ------
    UnknownConstraintError
        If the Keras class has no counterpart here (the message lists the known ones).
    ConstraintConfigError
        If the layer type or weight is not one this translation knows.
    ConstraintTypeError
        If ``keras_constraint`` is not a Keras constraint, its serialized dict or its name.

    Examples
    --------
    >>> gc.from_keras({"class_name": "MaxNorm", "config": {"max_value": 3, "axis": 0}},
    ...               nn.Dense(10, in_units=5))  # doctest: +SKIP
    MaxNorm(max_value=3.0, axis=None, ord=2)
    """
    name, config = _keras_form(keras_constraint)
    if name not in _KERAS_CLASSES:
        raise UnknownConstraintError(
            f"Keras constraint {name!r} has no gluon-constraints counterpart: known Keras "
            f"classes are {', '.join(sorted(k for k in _KERAS_CLASSES if k[0].isupper()))}.")
    cls, default_axis = _KERAS_CLASSES[name]
    arguments = {k: v for k, v in config.items() if k not in ("axis", "name", "trainable", "dtype")}
    if default_axis is None:
        return cls(**arguments)
    attribute, perm = _layout(layer, weight or _main_weight(layer))
    keras_axis = config.get("axis", default_axis)
    keras_axes = [keras_axis] if isinstance(keras_axis, int) else list(keras_axis)
    rank = len(perm)
    gluon_axes = tuple(sorted(perm.index(a % rank) for a in keras_axes))
    shape = compat.own_parameters(layer)[attribute].shape if attribute else None
    if shape is not None and len(shape) == rank:
        per_unit = fan_in(layer, attribute, tuple(d if d else 1 for d in shape))
        if per_unit.view_shape is None and per_unit.axes == gluon_axes:
            return cls(**arguments, axis=None)
    return cls(**arguments, axis=gluon_axes[0] if isinstance(keras_axis, int) else gluon_axes)


def from_keras_layer(keras_layer_config: Any, layer: Block) -> Dict[str, Constraint]:
    """Attach the constraints of a Keras layer config to the Gluon block ``layer``.

    Each of ``kernel_constraint``, ``recurrent_constraint``, ``bias_constraint``,
    ``embeddings_constraint``, ``gamma_constraint`` and ``beta_constraint`` that is set is
    translated with :func:`from_keras` and attached to the corresponding Gluon parameters: a
    recurrent layer's kernel to every ``*_i2h_weight``, its recurrent kernel to every
    ``*_h2h_weight``, and its bias to both ``i2h`` and ``h2h`` biases (Gluon keeps two bias
    vectors where Keras keeps one, so a norm constraint on the bias bounds each of them).

    Parameters
    ----------
    keras_layer_config : dict or object
        ``{"class_name": ..., "config": {...}}``, the inner config dict, or a Keras layer
        (anything with ``get_config()``).
    layer : Block
        The Gluon layer.

    Returns
    -------
    dict
        The translated constraint attached to each Gluon parameter, by parameter name.

    Raises
    ------
    ConstraintConfigError
        For ``depthwise_constraint`` / ``pointwise_constraint`` (Gluon has no separable layer)
        and for a constraint whose weight the layer does not have; nothing is attached then.
    """
    config = keras_layer_config.get_config() if hasattr(keras_layer_config, "get_config") \
        else dict(keras_layer_config)
    config = config.get("config", config) if "class_name" in config else config
    for key in _UNSUPPORTED_KEYS:
        if config.get(key) is not None:
            raise ConstraintConfigError(
                f"Keras {key} has no Gluon counterpart: a depthwise convolution is "
                f"Conv2D(groups=in_channels) and a pointwise one a separate Conv2D with "
                f"kernel_size=1; give each its weight_constraint.")
    matched: List[Tuple[Any, Constraint]] = []
    for key, weight in _KERAS_KEYS.items():
        if config.get(key) is None:
            continue
        constraint = from_keras(config[key], layer, weight)
        targets = _parameters(layer, weight)
        if not targets:
            raise ConstraintConfigError(f"Keras {key} is set, but {type(layer).__name__} has no {weight} "
                             f"(was it built with use_bias=False?).")
        matched.extend((param, constraint) for param in targets)
    for param, constraint in matched:
        attach(param, constraint, layer=layer)
    return {param.name: constraint for param, constraint in matched}


def _keras_form(constraint: Any) -> Tuple[str, Dict[str, Any]]:
    """``(class name, config)`` of a Keras constraint object, serialized dict or name."""
    if isinstance(constraint, str):
        return constraint, {}
    if isinstance(constraint, Mapping):
        if not isinstance(constraint.get("class_name"), str):
            raise ConstraintTypeError(
                f"A serialized Keras constraint needs a 'class_name' (as keras.constraints.serialize "
                f"writes: {{'class_name': 'MaxNorm', 'config': {{...}}}}): got {constraint!r}.")
        return constraint["class_name"], dict(constraint.get("config") or {})
    if hasattr(constraint, "get_config"):
        return type(constraint).__name__, dict(constraint.get_config())
    raise ConstraintTypeError(f"from_keras expects a Keras constraint, its serialized dict or its name "
                              f"(such as 'max_norm'): got {constraint!r} of type {type(constraint).__name__}.")


def _main_weight(layer: Block) -> str:
    if isinstance(layer, nn.Embedding):
        return "embeddings"
    if isinstance(layer, _NORMALIZATIONS):
        return "gamma"
    return "kernel"


_NORMALIZATIONS = (nn.BatchNorm, nn.LayerNorm, nn.InstanceNorm, nn.GroupNorm)


def _layout(layer: Block, weight: str) -> Tuple[Optional[str], List[int]]:
    """(Gluon attribute of one such parameter, perm with perm[gluon axis] = Keras axis)."""
    if weight in ("bias", "gamma", "beta"):
        found = _parameters(layer, weight)
        return (_attribute(layer, found[0]) if found else None), [0]
    if isinstance(layer, nn.Dense) and weight == "kernel":
        return "weight", [1, 0]
    if isinstance(layer, nn.Embedding) and weight == "embeddings":
        return "weight", [0, 1]
    if isinstance(layer, compat.convolution_base()) and weight == "kernel":
        _, _, layout = compat.convolution_settings(layer)
        spatial = len(layout) - 2
        kernel_axes = list(range(spatial))
        if layout.endswith("C"):  # (out or in, *kernel, in or out)
            return "weight", [spatial + 1, *kernel_axes, spatial]
        return "weight", [spatial + 1, spatial, *kernel_axes]
    if isinstance(layer, (compat.recurrent_layer_base(), rnn.HybridRecurrentCell)) \
            and weight in ("kernel", "recurrent_kernel"):
        found = _parameters(layer, weight)
        return (_attribute(layer, found[0]) if found else None), [1, 0]
    raise ConstraintConfigError(f"from_keras does not know the Keras {weight!r} of a {type(layer).__name__}: "
                     f"it translates Dense, Conv*/Conv*Transpose, Embedding, RNN/LSTM/GRU (layers "
                     f"and cells) and normalization layers.")


_PATTERNS = {"kernel": ("weight", "i2h_weight", "_i2h_weight"),
             "recurrent_kernel": ("h2h_weight", "_h2h_weight"),
             "bias": ("bias", "i2h_bias", "h2h_bias", "_i2h_bias", "_h2h_bias"),
             "embeddings": ("weight",), "gamma": ("gamma",), "beta": ("beta",)}


def _parameters(layer: Block, weight: str) -> List[Any]:
    endings: Sequence[str] = _PATTERNS.get(weight, ())
    return [param for attr, param in compat.own_parameters(layer).items()
            if attr in endings or any(attr.endswith(e) for e in endings if e.startswith("_"))]


def _attribute(layer: Block, param: Any) -> str:
    return next(attr for attr, p in compat.own_parameters(layer).items() if p is param)
