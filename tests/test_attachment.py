"""attach, constrain and apply_constraints on existing networks (docs/layers.md)."""

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn as gluon_nn
from mxnet.gluon.model_zoo import vision

import gluon_constraints as gc


def row_norms(array):
    a = array.asnumpy().astype(np.float64)
    return np.sqrt((a.reshape(a.shape[0], -1) ** 2).sum(axis=1))


def test_attach_sets_the_constraint_attribute_and_replaces():
    layer = gluon_nn.Dense(3, in_units=4)
    assert gc.attach(layer.weight, "max_norm") == gc.MaxNorm()
    assert layer.weight.constraint == gc.MaxNorm()
    gc.attach(layer.weight, [gc.NonNeg(), gc.MaxNorm(1.0)])
    assert layer.weight.constraint == gc.Compose([gc.NonNeg(), gc.MaxNorm(1.0)])
    gc.attach(layer.weight, None)
    assert layer.weight.constraint is None


def test_attach_with_known_shape_validates_at_once_and_attaches_nothing_on_error():
    layer = gluon_nn.Dense(3, in_units=4, prefix="known_")
    gc.attach(layer.weight, gc.NonNeg())
    with pytest.raises(ValueError) as info:
        gc.attach(layer.weight, gc.MaxNorm(1.0, axis=(2,)))
    assert str(info.value) == ("MaxNorm axis (2,) for parameter 'known_weight' is out of range for "
                               "shape (3, 4): axes must lie in [-2, 1].")
    assert layer.weight.constraint == gc.NonNeg()


def test_attach_with_deferred_shape_validates_when_allocated():
    layer = gluon_nn.Dense(3, prefix="deferred_")
    gc.attach(layer.weight, gc.MaxNorm(1.0, axis=2))
    layer.initialize()
    with pytest.raises(ValueError) as info:
        layer(mx.nd.ones((2, 5)))
    assert str(info.value) == ("MaxNorm axis 2 for parameter 'deferred_weight' is out of range for "
                               "shape (3, 5): axes must lie in [-2, 1].")
    with pytest.raises(RuntimeError):  # the weight was never allocated
        layer.weight.data()


def test_attach_rejects_non_parameters_and_foreign_layers():
    layer, other = gluon_nn.Dense(3, in_units=4), gluon_nn.Dense(2, in_units=4)
    with pytest.raises(TypeError, match="attach expects an mxnet.gluon.Parameter"):
        gc.attach(mx.nd.ones((2, 2)), gc.MaxNorm())
    with pytest.raises(ValueError, match=f"Parameter '{layer.weight.name}' is not a parameter of layer Dense"):
        gc.attach(layer.weight, gc.MaxNorm(), layer=other)
    with pytest.raises(TypeError, match="Expected a constraint"):
        gc.attach(layer.weight, 2.0)


def test_constrain_bounds_every_conv_filter_of_a_model_zoo_resnet():
    net = vision.resnet18_v1()
    net.initialize(mx.init.Xavier(magnitude=3))
    net(mx.nd.ones((1, 3, 32, 32)))
    attached = gc.constrain(net, {r"conv\d+_weight$": gc.MaxNorm(0.5)}, layers=gluon_nn.Conv2D)
    convs = [p for p in net.collect_params().values() if p.name.endswith("weight") and len(p.shape) == 4]
    assert sorted(attached) == sorted(p.name for p in convs) and len(convs) == 20
    assert max(row_norms(p.data()).max() for p in convs) > 0.5
    gc.apply_constraints(net)
    for p in convs:
        assert row_norms(p.data()).max() <= 0.5 * (1 + 1e-5), p.name
    dense = net.output.weight
    assert getattr(dense, "constraint", None) is None


def test_constrain_layers_filter_uses_owning_block_type():
    net = gluon_nn.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(gluon_nn.Conv2D(4, 3, in_channels=2), gluon_nn.Conv2DTranspose(4, 3, in_channels=4),
                gluon_nn.Dense(3, in_units=8))
    # Both convolutions are named conv*, only the type tells them apart.
    attached = gc.constrain(net, {"conv": gc.MaxNorm(1.0)}, layers=gluon_nn.Conv2DTranspose)
    assert sorted(attached) == ["net_conv1_bias", "net_conv1_weight"]


def test_constrain_composes_rules_matching_the_same_parameter():
    net = gluon_nn.Dense(3, in_units=4, prefix="d_")
    attached = gc.constrain(net, {"weight": gc.NonNeg(), "d_": gc.MaxNorm(1.0)})
    assert attached["d_weight"] == gc.Compose([gc.NonNeg(), gc.MaxNorm(1.0)])
    assert attached["d_bias"] == gc.MaxNorm(1.0)


def test_constrain_rule_matching_nothing_raises_and_attaches_nothing():
    net = gluon_nn.HybridSequential(prefix="m_")
    with net.name_scope():
        net.add(gluon_nn.Dense(3, in_units=4))
    with pytest.raises(ValueError) as info:
        gc.constrain(net, {"weight": gc.MaxNorm(), "gamma": gc.NonNeg()})
    assert str(info.value) == ("constrain rule 'gamma' matched no parameter. "
                               "Parameter names: m_dense0_weight, m_dense0_bias.")
    assert all(getattr(p, "constraint", None) is None for p in net.collect_params().values())


