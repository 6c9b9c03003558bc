"""The wider catalogue (docs/constraints.md): box, p-norms, simplex and L1 ball, against numpy
reference formulas, on the fused kernel and stock paths, and enforced by the trainer."""

import math

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.kernels.projection import project_in_place, unit_groups
from steps import squared_output_step

RNG = np.random.default_rng(12)


def p_norms(w, order):
    flat = w.reshape(w.shape[0], -1).astype(np.float64)
    return np.linalg.norm(flat, ord=np.inf if order == "inf" else order, axis=1)


def simplex_by_bisection(v, radius):
    """Nearest point of {x >= 0, sum x = radius}: max(v - theta, 0), theta found by bisection."""
    lo, hi = v.min() - radius, v.max()
    for _ in range(200):
        theta = (lo + hi) / 2
        lo, hi = (theta, hi) if np.maximum(v - theta, 0).sum() > radius else (lo, theta)
    return np.maximum(v - (lo + hi) / 2, 0)


@pytest.mark.parametrize("order", [1, 2, "inf"])
@pytest.mark.parametrize("fused", [True, False], ids=["kernel", "stock"])
def test_max_norm_with_ord_rescales_like_torch_renorm(order, fused):
    w = RNG.normal(0, 1, (6, 4, 3, 3)).astype(np.float32)
    w[0] *= 0.01  # one filter inside the ball: unchanged
    array = mx.nd.array(w)
    constraint = gc.MaxNorm(1.5, ord=order)
    project_in_place([(array, constraint, gc.Reduction((1, 2, 3)))], use_fused=fused)
    n = p_norms(w, order)
    expected = w * (1.5 / np.maximum(n, 1.5))[:, None, None, None]  # torch.renorm(w, p, 0, 1.5)
    np.testing.assert_allclose(array.asnumpy(), expected, rtol=2e-6)
    assert array.asnumpy()[0].tobytes() == w[0].tobytes()
    assert np.all(p_norms(array.asnumpy(), order) <= 1.5 * (1 + 1e-6))


@pytest.mark.parametrize("order", [1, "inf"])
def test_min_max_and_unit_norm_take_ord(order):
    w = RNG.normal(0, 1, (5, 7)).astype(np.float32)
    n = p_norms(w, order)
    low, high = np.median(n) * 0.9, np.median(n) * 1.1
    got = gc.MinMaxNorm(low, high, ord=order)(mx.nd.array(w)).asnumpy()
    np.testing.assert_allclose(got, w * (np.clip(n, low, high) / n)[:, None], rtol=2e-6)
    unit = gc.UnitNorm(ord=order)(mx.nd.array(w)).asnumpy()
    np.testing.assert_allclose(p_norms(unit, order), 1.0, rtol=2e-6)


@pytest.mark.parametrize("value", [3, 0, -1, "two", True, None, 2.5])
def test_bad_ord_is_refused_naming_it(value):
    with pytest.raises(gc.ConstraintArgumentError, match=r"MaxNorm ord must be 1, 2 or inf .*got " + repr(value)):
        gc.MaxNorm(1.0, ord=value)


@pytest.mark.parametrize("fused", [True, False], ids=["kernel", "stock"])
@pytest.mark.parametrize("bounds", [(-0.5, 0.25), (0.0, None), (None, 0.1)], ids=["box", "low", "high"])
def test_clip_is_np_clip_on_both_paths(bounds, fused):
    w = RNG.normal(0, 1, (8, 9)).astype(np.float32)
    array = mx.nd.array(w)
    project_in_place([(array, gc.Clip(*bounds), gc.Reduction((1,)))], use_fused=fused)
    lo, hi = (-np.inf if bounds[0] is None else bounds[0]), (np.inf if bounds[1] is None else bounds[1])
    np.testing.assert_array_equal(array.asnumpy(), np.clip(w, np.float32(lo), np.float32(hi)))
    assert unit_groups(mx.nd.array(w), gc.Clip(*bounds), gc.Reduction((1,))) is not None


