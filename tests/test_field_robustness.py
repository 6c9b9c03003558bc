"""Ordinary Gluon code doing ordinary things: copies, exports, shared optimizers, mutation,
unwritable caches, odd dtypes and shapes (docs/training.md, "Guarantees and their scope";
docs/layers.md; docs/constraints.md). Each case either works or fails loudly, before any weight
changes.
"""

import copy
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn as gluon_nn

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn

TWO = [mx.cpu(0), mx.cpu(1)]
HERE = Path(__file__).parent


def dense_net(bound=1.0, ctx=None, deferred=False, constraint=None):
    net = nn.HybridSequential()
    net.add(nn.Dense(4, in_units=0 if deferred else 3,
                     weight_constraint=constraint or gc.MaxNorm(bound)))
    net.initialize(mx.init.Normal(2.0), ctx=ctx)
    return net


def step(net, trainer, ctx=None, scale=1.0):
    ctx = ctx or [mx.cpu(0)]
    xs = gluon.utils.split_and_load(mx.nd.ones((len(ctx) * 2, 3)) * scale, ctx)
    with autograd.record():
        losses = [-net(x).sum() for x in xs]
    for loss in losses:
        loss.backward()
    trainer.step(len(ctx) * 2)


def weights(net):
    return {name: [a.asnumpy().copy() for a in p.list_data()] for name, p in net.collect_params().items()}


def assert_unchanged(net, before):
    after = weights(net)
    assert sorted(after) == sorted(before)
    for name, arrays in after.items():
        for now, then in zip(arrays, before[name]):
            np.testing.assert_array_equal(now, then, err_msg=name)


def row_norms(array):
    return np.linalg.norm(array.astype(np.float64).reshape(array.shape[0], -1), axis=1)


# -- 1. copies -------------------------------------------------------------------------------
def test_deepcopy_reinitializes_and_allocates_only_the_copy():
    net = dense_net()
    net(mx.nd.ones((1, 3)))
    before = weights(net)
    twin = copy.deepcopy(net)
    twin.initialize(mx.init.Constant(5.0), force_reinit=True)
    twin.collect_params().reset_ctx([mx.cpu(1)])
    assert_unchanged(net, before)
    assert twin[0].weight.list_ctx() == [mx.cpu(1)] and net[0].weight.list_ctx() == [mx.cpu(0)]
    np.testing.assert_array_equal(twin[0].weight.data(mx.cpu(1)).asnumpy(), np.full((4, 3), 5.0))
    assert twin[0].weight.constraint == net[0].weight.constraint
    assert twin[0].weight.constraint is not net[0].weight.constraint


def test_deepcopy_before_deferred_initialization_allocates_the_copy_only():
    net = dense_net(deferred=True)
    twin = copy.deepcopy(net)
    twin(mx.nd.ones((1, 3)))
    assert twin[0].weight.shape == (4, 3)
    assert net[0].weight.shape == (4, 0)
    with pytest.raises(gluon.parameter.DeferredInitializationError):
        net[0].weight.data()


def test_a_copy_trains_with_its_own_constraints_and_leaves_the_original_alone():
    net = dense_net(bound=0.5)
    original = weights(net)
    twin = copy.deepcopy(net)
    twin.collect_params().reset_ctx(mx.cpu(0))  # as in plain Gluon: a copy's data needs new gradients
    trainer = gc.ConstrainedTrainer(twin.collect_params(), "sgd", {"learning_rate": 1.0})
    with pytest.warns(gc.UnenforcedConstraintWarning, match=net[0].weight.name):  # the original's
        step(twin, trainer, scale=3.0)
    assert row_norms(twin[0].weight.data().asnumpy()).max() <= 0.5 * (1 + 1e-5)
    assert_unchanged(net, original)


def test_a_pickled_network_keeps_its_constraints_and_checks_its_own_allocation():
    net = dense_net(deferred=True, constraint=gc.MaxNorm(2.0, axis=5))  # axis fits no 2-D weight
    clone = pickle.loads(pickle.dumps(net))
    assert clone[0].weight.constraint == gc.MaxNorm(2.0, axis=5)
    with pytest.raises(gc.ConstraintShapeError, match="axis 5"):
        clone(mx.nd.ones((1, 3)))  # deferred allocation of the clone checks the clone
    with pytest.raises(RuntimeError, match="has not been initialized"):
        clone[0].weight.data()
    assert net[0].weight.constraint == gc.MaxNorm(2.0, axis=5)


