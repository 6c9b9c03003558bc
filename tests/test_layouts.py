"""Fan-in axes per layer type, checked on real layer weights against explicit numpy slicing.

For each layer the expected result is computed unit by unit: the entries that feed output unit
``o`` are picked out with an index expression written from the layer's documented weight layout,
and rescaled if their norm exceeds the bound. The autograd tests check those index expressions
themselves: the weights a unit's output depends on are exactly the entries picked out.
"""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import gluon_constraints as gc
from gluon_constraints import nn, rnn

BOUND = 0.3


def expected_per_unit(weight, units, index):
    """Rescale, for every output unit o, the entries weight[index(o)] to norm <= BOUND."""
    out = weight.astype(np.float64).copy()
    for o in range(units):
        sl = out[index(o)]
        n = np.sqrt((sl ** 2).sum())
        if n > BOUND:
            out[index(o)] = sl * BOUND / n
    return out


def rows(o):
    return (o, Ellipsis)


def transposed_nc(in_channels, channels, groups):
    per_in, per_out = in_channels // groups, channels // groups
    return lambda o: (slice(o // per_out * per_in, (o // per_out + 1) * per_in), o % per_out, Ellipsis)


def transposed_last(in_channels, channels, groups):
    per_in, per_out = in_channels // groups, channels // groups
    return lambda o: (slice(o // per_out * per_in, (o // per_out + 1) * per_in), Ellipsis, o % per_out)


LAYERS = [
    ("Dense", lambda c: nn.Dense(5, in_units=7, weight_constraint=c), 5, rows),
    ("Dense-flatten-false", lambda c: nn.Dense(4, in_units=6, flatten=False, weight_constraint=c), 4, rows),
    ("Embedding", lambda c: nn.Embedding(9, 4, weight_constraint=c), 9, rows),
    ("Conv1D-NCW", lambda c: nn.Conv1D(6, 3, in_channels=4, weight_constraint=c), 6, rows),
    ("Conv2D-NCHW", lambda c: nn.Conv2D(6, 3, in_channels=4, weight_constraint=c), 6, rows),
    ("Conv2D-NCHW-groups", lambda c: nn.Conv2D(6, 3, in_channels=4, groups=2, weight_constraint=c), 6, rows),
    ("Conv2D-depthwise", lambda c: nn.Conv2D(4, 3, in_channels=4, groups=4, weight_constraint=c), 4, rows),
    ("Conv2D-NHWC", lambda c: nn.Conv2D(6, 3, in_channels=4, layout="NHWC", weight_constraint=c), 6, rows),
    ("Conv3D-NCDHW", lambda c: nn.Conv3D(5, 2, in_channels=3, weight_constraint=c), 5, rows),
    ("Conv3D-NDHWC", lambda c: nn.Conv3D(5, 2, in_channels=3, layout="NDHWC", weight_constraint=c), 5, rows),
    ("Conv1DTranspose", lambda c: nn.Conv1DTranspose(6, 3, in_channels=4, weight_constraint=c), 6,
     transposed_nc(4, 6, 1)),
    ("Conv2DTranspose", lambda c: nn.Conv2DTranspose(6, 3, in_channels=4, weight_constraint=c), 6,
     transposed_nc(4, 6, 1)),
    ("Conv2DTranspose-groups", lambda c: nn.Conv2DTranspose(6, 3, in_channels=4, groups=2, weight_constraint=c),
     6, transposed_nc(4, 6, 2)),
    ("Conv3DTranspose-groups", lambda c: nn.Conv3DTranspose(6, 2, in_channels=6, groups=3, weight_constraint=c),
     6, transposed_nc(6, 6, 3)),
    ("Conv2DTranspose-NHWC", lambda c: nn.Conv2DTranspose(6, 3, in_channels=4, layout="NHWC", weight_constraint=c),
     6, transposed_last(4, 6, 1)),
    ("Conv2DTranspose-NHWC-groups",
     lambda c: nn.Conv2DTranspose(6, 3, in_channels=4, groups=2, layout="NHWC", weight_constraint=c),
     6, transposed_last(4, 6, 2)),
]


@pytest.mark.parametrize("name,build,units,index", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_weight_fan_in_matches_numpy_slicing(name, build, units, index):
    layer = build(gc.MaxNorm(BOUND))
    layer.initialize(mx.init.Normal(0.5))
    before = layer.weight.data().asnumpy()
    expected = expected_per_unit(before, units, index)
    assert gc.apply_constraints(layer) == [layer.weight.name]
    np.testing.assert_allclose(layer.weight.data().asnumpy(), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(before, expected), "the test weights must exercise the bound"


RECURRENT = [
    ("RNN", lambda c: rnn.RNN(5, input_size=3, weight_constraint=c)),
    ("LSTM-2-layer-bidirectional", lambda c: rnn.LSTM(4, num_layers=2, bidirectional=True, input_size=3,
                                                      weight_constraint=c)),
    ("GRU", lambda c: rnn.GRU(4, input_size=3, weight_constraint=c)),
    ("LSTMCell", lambda c: rnn.LSTMCell(4, input_size=3, weight_constraint=c)),
    ("GRUCell", lambda c: rnn.GRUCell(4, input_size=3, weight_constraint=c)),
    ("RNNCell", lambda c: rnn.RNNCell(4, input_size=3, weight_constraint=c)),
]


@pytest.mark.parametrize("name,build", RECURRENT, ids=[r[0] for r in RECURRENT])
def test_recurrent_weights_reduce_each_gate_row(name, build):
    layer = build(gc.MaxNorm(BOUND))
    layer.initialize(mx.init.Normal(0.5))
    weights = {n: p for n, p in layer.collect_params().items() if n.endswith("_weight")}
    before = {n: p.data().asnumpy() for n, p in weights.items()}
    projected = gc.apply_constraints(layer)
    assert sorted(projected) == sorted(weights)
    for n, p in weights.items():
        expected = expected_per_unit(before[n], before[n].shape[0], rows)
        np.testing.assert_allclose(p.data().asnumpy(), expected, rtol=1e-5, atol=1e-7, err_msg=n)


@pytest.mark.parametrize("build", [
    lambda c: nn.Dense(6, in_units=3, bias_constraint=c),
    lambda c: nn.Conv2DTranspose(6, 3, in_channels=2, groups=2, bias_constraint=c),
    lambda c: rnn.LSTM(3, input_size=2, bias_constraint=c),
], ids=["Dense", "Conv2DTranspose-groups", "LSTM"])
def test_one_dimensional_parameters_reduce_the_whole_vector(build):
    layer = build(gc.MaxNorm(BOUND))
    layer.initialize(mx.init.Normal(0.5))
    biases = {n: p for n, p in layer.collect_params().items() if n.endswith("bias")}
    for p in biases.values():
        p.set_data(mx.nd.random.normal(shape=p.shape))
    before = {n: p.data().asnumpy() for n, p in biases.items()}
    gc.apply_constraints(layer)
    for n, p in biases.items():
        expected = expected_per_unit(before[n], 1, lambda o: Ellipsis)
        np.testing.assert_allclose(p.data().asnumpy(), expected, rtol=1e-5, err_msg=n)


def dependence_mask(layer, x, unit, channel_axis=1):
    """Which weight entries output unit ``unit`` depends on, by autograd."""
    with autograd.record():
        out = layer(x)
        picked = out.take(mx.nd.array([unit]), axis=channel_axis).sum()
    picked.backward()
    return layer.weight.grad().asnumpy() != 0


@pytest.mark.parametrize("name,layer,x,units,index", [
    ("Dense", nn.Dense(4, in_units=5), mx.nd.random.uniform(0.5, 1, shape=(3, 5)), 4, rows),
    ("Conv2D-groups", nn.Conv2D(6, 3, in_channels=4, groups=2), mx.nd.random.uniform(0.5, 1, shape=(1, 4, 5, 5)),
     6, rows),
    ("Conv2DTranspose", nn.Conv2DTranspose(6, 3, in_channels=4), mx.nd.random.uniform(0.5, 1, shape=(1, 4, 4, 4)),
     6, transposed_nc(4, 6, 1)),
    ("Conv2DTranspose-groups", nn.Conv2DTranspose(6, 3, in_channels=4, groups=2),
     mx.nd.random.uniform(0.5, 1, shape=(1, 4, 4, 4)), 6, transposed_nc(4, 6, 2)),
    ("Conv1DTranspose-groups", nn.Conv1DTranspose(6, 3, in_channels=6, groups=3),
     mx.nd.random.uniform(0.5, 1, shape=(1, 6, 5)), 6, transposed_nc(6, 6, 3)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_index_expressions_are_the_weights_each_unit_reads(name, layer, x, units, index):
    layer.initialize(mx.init.Uniform(1.0))
    for o in range(units):
        mask = dependence_mask(layer, x, o)
        selected = np.zeros_like(mask)
        selected[index(o)] = True
        np.testing.assert_array_equal(mask, selected, err_msg=f"unit {o}")


class Bilinear(mx.gluon.HybridBlock):
    """A custom block whose weight is (in, out): each output unit reads a column."""

    def __init__(self, units, in_units, **kwargs):
        super().__init__(**kwargs)
        self.weight = self.params.get("weight", shape=(in_units, units))

    def hybrid_forward(self, F, x, weight):
        return F.dot(x, weight)


def test_register_layout_declares_custom_block_axes():
    gc.register_layout(Bilinear, {"weight": 0})
    block = Bilinear(3, 4)
    block.initialize(mx.init.Normal(1.0))
    gc.constrain(block, {"weight": gc.MaxNorm(BOUND)})
    before = block.weight.data().asnumpy()
    gc.apply_constraints(block)
    expected = expected_per_unit(before, 3, lambda o: (slice(None), o))
    np.testing.assert_allclose(block.weight.data().asnumpy(), expected, rtol=1e-5)


def test_register_layout_accepts_functions_returning_a_reduction():
    class Blocky(Bilinear):
        pass

    gc.register_layout(Blocky, {"weight": lambda block, shape: gc.Reduction((1,), (2, 2, 3))})
    block = Blocky(3, 4)
    block.initialize(mx.init.Normal(1.0))
    gc.attach(block.weight, gc.MaxNorm(BOUND), layer=block)
    before = block.weight.data().asnumpy()
    gc.apply_constraints(block)
    # Reduction((1,), view (2, 2, 3)) reduces axis 1 only: slices are view[g, :, k].
    expected = before.reshape(2, 2, 3).astype(np.float64).copy()
    for g in range(2):
        for k in range(3):
            n = np.linalg.norm(expected[g, :, k])
            if n > BOUND:
                expected[g, :, k] *= BOUND / n
    np.testing.assert_allclose(block.weight.data().asnumpy(), expected.reshape(4, 3), rtol=1e-5)


def test_register_layout_rejects_bad_input():
    with pytest.raises(TypeError, match="register_layout expects a subclass of mxnet.gluon.Block"):
        gc.register_layout(dict, {"weight": 0})
    with pytest.raises(TypeError, match="register_layout rule for 'weight' of Bilinear must be"):
        gc.register_layout(Bilinear, {"weight": "rows"})