@pytest.mark.parametrize("arguments,message", [
    ((None, None), "Clip needs min_value or max_value: got None for both"),
    ((1.0, 0.5), "Clip min_value must be <= max_value: got min_value=1.0 and max_value=0.5"),
    ((1e-40, 1.0), "Clip min_value must be 0 or have a magnitude in float32's normal range"),
    ((0.0, math.inf), "Clip max_value must be finite: got inf"),
])
def test_bad_clip_bounds_are_refused(arguments, message):
    with pytest.raises(gc.ConstraintArgumentError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gc.Clip(*arguments)


@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_simplex_is_the_nearest_point_of_the_simplex(radius):
    w = RNG.normal(0, 1, (6, 10))
    w[0] = np.full(10, radius / 10)  # already on the simplex: unchanged
    got = gc.Simplex(radius)(mx.nd.array(w, dtype="float64")).asnumpy()
    for row, original in zip(got, w):
        np.testing.assert_allclose(row, simplex_by_bisection(original, radius), atol=1e-9)
    assert got[0].tobytes() == w[0].tobytes()
    assert np.all(got >= 0)
    np.testing.assert_allclose(got.sum(axis=1), radius, rtol=1e-12)


def test_simplex_and_l1_ball_of_rows_at_float32s_largest_magnitudes():
    # Rows so large that a radius of 1 is absorbed by rounding in their sums: the largest entry
    # takes the radius (the only one within the radius of the maximum), never inf or NaN.
    w = np.array([[-8.5e34, -9.9e37, 0.0], [3e38, -3e38, 1e38]], dtype=np.float32)
    np.testing.assert_array_equal(gc.Simplex(1.0)(mx.nd.array(w)).asnumpy(), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(gc.L1Ball(2.0)(mx.nd.array(w[1:])).asnumpy(), [[1, -1, 0]])
    for values in ([[-8.5e34]], [[3e38]]):
        np.testing.assert_array_equal(gc.Simplex(1.0)(mx.nd.array(np.array(values, np.float32))).asnumpy(), [[1.0]])


def test_l1_ball_soft_thresholds_only_slices_outside_it():
    w = RNG.normal(0, 1, (5, 3, 2, 2)).astype(np.float32)
    w[1] *= 0.01  # inside the ball: unchanged
    got = gc.L1Ball(2.0)(mx.nd.array(w)).asnumpy()
    for row, original in zip(got.reshape(5, -1), w.reshape(5, -1)):
        if np.abs(original).sum() <= 2.0:
            assert row.tobytes() == original.tobytes()
        else:
            expected = np.sign(original) * simplex_by_bisection(np.abs(original.astype(np.float64)), 2.0)
            np.testing.assert_allclose(row, expected, atol=1e-6)
            np.testing.assert_allclose(np.abs(row).sum(), 2.0, rtol=1e-6)


def test_simplex_per_unit_of_a_transposed_convolution_uses_its_output_channels():
    layer = nn.Conv2DTranspose(3, 2, in_channels=4, weight_constraint=gc.Simplex())
    layer.initialize(mx.init.Normal(1.0))
    w = layer.weight.data().asnumpy()  # (in, out, k, k): units are axis 1
    gc.apply_constraints(layer)
    got = layer.weight.data().asnumpy()
    moved = np.moveaxis(got, 1, 0).reshape(3, -1)
    np.testing.assert_allclose(moved.sum(axis=1), 1.0, rtol=1e-5)
    for row, original in zip(moved, np.moveaxis(w, 1, 0).reshape(3, -1)):
        np.testing.assert_allclose(row, simplex_by_bisection(original.astype(np.float64), 1.0), atol=1e-6)


@pytest.mark.parametrize("optimizer,params", [("sgd", {"learning_rate": 0.5, "momentum": 0.9}),
                                             ("adam", {"learning_rate": 0.5})], ids=["sgd-fused", "adam"])
def test_trainer_enforces_the_new_families(optimizer, params):
    net = nn.HybridSequential()
    net.add(nn.Dense(8, in_units=5, weight_constraint=gc.MaxNorm(0.5, ord="inf"), bias_constraint=gc.Clip(-0.1, 0.1)),
            nn.Dense(4, in_units=8, weight_constraint=gc.Simplex(), bias_constraint=gc.Clip(0.0, None)),
            nn.Dense(2, in_units=4, weight_constraint=gc.L1Ball(0.7)))
    net.initialize(mx.init.Normal(1.0), ctx=[mx.cpu(0), mx.cpu(1)])
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, params)
    x = mx.nd.array(RNG.normal(0, 1, (8, 5)))
    for _ in range(3):
        squared_output_step(net, trainer, x, [mx.cpu(0), mx.cpu(1)])
    gc.verify_constraints(trainer)  # raises on a violated copy or copies that differ
    first, second, third = (layer.weight.data(mx.cpu(1)).asnumpy() for layer in net)
    assert np.abs(first).max() <= 0.5 * (1 + 1e-6)
    assert np.all(second >= 0) and np.allclose(second.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.abs(third).sum(axis=1) <= 0.7 * (1 + 1e-5))
    assert np.all(np.abs(net[0].bias.data().asnumpy()) <= 0.1)
