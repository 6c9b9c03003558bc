"""gluon_constraints.nn and .rnn as drop-in replacements (docs/layers.md)."""

import inspect

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn as gluon_nn
from mxnet.gluon import rnn as gluon_rnn

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn, rnn

WRAPPED_NN = ["Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
              "Conv3DTranspose", "Embedding", "BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm"]
WRAPPED_RNN = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]


@pytest.mark.parametrize("ours,theirs,wrapped", [(nn, gluon_nn, WRAPPED_NN), (rnn, gluon_rnn, WRAPPED_RNN)],
                         ids=["nn", "rnn"])
def test_every_public_gluon_name_is_exported(ours, theirs, wrapped):
    public = {n for n in dir(theirs) if not n.startswith("_")}
    assert public <= set(ours.__all__)
    for name in public - set(wrapped):
        assert getattr(ours, name) is getattr(theirs, name)
    for name in wrapped:
        assert issubclass(getattr(ours, name), getattr(theirs, name))
        assert getattr(ours, name).__name__ == name


@pytest.mark.parametrize("name", WRAPPED_NN)
def test_signature_keeps_every_original_argument_and_default(name):
    ours = inspect.signature(getattr(nn, name)).parameters
    theirs = inspect.signature(getattr(gluon_nn, name)).parameters
    for arg, param in theirs.items():
        assert ours[arg].default == param.default
    added = {arg for arg in ours if arg.endswith("_constraint")}
    expected = ({"gamma_constraint", "beta_constraint"} if name.endswith("Norm") else
                {"weight_constraint"} if name == "Embedding" else {"weight_constraint", "bias_constraint"})
    assert added == expected and all(ours[arg].default is None for arg in added)


def build_pair(name, prefix):
    """The same small network from the wrapped and the plain module, with equal prefixes."""
    def make(module, constrained):
        kwargs = {"weight_constraint": gc.MaxNorm(0.5)} if constrained else {}
        net = module.HybridSequential(prefix=prefix)
        with net.name_scope():
            if name == "dense":
                net.add(module.Dense(8, activation="relu", **kwargs), module.Dense(3, **kwargs))
            elif name == "conv":
                net.add(module.Conv2D(4, 3, padding=1, **kwargs),
                        module.Conv2DTranspose(2, 3, groups=2, in_channels=4, **kwargs), module.Dense(3, **kwargs))
            else:
                net.add(module.Embedding(10, 4, **kwargs), module.Dense(2, flatten=False, **kwargs))
        return net
    inputs = {"dense": mx.nd.random.normal(shape=(2, 5)), "conv": mx.nd.random.normal(shape=(2, 3, 6, 6)),
              "embedding": mx.nd.array([[1, 2, 3], [4, 5, 9]])}[name]
    return make(nn, True), make(gluon_nn, False), inputs


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("name", ["dense", "conv", "embedding"])
def test_wrapped_layers_compute_like_plain_ones(name, hybridize, tmp_path):
    ours, plain, x = build_pair(name, f"same_{name}_")
    ours.initialize(mx.init.Normal(0.3))
    ours(x)
    ours.save_parameters(str(tmp_path / "w.params"))
    plain.load_parameters(str(tmp_path / "w.params"))
    assert sorted(ours.collect_params()) == sorted(plain.collect_params())
    if hybridize:
        ours.hybridize()
        plain.hybridize()
    np.testing.assert_array_equal(ours(x).asnumpy(), plain(x).asnumpy())


def test_parameters_saved_from_plain_load_into_wrapped_and_keep_constraints(tmp_path):
    ours, plain, x = build_pair("conv", "roundtrip_")
    plain.initialize(mx.init.Normal(0.3))
    plain(x)
    plain.save_parameters(str(tmp_path / "p.params"))
    ours.load_parameters(str(tmp_path / "p.params"))
    np.testing.assert_array_equal(ours(x).asnumpy(), plain(x).asnumpy())
    assert all(p.constraint == gc.MaxNorm(0.5) for n, p in ours.collect_params().items() if n.endswith("weight"))


