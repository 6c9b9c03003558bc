"""Keras constraints translated to Gluon layouts (README, "Coming from Keras"; docs/layers.md).

Each case takes a weight in Keras's layout, computes what Keras 3 gives (the numpy
transliteration in reference.py), permutes it to Gluon's layout, and compares with the
translated constraint applied by the Gluon layer. Keras itself is not needed.
"""

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn, rnn


def keras(name, **config):
    return {"class_name": name, "config": config}


KERAS_RESULTS = {
    "MaxNorm": lambda w, c: ref.keras_max_norm(w, c["max_value"], tuple(np.atleast_1d(c.get("axis", 0)))),
    "MinMaxNorm": lambda w, c: ref.keras_min_max_norm(w, c["min_value"], c["max_value"], c["rate"],
                                                      tuple(np.atleast_1d(c.get("axis", 0)))),
    "UnitNorm": lambda w, c: ref.keras_unit_norm(w, tuple(np.atleast_1d(c.get("axis", 0)))),
    "NonNeg": lambda w, c: ref.keras_non_neg(w),
}

# (id, Gluon layer, Keras weight, its Keras shape, permutation Keras -> Gluon, Gluon attributes)
LAYOUTS = [
    ("Dense", lambda: nn.Dense(5, in_units=7), "kernel", (7, 5), (1, 0), ["weight"]),
    ("Conv2D-NCHW", lambda: nn.Conv2D(4, (3, 2), in_channels=3), "kernel", (3, 2, 3, 4), (3, 2, 0, 1), ["weight"]),
    ("Conv2D-NHWC", lambda: nn.Conv2D(4, (3, 2), in_channels=3, layout="NHWC"), "kernel", (3, 2, 3, 4),
     (3, 0, 1, 2), ["weight"]),
    ("Conv1D", lambda: nn.Conv1D(4, 3, in_channels=2), "kernel", (3, 2, 4), (2, 1, 0), ["weight"]),
    ("Conv2DTranspose", lambda: nn.Conv2DTranspose(4, (3, 3), in_channels=2), "kernel", (3, 3, 4, 2),
     (3, 2, 0, 1), ["weight"]),
    ("Embedding", lambda: nn.Embedding(10, 4), "embeddings", (10, 4), (0, 1), ["weight"]),
    ("LSTM-kernel", lambda: rnn.LSTM(4, input_size=3), "kernel", (3, 16), (1, 0), ["l0_i2h_weight"]),
    ("GRU-recurrent", lambda: rnn.GRU(4, input_size=3), "recurrent_kernel", (4, 12), (1, 0), ["l0_h2h_weight"]),
    ("BatchNorm-gamma", lambda: nn.BatchNorm(in_channels=6), "gamma", (6,), (0,), ["gamma"]),
]
KEY = {"kernel": "kernel_constraint", "recurrent_kernel": "recurrent_constraint",
       "embeddings": "embeddings_constraint", "gamma": "gamma_constraint"}
CONSTRAINTS = {
    "MaxNorm-default-axis": keras("MaxNorm", max_value=1.5),
    "MaxNorm-per-unit": None,  # the Keras axes of one output unit, filled per layout below
    "MinMaxNorm-last-axis": keras("MinMaxNorm", min_value=0.8, max_value=1.2, rate=0.6, axis=-1),
    "UnitNorm-default-axis": keras("UnitNorm"),
    "NonNeg": keras("NonNeg"),
}
PER_UNIT_KERAS_AXES = {"Dense": [0], "Conv2D-NCHW": [0, 1, 2], "Conv2D-NHWC": [0, 1, 2], "Conv1D": [0, 1],
                       "Conv2DTranspose": [0, 1, 3], "Embedding": [1], "LSTM-kernel": [0],
                       "GRU-recurrent": [0], "BatchNorm-gamma": [0]}