def test_constrain_shape_error_attaches_nothing():
    net = gluon_nn.HybridSequential(prefix="s_")
    with net.name_scope():
        net.add(gluon_nn.Dense(3, in_units=4), gluon_nn.Dense(2, in_units=3))
    with pytest.raises(ValueError, match="for parameter 's_dense0_bias' is out of range for shape"):
        gc.constrain(net, {"weight": gc.MaxNorm(), "bias": gc.MaxNorm(axis=1)})
    assert all(getattr(p, "constraint", None) is None for p in net.collect_params().values())


@pytest.mark.parametrize("ctx", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)]], ids=["1ctx", "2ctx"])
def test_apply_constraints_projects_every_copy_identically(ctx):
    layer = gluon_nn.Dense(6, in_units=5)
    layer.initialize(mx.init.Normal(1.0), ctx=ctx)
    gc.attach(layer.weight, gc.MaxNorm(0.5), layer=layer)
    before = layer.weight.data(ctx[0]).asnumpy()
    gc.apply_constraints(layer)
    copies = [a.asnumpy() for a in layer.weight.list_data()]
    n = np.sqrt((before.astype(np.float64) ** 2).sum(1, keepdims=True))
    np.testing.assert_allclose(copies[0], before * 0.5 / np.maximum(n, 0.5), rtol=1e-6)
    for c in copies[1:]:
        assert c.tobytes() == copies[0].tobytes()


def test_apply_constraints_leaves_frozen_parameters_unless_asked():
    layer = gluon_nn.Dense(4, in_units=3)
    layer.initialize(mx.init.Normal(1.0))
    layer.weight.grad_req = "null"
    gc.attach(layer.weight, gc.MaxNorm(0.1))
    before = layer.weight.data().asnumpy()
    assert gc.apply_constraints(layer) == []
    assert layer.weight.data().asnumpy().tobytes() == before.tobytes()
    assert gc.apply_constraints(layer, include_frozen=True) == [layer.weight.name]
    assert row_norms(layer.weight.data()).max() <= 0.1 * (1 + 1e-6)


def test_apply_constraints_on_uninitialized_parameter_changes_nothing():
    net = gluon_nn.HybridSequential(prefix="u_")
    with net.name_scope():
        net.add(gluon_nn.Dense(3, in_units=4), gluon_nn.Dense(2))
    net.initialize(mx.init.Normal(1.0))
    gc.constrain(net, {"weight": gc.MaxNorm(0.1)})
    before = net[0].weight.data().asnumpy()
    with pytest.raises(ValueError, match="Parameter 'u_dense1_weight' is not initialized yet"):
        gc.apply_constraints(net)
    assert net[0].weight.data().asnumpy().tobytes() == before.tobytes()


def test_apply_constraints_accepts_parameters_and_rejects_other_things():
    layer = gluon_nn.Dense(4, in_units=3)
    layer.initialize(mx.init.Normal(1.0))
    gc.attach(layer.weight, gc.NonNeg())
    assert gc.apply_constraints([layer.weight, layer.bias]) == [layer.weight.name]
    assert gc.apply_constraints(layer.collect_params()) == [layer.weight.name]
    assert (layer.weight.data().asnumpy() >= 0).all()
    with pytest.raises(TypeError, match="apply_constraints expects a Block, a ParameterDict"):
        gc.apply_constraints([layer.weight, "bias"])


def test_hand_set_non_constraint_attribute_is_reported():
    layer = gluon_nn.Dense(4, in_units=3, prefix="hand_")
    layer.initialize()
    layer.weight.constraint = "max_norm"
    with pytest.raises(TypeError, match="Parameter 'hand_weight' has constraint 'max_norm', which is not"):
        gc.apply_constraints(layer)


def test_apply_constraints_makes_no_host_synchronisation(monkeypatch):
    layer = gluon_nn.Dense(6, in_units=5)
    layer.initialize(mx.init.Normal(1.0), ctx=[mx.cpu(0), mx.cpu(1)])
    gc.attach(layer.weight, gc.Compose([gc.MinMaxNorm(0.2, 0.5), gc.NonNeg()]), layer=layer)
    mx.nd.waitall()

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation during enforcement")

    for name in ("asnumpy", "asscalar", "wait_to_read"):
        monkeypatch.setattr(mx.nd.NDArray, name, forbidden)
    monkeypatch.setattr(mx.nd, "waitall", forbidden)
    gc.apply_constraints(layer)
    monkeypatch.undo()
    assert (layer.weight.data().asnumpy() >= 0).all()


def test_numpy_mode_parameters_are_projected(numpy_mode):
    layer = gluon_nn.Dense(4, in_units=3)
    layer.initialize(mx.init.Normal(1.0))
    gc.attach(layer.weight, gc.MaxNorm(0.2), layer=layer)
    gc.apply_constraints(layer)
    w = layer.weight.data()
    assert isinstance(w, mx.np.ndarray)
    assert np.sqrt((w.asnumpy() ** 2).sum(1)).max() <= 0.2 * (1 + 1e-6)