def test_export_matches_plain_export(tmp_path):
    ours, plain, x = build_pair("dense", "export_")
    ours.initialize(mx.init.Normal(0.3))
    ours.hybridize()
    expected = ours(x).asnumpy()
    ours.export(str(tmp_path / "model"))
    loaded = gluon_nn.SymbolBlock.imports(str(tmp_path / "model-symbol.json"), ["data"],
                                          str(tmp_path / "model-0000.params"))
    np.testing.assert_array_equal(loaded(x).asnumpy(), expected)


def test_constraints_survive_collect_params_hybridize_cast_and_load(tmp_path):
    layer = nn.Dense(4, in_units=3, weight_constraint=gc.MaxNorm(0.5), bias_constraint="non_neg")
    layer.initialize()
    assert layer.collect_params()[layer.weight.name].constraint == gc.MaxNorm(0.5)
    layer.hybridize()
    layer(mx.nd.ones((1, 3)))
    layer.save_parameters(str(tmp_path / "d.params"))
    layer.load_parameters(str(tmp_path / "d.params"))
    layer.cast("float16")
    assert layer.weight.constraint == gc.MaxNorm(0.5) and layer.bias.constraint == gc.NonNeg()
    layer.weight.set_data(mx.nd.full((4, 3), 2.0, dtype="float16"))
    gc.apply_constraints(layer)
    w = layer.weight.data().asnumpy()
    assert w.dtype == np.float16
    np.testing.assert_allclose(np.sqrt((w.astype(np.float64) ** 2).sum(1)), 0.5, rtol=1e-3)


def test_repr_keeps_gluon_style_and_appends_constraints():
    assert repr(nn.Dense(3, in_units=2)) == repr(gluon_nn.Dense(3, in_units=2))
    assert repr(nn.Dense(3, in_units=2, weight_constraint=gc.MaxNorm(3))) == (
        "Dense(2 -> 3, linear, weight_constraint=MaxNorm(max_value=3.0, axis=None, ord=2))")


def test_bias_constraint_without_bias_is_an_error():
    with pytest.raises(ValueError) as info:
        nn.Conv2D(4, 3, use_bias=False, bias_constraint=gc.NonNeg())
    assert str(info.value) == ("Conv2D got bias_constraint=NonNeg() but has no bias parameter "
                               "(was it built with use_bias=False?).")


def test_embedding_takes_no_bias_constraint():
    with pytest.raises(TypeError, match="bias_constraint"):
        nn.Embedding(5, 2, bias_constraint=gc.NonNeg())


def test_bad_constraint_argument_fails_before_the_layer_is_built():
    with pytest.raises(ValueError, match="Unknown constraint name 'maxnorm'"):
        nn.Dense(3, weight_constraint="maxnorm")
    with pytest.raises(ValueError, match="MaxNorm max_value must be > 0"):
        nn.Dense(3, weight_constraint=gc.MaxNorm(-1))


def test_rnn_shorthands_set_both_i2h_and_h2h():
    layer = rnn.LSTM(4, num_layers=2, input_size=3, weight_constraint=gc.MaxNorm(1.0),
                     i2h_bias_constraint="non_neg")
    constraints = {n: getattr(p, "constraint", None) for n, p in layer.collect_params().items()}
    for name, c in constraints.items():
        if name.endswith("_weight"):
            assert c == gc.MaxNorm(1.0), name
        elif name.endswith("i2h_bias"):
            assert c == gc.NonNeg(), name
        else:
            assert c is None, name