@pytest.mark.parametrize("layout", LAYOUTS, ids=[case[0] for case in LAYOUTS])
@pytest.mark.parametrize("which", sorted(CONSTRAINTS))
def test_translated_constraints_give_the_keras_numbers_in_gluon_layout(layout, which, rng):
    name, build, weight, keras_shape, perm, attributes = layout
    spec = CONSTRAINTS[which] or keras("MaxNorm", max_value=1.5, axis=PER_UNIT_KERAS_AXES[name])
    layer = build()
    layer.initialize()
    kernel = rng.normal(scale=1.0, size=keras_shape).astype(np.float32)
    expected = np.transpose(KERAS_RESULTS[spec["class_name"]](kernel, spec["config"]), perm)
    own = {attribute: getattr(layer, attribute) for attribute in attributes}
    for attribute in attributes:
        own[attribute].set_data(mx.nd.array(np.transpose(kernel, perm)))
    attached = gc.from_keras_layer({"class_name": type(layer).__name__, "config": {KEY[weight]: spec}}, layer)
    assert sorted(attached) == sorted(own[a].name for a in attributes)
    gc.apply_constraints(layer)
    for attribute in attributes:
        np.testing.assert_allclose(own[attribute].data().asnumpy(), expected, rtol=1e-5, atol=1e-6)


def test_keras_per_unit_axes_become_the_layers_own_fan_in():
    assert gc.from_keras(keras("MaxNorm", max_value=3, axis=0), nn.Dense(10, in_units=5)) == gc.MaxNorm(3.0)
    grouped = nn.Conv2D(8, 3, groups=2, in_channels=4)
    assert gc.from_keras(keras("MaxNorm", max_value=3, axis=[0, 1, 2]), grouped) == gc.MaxNorm(3.0)
    # Keras's default axis=0 on an Embedding is per embedding dimension, kept as such.
    assert gc.from_keras(keras("MaxNorm", max_value=3), nn.Embedding(10, 4)) == gc.MaxNorm(3.0, axis=0)


class MaxNorm:
    """Stands in for keras.constraints.MaxNorm: a class of that name with get_config."""

    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, axis

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


def test_keras_objects_and_names_are_accepted():
    dense = nn.Dense(10, in_units=5)
    assert gc.from_keras(MaxNorm(4, axis=1), dense) == gc.MaxNorm(4.0, axis=0)
    assert gc.from_keras("non_neg", dense) == gc.NonNeg()
    assert gc.from_keras("max_norm", dense) == gc.MaxNorm(2.0)


def test_keras_names_without_a_counterpart_and_separable_keys_are_refused():
    with pytest.raises(gc.UnknownConstraintError, match="Keras constraint 'Orthogonal' has no gluon-constraints "
                                                        "counterpart: known Keras classes are MaxNorm, MinMaxNorm"):
        gc.from_keras(keras("Orthogonal"), nn.Dense(3, in_units=2))
    layer = nn.Conv2D(4, 3, in_channels=4, groups=4)
    with pytest.raises(ValueError, match="Keras depthwise_constraint has no Gluon counterpart"):
        gc.from_keras_layer({"depthwise_constraint": keras("MaxNorm")}, layer)
    with pytest.raises(ValueError, match="Keras bias_constraint is set, but Dense has no bias"):
        gc.from_keras_layer({"bias_constraint": keras("NonNeg")}, nn.Dense(3, in_units=2, use_bias=False))


def test_a_keras_lstm_config_constrains_both_gluon_biases():
    lstm = rnn.LSTM(4, input_size=3)
    attached = gc.from_keras_layer({"class_name": "LSTM", "config": {
        "kernel_constraint": keras("MaxNorm", max_value=2), "recurrent_constraint": None,
        "bias_constraint": keras("NonNeg")}}, lstm)
    assert sorted(attached) == sorted([lstm.l0_i2h_weight.name, lstm.l0_i2h_bias.name, lstm.l0_h2h_bias.name])
    assert getattr(lstm.l0_h2h_weight, "constraint", None) is None
