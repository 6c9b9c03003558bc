"""attach, constrain and apply_constraints on existing networks (docs/layers.md)."""

from copy import deepcopy

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
    with pytest.raises(gc.ConstraintConfigError) as info:
        gc.constrain(net, {"weight": gc.MaxNorm(), "gamma": gc.NonNeg()})
    assert str(info.value) == ("constrain rule 'gamma' matched no parameter. "
                               "Parameter names: m_dense0_weight, m_dense0_bias.")
    assert all(getattr(p, "constraint", None) is None for p in net.collect_params().values())


@pytest.mark.parametrize("rules,error,message", [
    ([gc.MaxNorm()], gc.ConstraintTypeError, r"constrain rules must be a dict mapping regular expressions \(searched "
                                             r"in parameter names\) to constraints, .*: got list \[MaxNorm\("),
    ({"weight": gc.MaxNorm(), "conv(": gc.NonNeg()}, gc.ConstraintConfigError,
     r"constrain rule 'conv\(' is not a valid regular expression \(missing \), unterminated subpattern at "
     r"position 4\): rules are Python regular expressions .*re\.escape"),
    ({3: gc.MaxNorm()}, gc.ConstraintConfigError, r"constrain rule 3 must be a string, a regular expression"),
    ({"bias": gc.NonNeg(), "weight": None}, gc.ConstraintTypeError,
     r"constrain rule 'weight' maps to None: each rule needs a constraint .* Leave the rule out"),
], ids=["a-list", "a-bad-regex", "not-a-string", "none"])
def test_malformed_rules_are_named_and_attach_nothing(rules, error, message):
    net = gluon_nn.Dense(3, in_units=4)
    with pytest.raises(error, match=message):
        gc.constrain(net, rules)
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


def max_norm_rows(w, bound):
    n = np.sqrt((w.astype(np.float64).reshape(w.shape[0], -1) ** 2).sum(1))
    return w * (bound / np.maximum(n, bound)).reshape((-1,) + (1,) * (w.ndim - 1))


def test_apply_constraints_reuses_its_checks_and_follows_every_change(monkeypatch):
    # The checks and the kernel plan are kept with each parameter and reused while its
    # constraint, layer and device copies are the same objects; every change is followed.
    from gluon_constraints.gluon import attachment
    from gluon_constraints.training import apply as apply_module

    rng = np.random.default_rng(11)
    layer = gluon_nn.Dense(6, in_units=5)
    layer.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    gc.attach(layer.weight, gc.MaxNorm(0.5), layer=layer)
    gc.apply_constraints(layer)

    checks = []
    monkeypatch.setattr(apply_module, "check_parameter", lambda *a: checks.append(a[0].name))
    w = rng.normal(0, 1, (6, 5)).astype(np.float32)
    layer.weight.set_data(mx.nd.array(w))                   # written in place: plan reused
    gc.apply_constraints(layer)
    assert checks == []
    for copy in layer.weight.list_data():
        np.testing.assert_allclose(copy.asnumpy(), max_norm_rows(w, 0.5), rtol=2e-6)

    gc.attach(layer.weight, gc.MaxNorm(0.2), layer=layer)     # a new constraint
    gc.apply_constraints(layer)
    assert checks == [layer.weight.name]
    np.testing.assert_allclose(layer.weight.data(mx.cpu(1)).asnumpy(), max_norm_rows(w, 0.2), rtol=2e-6)

    layer.collect_params().reset_ctx([mx.cpu(2), mx.cpu(3), mx.cpu(0)])  # new copies
    assert attachment.state_of(layer.weight).checked is None           # released at once
    layer.weight.set_data(mx.nd.array(w))
    gc.apply_constraints(layer)
    assert checks == [layer.weight.name] * 2
    for copy in layer.weight.list_data():
        np.testing.assert_allclose(copy.asnumpy(), max_norm_rows(w, 0.2), rtol=2e-6)

    layer.cast("float64")                                    # new copies, now the stock path
    layer.weight.set_data(mx.nd.array(w, dtype="float64"))
    gc.apply_constraints(layer)
    assert checks == [layer.weight.name] * 3
    for copy in layer.weight.list_data():
        assert copy.dtype == np.float64
        np.testing.assert_allclose(copy.asnumpy(), max_norm_rows(w.astype(np.float64), 0.2), rtol=1e-12)


def test_apply_constraints_on_a_deep_copy_projects_the_copy_not_the_original():
    net = gluon_nn.HybridSequential()
    net.add(gluon_nn.Dense(4, in_units=3), gluon_nn.Conv2DTranspose(3, 2, in_channels=2))
    net.initialize(mx.init.Normal(2.0))
    gc.constrain(net, {"weight": gc.MaxNorm(0.3)})
    gc.apply_constraints(net)                      # plans made for the original
    twin = deepcopy(net)
    rng = np.random.default_rng(2)
    originals = [p.data().asnumpy() for p in net.collect_params().values()]
    for p in twin.collect_params().values():
        p.set_data(mx.nd.array(rng.normal(0, 2, p.shape)))
    gc.apply_constraints(twin)
    for before, p in zip(originals, net.collect_params().values()):
        assert p.data().asnumpy().tobytes() == before.tobytes()
    dense, transposed = twin[0].weight.data().asnumpy(), twin[1].weight.data().asnumpy()
    assert row_norms(twin[0].weight.data()).max() <= 0.3 * (1 + 1e-6)
    columns = np.sqrt((transposed.astype(np.float64) ** 2).sum(axis=(0, 2, 3)))
    assert columns.max() <= 0.3 * (1 + 1e-6) and columns.min() > 0
    assert row_norms(twin[0].weight.data()).min() > 0 and dense.shape == (4, 3)