def test_rnn_specific_arguments_override_nothing_silently():
    cell = rnn.GRUCell(3, input_size=2, i2h_weight_constraint=gc.MaxNorm(1.0), h2h_weight_constraint=gc.UnitNorm())
    assert cell.i2h_weight.constraint == gc.MaxNorm(1.0) and cell.h2h_weight.constraint == gc.UnitNorm()
    with pytest.raises(ValueError, match="GRUCell got both weight_constraint and i2h_weight_constraint"):
        rnn.GRUCell(3, weight_constraint=gc.MaxNorm(1.0), i2h_weight_constraint=gc.UnitNorm())


def test_wrapped_rnn_computes_like_plain(tmp_path):
    ours = rnn.LSTM(4, input_size=3, prefix="lstm_same_", weight_constraint=gc.MaxNorm(1.0))
    plain = gluon_rnn.LSTM(4, input_size=3, prefix="lstm_same_")
    ours.initialize(mx.init.Normal(0.3))
    ours.save_parameters(str(tmp_path / "l.params"))
    plain.load_parameters(str(tmp_path / "l.params"))
    x = mx.nd.random.normal(shape=(5, 2, 3))
    np.testing.assert_array_equal(ours(x).asnumpy(), plain(x).asnumpy())


@pytest.mark.parametrize("build,keras,ours", [
    (lambda **kw: nn.Dense(3, **kw), "kernel_constraint", "use weight_constraint="),
    (lambda **kw: nn.Conv2D(3, 3, **kw), "kernel_constraint", "use weight_constraint="),
    (lambda **kw: nn.Embedding(5, 3, **kw), "embeddings_constraint", "use weight_constraint="),
    (lambda **kw: rnn.LSTM(3, **kw), "kernel_constraint", "use i2h_weight_constraint="),
    (lambda **kw: rnn.GRU(3, **kw), "recurrent_constraint", "use h2h_weight_constraint="),
    (lambda **kw: nn.Conv2D(3, 3, **kw), "depthwise_constraint",
     "Conv2D has no such weight (a depthwise kernel: in Gluon a depthwise convolution is Conv2D(groups=in_channels)"),
], ids=["Dense", "Conv2D", "Embedding", "LSTM-kernel", "GRU-recurrent", "depthwise"])
def test_keras_keywords_are_refused_with_the_gluon_keyword_to_use(build, keras, ours):
    with pytest.raises(TypeError) as info:
        build(**{keras: gc.MaxNorm(3, axis=0)})
    message = str(info.value)
    assert f"got {keras}= (Keras's name): {ours}" in message
    assert "Keras constraints' explicit axes refer to Keras's weight layout" in message


@pytest.mark.parametrize("build", [
    lambda **kw: nn.BatchNorm(in_channels=4, **kw),
    lambda **kw: nn.LayerNorm(axis=1, in_channels=4, **kw),
    lambda **kw: nn.InstanceNorm(in_channels=4, scale=True, **kw),  # its default freezes gamma
    lambda **kw: nn.GroupNorm(num_groups=2, **kw),
], ids=["BatchNorm", "LayerNorm", "InstanceNorm", "GroupNorm"])
def test_normalization_layers_take_gamma_and_beta_constraints(build):
    layer = build(gamma_constraint=gc.MaxNorm(1.0), beta_constraint="non_neg")
    assert layer.gamma.constraint == gc.MaxNorm(1.0) and layer.beta.constraint == gc.NonNeg()
    layer.initialize()
    x = mx.nd.random.normal(shape=(2, 4, 3, 3))
    layer(x)  # deferred shapes resolved (GroupNorm's gamma is per channel)
    layer.gamma.set_data(mx.nd.full(layer.gamma.shape, 2.0))
    layer.beta.set_data(mx.nd.full(layer.beta.shape, -1.0))
    gc.apply_constraints(layer)
    gamma = layer.gamma.data().asnumpy()
    np.testing.assert_allclose(gamma, ref.max_norm(np.full(gamma.shape, 2.0), 1.0, (0,)), rtol=1e-6)
    np.testing.assert_array_equal(layer.beta.data().asnumpy(), 0.0)