# -- 2. one optimizer, two trainers ------------------------------------------------------------
def test_a_second_trainer_on_the_same_optimizer_is_refused_and_binds_nothing():
    generator, discriminator = dense_net(0.5), dense_net(constraint=gc.UnitNorm())
    adam = mx.optimizer.Adam(learning_rate=0.1)
    gc.ConstrainedTrainer(generator.collect_params(), adam)
    with pytest.raises(gc.EnforcementError, match="instance is shared: it already belongs to another trainer"):
        gc.ConstrainedTrainer(discriminator.collect_params(), adam)
    assert discriminator[0].weight._trainer is None


def test_gan_trainers_with_their_own_optimizers_enforce_their_own_constraints():
    generator, discriminator = dense_net(0.5), dense_net(constraint=gc.UnitNorm())
    g_trainer = gc.ConstrainedTrainer(generator.collect_params(), "adam", {"learning_rate": 0.1})
    d_trainer = gc.ConstrainedTrainer(discriminator.collect_params(), "adam", {"learning_rate": 0.1})
    for _ in range(3):
        step(generator, g_trainer, scale=3.0)
        step(discriminator, d_trainer, scale=3.0)
    assert row_norms(generator[0].weight.data().asnumpy()).max() <= 0.5 * (1 + 1e-5)
    np.testing.assert_allclose(row_norms(discriminator[0].weight.data().asnumpy()), 1.0, rtol=1e-5)


@pytest.mark.parametrize("stepped,message", [
    (False, "instance is shared: it already belongs to another trainer"),  # checked at the first step
    (True, "was given to another trainer after this one"),                 # checked at every update
], ids=["before-the-first-step", "after-a-step"])
def test_an_optimizer_taken_by_a_later_plain_trainer_stops_the_first_before_any_update(stepped, message):
    first, second = dense_net(0.5), gluon_nn.Dense(4, in_units=3)
    second.initialize()
    sgd = mx.optimizer.SGD(learning_rate=0.1)
    trainer = gc.ConstrainedTrainer(first.collect_params(), sgd)
    if stepped:
        step(first, trainer)
    gluon.Trainer(second.collect_params(), sgd)
    before = weights(first)
    with pytest.raises(gc.EnforcementError, match=message):
        step(first, trainer)
    assert_unchanged(first, before)


# -- 3. failures inside the kvstore update -----------------------------------------------------
class Exploding(gc.Constraint):
    """A constraint whose projection fails (a bug in user code)."""

    locality = "per_unit"

    def project(self, w, axes, boundary_rtol):
        raise RuntimeError("boom")