def test_apply_constraints_projects_a_transposed_convolution_on_every_copy():
    # Output channel j of a (in, out, kh, kw) weight is the column [:, j]: the kernel's
    # strided layout, all copies in one call.
    layer = gluon_nn.Conv2DTranspose(5, 3, in_channels=4)
    layer.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    gc.attach(layer.weight, gc.MaxNorm(0.7), layer=layer)
    w = np.random.default_rng(5).normal(0, 1, (4, 5, 3, 3)).astype(np.float32)
    layer.weight.set_data(mx.nd.array(w))
    gc.apply_constraints(layer)
    n = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(0, 2, 3), keepdims=True))
    expected = w * 0.7 / np.maximum(n, 0.7)
    copies = [a.asnumpy() for a in layer.weight.list_data()]
    np.testing.assert_allclose(copies[0], expected, rtol=2e-6)
    assert copies[1].tobytes() == copies[0].tobytes()


def test_parameters_of_a_block_follow_collect_params_order_and_structure_changes():
    from gluon_constraints.training.apply import parameters_of

    class Tied(gluon_nn.HybridBlock):  # one parameter shared by two layers
        def __init__(self):
            super().__init__(prefix="tied_")
            with self.name_scope():
                self.a = gluon_nn.Dense(3, in_units=3)
                self.b = gluon_nn.Dense(3, in_units=3, params=self.a.params)

    class Chosen(gluon_nn.HybridSequential):  # a block that decides its own parameters
        def collect_params(self, select=None):
            return super().collect_params(".*weight")

    resnet = vision.resnet18_v1(thumbnail=True)
    chosen = Chosen()
    chosen.add(gluon_nn.Dense(2, in_units=2))
    for net in (resnet, Tied(), chosen):
        assert parameters_of(net) == list(net.collect_params().values())
    # The walk is kept on the block and reused while every table it read holds the same
    # objects: each change below is followed.
    before = parameters_of(resnet)
    resnet.output = gluon_nn.Dense(7, in_units=512)  # replaced in place in its parent's table
    after = parameters_of(resnet)
    assert after == list(resnet.collect_params().values()) and after != before
    assert resnet.output.weight in after
    resnet.features[4].add(gluon_nn.Dense(3, in_units=3))  # a child added deep in the tree
    extra = resnet.features[0].params.get("extra", shape=(2,))  # a parameter added to a table
    after = parameters_of(resnet)
    assert after == list(resnet.collect_params().values())
    assert resnet.features[4][-1].weight in after and extra in after
    twin = deepcopy(resnet)  # the copy walks its own tree
    assert parameters_of(twin) == list(twin.collect_params().values())
    assert not set(map(id, parameters_of(twin))) & set(map(id, after))


def test_apply_constraints_follows_layers_added_reinitialized_and_released_after_a_call():
    # The kernel work of a Block's last call is reused while its parameters keep their plans.
    rng = np.random.default_rng(4)
    net = gluon_nn.HybridSequential()
    net.add(gluon_nn.Dense(4, in_units=3))
    net.initialize(mx.init.Normal(2.0))
    gc.constrain(net, {"weight": gc.MaxNorm(0.3)})
    assert gc.apply_constraints(net) == [net[0].weight.name]

    extra = gluon_nn.Dense(5, in_units=4)
    extra.initialize()
    gc.attach(extra.weight, gc.MaxNorm(0.4), layer=extra)
    net.add(extra)
    w = rng.normal(0, 2, (5, 4)).astype(np.float32)
    extra.weight.set_data(mx.nd.array(w))
    assert gc.apply_constraints(net) == [net[0].weight.name, extra.weight.name]
    np.testing.assert_allclose(extra.weight.data().asnumpy(), max_norm_rows(w, 0.4), rtol=2e-6)

    net.initialize(mx.init.Normal(2.0), force_reinit=True)  # new arrays
    drawn = [net[0].weight.data().asnumpy(), extra.weight.data().asnumpy()]
    gc.apply_constraints(net)
    for layer, before, bound in zip(net, drawn, (0.3, 0.4)):
        assert np.sqrt((before.astype(np.float64) ** 2).sum(1)).max() > bound  # needs projecting
        np.testing.assert_allclose(layer.weight.data().asnumpy(), max_norm_rows(before, bound), rtol=2e-6)

    gc.attach(extra.weight, None)
    extra.weight.set_data(mx.nd.array(w))
    assert gc.apply_constraints(net) == [net[0].weight.name]
    assert extra.weight.data().asnumpy().tobytes() == w.tobytes()


def test_the_axes_of_a_parameter_without_a_shape_or_data_are_refused_by_name():
    from gluon_constraints.gluon.attachment import reduction_of

    param = mx.gluon.Parameter("unshaped_weight", shape=(0, 3))
    gc.attach(param, gc.MaxNorm(1.0))
    with pytest.raises(gc.ConstraintShapeError, match=r"parameter 'unshaped_weight' cannot be resolved: its "
                                                      r"shape \(0, 3\) is not fully known .* Initialize it"):
        reduction_of(param)