@pytest.mark.parametrize("ctx", [[mx.cpu(0)], TWO], ids=["1ctx", "2ctx-kvstore-update"])
# On the kvstore path MXNet prints and discards the exception ("Exception ignored"): expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_failing_projection_surfaces_from_step_naming_the_parameter(ctx):
    net = dense_net(ctx=ctx, constraint=Exploding())
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    with pytest.raises(gc.EnforcementError, match=r"Updating and projecting (\S+, )?dense\d+_weight(, \S+)? failed: "
                                                   r"RuntimeError: boom") as info:
        step(net, trainer, ctx)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("bad,error,message", [
    ("max_norm", TypeError, "is not a gluon_constraints.Constraint: attach it with gc.attach"),
    (gc.MaxNorm(1.0, axis=4), gc.ConstraintShapeError, "axis 4 for parameter"),
], ids=["name-set-by-hand", "axis-that-does-not-fit"])
@pytest.mark.parametrize("ctx", [[mx.cpu(0)], TWO], ids=["1ctx", "2ctx"])
def test_a_constraint_set_by_hand_between_steps_is_refused_before_any_update(ctx, bad, error, message):
    net = dense_net(ctx=ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    step(net, trainer, ctx)
    before = weights(net)
    net[0].weight.constraint = bad
    with pytest.raises(error, match=message):
        step(net, trainer, ctx)
    assert_unchanged(net, before)


def test_attach_refuses_an_axis_that_does_not_fit_at_once():
    net = dense_net()
    with pytest.raises(gc.ConstraintShapeError, match="MaxNorm axis 4 for parameter"):
        gc.attach(net[0].weight, gc.MaxNorm(1.0, axis=4))
    assert net[0].weight.constraint == gc.MaxNorm(1.0)


# -- 4. the kernel cache -----------------------------------------------------------------------
def run_worker(env, optimizer="sgd", contexts=1):
    result = subprocess.run([sys.executable, str(HERE / "kernel_worker.py"), optimizer, str(contexts)],
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("optimizer,contexts", [("sgd", 1), ("adam", 2)], ids=["sgd-1ctx", "adam-2ctx"])
def test_a_cache_path_blocked_by_a_file_warns_once_and_uses_stock_operators(tmp_path, optimizer, contexts):
    blocked = tmp_path / "cache"
    blocked.write_text("not a directory")
    outcome = run_worker({"GLUON_CONSTRAINTS_CACHE": str(blocked), "GLUON_CONSTRAINTS_FUSED": "1"},
                         optimizer, contexts)
    assert not outcome["fused"]
    assert len(outcome["warnings"]) == 1
    assert outcome["warnings"][0].startswith("FusedKernelWarning: gluon-constraints is using stock MXNet "
                                             "operators")
    assert "GLUON_CONSTRAINTS_CACHE" in outcome["warnings"][0]
    assert outcome["max_norm"] <= 0.5 * (1 + 1e-5)


def test_a_home_that_cannot_hold_a_cache_warns_once_and_uses_stock_operators(tmp_path):
    home = tmp_path / "home"
    home.write_text("a file where the home directory should be")
    env = {"HOME": str(home), "GLUON_CONSTRAINTS_FUSED": "1"}
    outcome = run_worker({**env, "GLUON_CONSTRAINTS_CACHE": ""}, "adam", 2)
    assert not outcome["fused"] and len(outcome["warnings"]) == 1
    assert outcome["max_norm"] <= 0.5 * (1 + 1e-5)


@pytest.mark.skipif(not any(Path(d, "g++").exists() for d in os.environ["PATH"].split(":")),
                    reason="needs a C++ compiler")
def test_a_truncated_cached_library_is_rebuilt_or_refused_never_loaded(tmp_path):
    env = {"GLUON_CONSTRAINTS_CACHE": str(tmp_path), "GLUON_CONSTRAINTS_FUSED": "1"}
    assert run_worker(env)["fused"]
    (library,) = tmp_path.glob("*/lib-*.so")
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    refused = run_worker({**env, "CXX": "false"})  # cannot rebuild: stock operators, one warning
    assert not refused["fused"] and len(refused["warnings"]) == 1
    assert "could not build it" in refused["warnings"][0]
    assert refused["max_norm"] <= 0.5 * (1 + 1e-5)
    rebuilt = run_worker(env)
    assert rebuilt["fused"] and rebuilt["warnings"] == []


# -- 5. constraints are immutable; re-attaching takes effect -------------------------------------
def test_constraints_cannot_be_mutated():
    c = gc.MinMaxNorm(0.5, 2.0)
    for name, value in (("max_value", 3.0), ("rate", 0.5), ("axis", 1)):
        with pytest.raises(AttributeError, match=f"MinMaxNorm is immutable: cannot set '{name}'"):
            setattr(c, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del c.max_value
    assert c.get_config() == {"min_value": 0.5, "max_value": 2.0, "rate": 1.0, "axis": None, "ord": 2}
    assert copy.deepcopy(c) == c
    with pytest.raises(AttributeError, match="immutable"):
        copy.deepcopy(c).max_value = 1.0


def test_reattaching_the_same_constraint_with_a_layer_changes_the_trainers_axes():
    layer = gluon_nn.Conv2DTranspose(2, 3, in_channels=8)  # weight (8, 2, 3, 3)
    layer.initialize(mx.init.Normal(1.0))
    c = gc.MaxNorm(1.0)
    with pytest.warns(gc.AmbiguousLayoutWarning):
        gc.attach(layer.weight, c)  # bare default: per input channel (axis 0 slices)
    trainer = gc.ConstrainedTrainer(layer.collect_params(), "sgd", {"learning_rate": 0.0})

    def zero_step():
        with autograd.record():
            loss = layer(mx.nd.ones((1, 8, 3, 3))).sum()
        loss.backward()
        trainer.step(1)

    zero_step()
    w = layer.weight.data().asnumpy()
    np.testing.assert_array_less(row_norms(w), 1.0 + 1e-5)
    per_output = np.sqrt((w.astype(np.float64) ** 2).sum(axis=(0, 2, 3)))
    assert per_output.max() > 1.01, "the test needs an output channel outside the ball"
    gc.attach(layer.weight, c, layer=layer)  # the same object, now with the layer's layout
    zero_step()
    expected = ref.max_norm(w, 1.0, (0, 2, 3))
    np.testing.assert_allclose(layer.weight.data().asnumpy(), expected, rtol=1e-5, atol=1e-7)


# -- 6. non-finite weights ---------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_verify_reports_non_finite_weights(value):
    net = dense_net()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    step(net, trainer)
    net[0].weight.set_data(mx.nd.full((4, 3), value))
    with pytest.raises(gc.ConstraintViolationError, match=r"dense\d+_weight \(context cpu\(0\)\): 12 of 12 "
                                                           r"entries are NaN or infinite"):
        trainer.verify_constraints()


# -- 7. extreme magnitudes: stock and fused paths agree ------------------------------------------
EXTREME = np.array([[1e19, -1e19, 2e19, 0.0, 1e19, 1e19],      # norm ~3e19: squares overflow float32
                    [1e-23, 2e-23, -1e-23, 0.0, 3e-23, 1e-23],  # norm ~4e-23: squares underflow
                    [0.3, -0.4, 0.0, 0.0, 0.0, 0.0],
                    [0.0] * 6], dtype=np.float32)


@pytest.mark.parametrize("constraint,reference", [
    (gc.MaxNorm(3.0), lambda w, a: ref.max_norm(w, 3.0, a)),
    (gc.UnitNorm(), lambda w, a: ref.unit_norm(w, a)),
    (gc.MinMaxNorm(1.0, 2.0), lambda w, a: ref.min_max_norm(w, 1.0, 2.0, 1.0, a)),
], ids=["MaxNorm", "UnitNorm", "MinMaxNorm"])
def test_dense_and_conv_layers_agree_on_extreme_magnitudes(constraint, reference):
    # The same values as a Dense weight (2-D: the fused kernel where it is built) and as a
    # Conv2D weight (4-D: stock operators), and through a direct call (stock operators).
    expected = reference(EXTREME, (1,))
    dense = nn.Dense(4, in_units=6, weight_constraint=constraint)
    conv = nn.Conv2D(4, (2, 3), in_channels=1, weight_constraint=constraint)
    for layer in (dense, conv):
        layer.initialize()
        layer.weight.set_data(mx.nd.array(EXTREME.reshape(layer.weight.shape)))
        gc.apply_constraints(layer)
    direct = constraint(mx.nd.array(EXTREME))
    for got in (dense.weight.data(), conv.weight.data(), direct):
        np.testing.assert_allclose(got.asnumpy().reshape(4, 6), expected, rtol=1e-5, atol=0)
        assert np.all(np.isfinite(got.asnumpy()))


# Rows at the edges of float32: a norm beyond float32 (squares of 3e38), subnormal entries (a
# scale beyond float32: 1 / 1.4e-40), a row at float32's largest value, and an all-zero row.
EDGES = np.array([[3e38, 3e38, 3e38, 0.0],
                  [1e-40, 1e-40, 0.0, 0.0],
                  [-3.4028235e38, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)


def reference_rescale(w, order, lo, hi):
    """float64 numpy: each row rescaled into the band [lo, hi] of its ``order``-norm (zero rows
    stay zero), rounded once to float32."""
    w = w.astype(np.float64)
    n = np.linalg.norm(w, ord=order, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(n > 0, w * np.clip(n, lo, hi) / n, w)
    return out.astype(np.float32)


@pytest.mark.parametrize("order", [1, 2, np.inf], ids=["ord1", "ord2", "ordinf"])
@pytest.mark.parametrize("family", ["MaxNorm", "UnitNorm", "MinMaxNorm"])
def test_finite_rows_at_the_edges_of_float32_stay_finite_on_every_path(family, order):
    # docs/constraints.md "Finite input, finite output": c(w), apply_constraints (the kernel),
    # and a training step at lr=0 (the fused SGD-momentum and Adam updates, and SGD's update
    # followed by the projection kernel) give the float64 reference rounded once.
    ord_ = "inf" if order == np.inf else order
    constraint, lo, hi = {"MaxNorm": (gc.MaxNorm(2.0, ord=ord_), 0.0, 2.0),
                          "UnitNorm": (gc.UnitNorm(ord=ord_), 1.0, 1.0),
                          "MinMaxNorm": (gc.MinMaxNorm(1.0, 2.0, ord=ord_), 1.0, 2.0)}[family]
    expected = reference_rescale(EDGES, order, lo, hi)
    got = {"call": constraint(mx.nd.array(EDGES)).asnumpy()}
    layer = nn.Dense(4, in_units=4, weight_constraint=constraint)
    layer.initialize()
    layer.weight.set_data(mx.nd.array(EDGES))
    gc.apply_constraints(layer)
    got["apply_constraints"] = layer.weight.data().asnumpy()
    for optimizer, options in (("sgd", {"momentum": 0.9}), ("adam", {}), ("sgd", {})):
        layer.weight.set_data(mx.nd.array(EDGES))
        trainer = gc.ConstrainedTrainer([layer.weight], optimizer, {"learning_rate": 0.0, **options})
        with autograd.record():
            loss = layer(mx.nd.ones((1, 4))).sum()
        loss.backward()
        trainer.step(1)
        got[f"{optimizer}{options}"] = layer.weight.data().asnumpy()
    for path, value in got.items():
        assert np.isfinite(value).all(), path
        assert not value[3].any(), path
        # Norm and scale in float64, one rounding to float32: within one float32 ulp.
        assert (np.abs(value - expected) <= np.spacing(np.abs(expected))).all(), (path, value, expected)


# -- 8. integer weights --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "uint8"])
def test_integer_arrays_and_parameters_are_refused(dtype):
    with pytest.raises(gc.ConstraintTypeError, match=f"MaxNorm got an array of shape \\(1, 2\\) with dtype {dtype}"):
        gc.MaxNorm(2.0)(mx.nd.array([[3, 4]], dtype=dtype))
    param = gluon.Parameter("counts", shape=(2, 2), dtype=dtype)
    with pytest.raises(gc.ConstraintTypeError, match=f"parameter 'counts' with dtype {dtype}"):
        gc.attach(param, gc.MaxNorm(2.0))
    assert getattr(param, "constraint", None) is None


def test_a_constraint_set_by_hand_on_an_integer_parameter_is_refused_by_the_trainer():
    param = gluon.Parameter("counts", shape=(2, 2), dtype="int32")
    param.initialize(mx.init.Zero())
    param.constraint = gc.NonNeg()
    with pytest.raises(gc.ConstraintTypeError, match="NonNeg got parameter 'counts' with dtype int32"):
        gc.ConstrainedTrainer([param], "sgd")
    assert param._trainer is None


# -- 9. networks loaded with SymbolBlock.imports -------------------------------------------------
def test_an_imported_network_can_be_constrained_trained_and_projected(tmp_path):
    net = nn.HybridSequential()
    net.add(nn.Dense(5, in_units=3, activation="relu"), nn.Dense(2, in_units=5))
    net.initialize(mx.init.Normal(2.0))
    net.hybridize()
    net(mx.nd.ones((1, 3)))
    net.export(str(tmp_path / "model"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MXNet's own warning about unknown types
        imported = gluon.SymbolBlock.imports(str(tmp_path / "model-symbol.json"), ["data"],
                                             str(tmp_path / "model-0000.params"))
    attached = gc.constrain(imported, {r"weight$": gc.MaxNorm(0.5)})
    assert sorted(attached) == sorted(n for n in imported.collect_params() if n.endswith("weight"))
    assert gc.apply_constraints(imported) == sorted(attached, key=list(imported.collect_params()).index)
    trainer = gc.ConstrainedTrainer(imported.collect_params(), "sgd", {"learning_rate": 1.0})
    with autograd.record():
        loss = -imported(mx.nd.ones((2, 3)) * 3).sum()
    loss.backward()
    trainer.step(2)
    for name in attached:
        assert row_norms(imported.collect_params()[name].data().asnumpy()).max() <= 0.5 * (1 + 1e-5)
    trainer.verify_constraints()


# -- 10. a refused trainer binds nothing ---------------------------------------------------------
def test_a_refused_trainer_leaves_the_parameters_free_for_another():
    embedding = gluon.Parameter("table", shape=(6, 3), stype="row_sparse", grad_stype="row_sparse")
    embedding.initialize()
    gc.attach(embedding, gc.SpectralNorm())  # a row-sparse weight takes row-local constraints only
    with pytest.raises(gc.EnforcementError, match="Parameter 'table' has row_sparse storage and the constraint"):
        gc.ConstrainedTrainer([embedding], "sgd")
    gluon.Trainer([embedding], "sgd")  # "More than one trainers" before the fix


# -- 11. where device copies diverge by MXNet's design -----------------------------------------
@pytest.mark.parametrize("optimizer,kwargs,diverges", [
    ("sgd", {"kvstore": None}, True),
    ("nadam", {"update_on_kvstore": False}, True),
    ("sgld", {"update_on_kvstore": False}, True),
    ("adam", {"update_on_kvstore": False}, False),
    ("nadam", {}, False),
], ids=["kvstore-None", "nadam-no-uokv", "sgld-no-uokv", "adam-no-uokv", "nadam-uokv"])
def test_configurations_whose_copies_diverge_are_announced(optimizer, kwargs, diverges):
    net = dense_net(ctx=TWO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, {"learning_rate": 0.01}, **kwargs)
    announced = [w for w in caught if issubclass(w.category, gc.DivergingCopiesWarning)]
    assert len(announced) == int(diverges)
    for _ in range(3):
        xs = [mx.nd.ones((2, 3), ctx=c) * (i + 1) for i, c in enumerate(TWO)]
        with autograd.record():
            losses = [net(x).sum() for x in xs]
        for loss in losses:
            loss.backward()
        trainer.step(4)
    copies = [a.asnumpy() for a in net[0].weight.list_data()]
    assert (copies[0].tobytes() != copies[1].tobytes()) == diverges


# -- 12. errors that say what is wrong ----------------------------------------------------------
@pytest.mark.parametrize("build,message", [
    (lambda: gc.MaxNorm(5e-324), "MaxNorm max_value must lie in float32's normal range "
                                 "[1.1754944e-38, 3.4028235e+38] (weights are computed in float32 "
                                 "at least): got 5e-324."),
    (lambda: gc.MaxNorm(10**400), "MaxNorm max_value must be finite: got 100000000000...000000 (401 digits)."),
    (lambda: gc.MinMaxNorm(0.0, 1e39), "MinMaxNorm max_value must lie in float32's normal range"),
    (lambda: gc.deserialize({"class_name": "Compose", "config": {}}),
     "Compose config must be {'constraints': [serialized member, ...]}: got {}."),
    (lambda: gc.deserialize({"class_name": "MaxNorm", "config": {"max_valu": 3}}),
     "MaxNorm config has unknown keys ['max_valu']: got {'max_valu': 3}. Expected keys: max_value, axis, ord."),
], ids=["tiny-bound", "huge-int", "bound-above-float32", "compose-without-members", "misspelt-key"])
def test_bad_configs_are_refused_with_a_clear_message(build, message):
    with pytest.raises(gc.ConstraintArgumentError) as info:
        build()
    assert str(info.value).startswith(message)


def test_enforce_after_load_states_says_what_happened(tmp_path):
    net = dense_net()
    trainer = gluon.Trainer(net.collect_params(), "sgd")
    step(net, trainer)
    trainer.save_states(str(tmp_path / "t.states"))
    fresh = gluon.Trainer(dense_net().collect_params(), "sgd")
    fresh.load_states(str(tmp_path / "t.states"))
    with pytest.raises(gc.EnforcementError, match=r"after the trainer created its kvstore \(done by its "
                                                   r"first step\(\), update\(\), allreduce_grads\(\) or "
                                                   r"load_states\(\)\)"):
        gc.enforce(fresh)
    assert not isinstance(fresh, gc.ConstrainedTrainer)


def test_zero_dimensional_and_empty_arrays_are_projected(numpy_mode):
    np.testing.assert_allclose(gc.MaxNorm(2.0)(mx.np.array(-3.0)).asnumpy(), -2.0)
    assert gc.MaxNorm(2.0)(mx.np.array(-3.0)).shape == ()
    empty = mx.np.zeros((0, 3))
    out = gc.UnitNorm()(empty)
    assert out.shape == (0, 3) and isinstance(out, mx.np.ndarray)


@pytest.mark.parametrize("path", ["fused", "stock"])
@pytest.mark.parametrize("uokv", [None, False], ids=["kvstore-update", "device-update"])
def test_a_zero_dimensional_parameter_trains_on_two_contexts_in_numpy_mode(numpy_mode, uokv, path, monkeypatch):
    # The kvstore and the optimizer hand parameters over as classic arrays, of shape () here.
    if path == "stock":
        from gluon_constraints.kernels import library

        monkeypatch.setattr(library, "_loaded", None)
        monkeypatch.setattr(library, "_tried", True)
    params = gluon.ParameterDict("scalar_")
    scale = params.get("scale", shape=())
    params.initialize(ctx=TWO)
    for held in scale.list_data():
        held[()] = 5.0
    gc.attach(scale, gc.MaxNorm(2.0))
    trainer = gc.ConstrainedTrainer(params, "sgd", {"learning_rate": 0.1}, update_on_kvstore=uokv)
    with autograd.record():
        losses = [(scale.data(c) * mx.np.ones((2,), ctx=c)).sum() for c in TWO]
    for loss in losses:
        loss.backward()
    trainer.step(1)
    # 5 - 0.1 * 4 (the summed gradient) = 4.6, then onto [-2, 2]
    assert [float(copy.asnumpy()) for copy in scale.list_data()] == [2.0, 2.0]
    trainer.verify_constraints()


@pytest.mark.parametrize("array", [np.zeros((0,)), np.zeros((0, 3)), np.array(3.0)], ids=["(0,)", "(0, 3)", "()"])
def test_empty_and_zero_dimensional_classic_arrays_get_a_clear_error(array):
    classic = mx.nd.array(array)
    with pytest.raises(gc.ConstraintShapeError, match=f"MaxNorm cannot project a classic mx.nd.NDArray of shape "
                                                       f"{re_escaped(array.shape)}: .* Use an mx.np array"):
        gc.MaxNorm(2.0)(classic)


def re_escaped(shape):
    import re

    return re.escape(str(tuple(shape)))


def test_sparse_arrays_are_refused_not_densified():
    sparse = mx.nd.array([[3, 4], [0, 0]]).tostype("row_sparse")
    with pytest.raises(gc.ConstraintTypeError, match="MaxNorm projects dense arrays: got storage type "
                                                      "'row_sparse' of shape \\(2, 2\\)"):
        gc.MaxNorm(2.0)(sparse)


def test_the_unenforced_parameter_warning_says_how_to_silence_it():
    old_model = dense_net()  # still alive, as in a notebook  # noqa: F841
    net = dense_net()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd")
    with pytest.warns(gc.UnenforcedConstraintWarning, match="warnings.simplefilter\\('ignore', "
                                                            "gc.UnenforcedConstraintWarning\\)"):
        step(net, trainer)
    quiet = dense_net()
    quiet_trainer = gc.ConstrainedTrainer(quiet.collect_params(), "sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", gc.UnenforcedConstraintWarning)
        step(quiet, quiet_trainer)


# -- 14. an owner that decides the axes but is unknown -----------------------------------------
def test_per_unit_constraints_on_weights_with_unknown_layer_warn():
    layer = gluon_nn.Conv2DTranspose(4, 3, in_channels=2)
    layer.initialize()
    with pytest.warns(gc.AmbiguousLayoutWarning, match="pass the layer|Pass the layer"):
        gc.attach(layer.weight, gc.MaxNorm(1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.attach(layer.weight, gc.MaxNorm(1.0), layer=layer)  # owner known: silent
        gc.attach(layer.weight, gc.NonNeg())                    # elementwise: no axes involved
        gc.attach(layer.weight, gc.MaxNorm(1.0, axis=(0, 2, 3)))  # explicit axes


def test_a_constraint_set_by_hand_on_a_transposed_convolution_warns_at_the_trainer():
    layer = gluon_nn.Conv2DTranspose(4, 3, in_channels=2)
    layer.initialize()
    layer.weight.constraint = gc.MaxNorm(1.0)
    with pytest.warns(gc.AmbiguousLayoutWarning, match="'conv\\S*weight' of shape \\(2, 4, 3, 3\\)"):
        gc.ConstrainedTrainer(layer.collect_params(), "sgd")


def test_a_new_trainer_for_the_same_parameters_may_reuse_the_optimizer():
    # A notebook rebuilds the trainer; the old one is still referenced by the parameters.
    net = dense_net(0.5)
    adam = mx.optimizer.Adam(learning_rate=0.1)
    first = gc.ConstrainedTrainer(net.collect_params(), adam)
    step(net, first, scale=3.0)
    second = gc.ConstrainedTrainer(net.collect_params(), adam)
    step(net, second, scale=3.0)
    assert row_norms(net[0].weight.data().asnumpy()).max() <= 0.5 * (1 + 1e-5)
