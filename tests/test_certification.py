"""Certification (docs/certification.md): exact convolution norms, network Lipschitz bounds,
OperatorNorm, certified radii, each against an independent computation.

The references here are written out from the definitions: a circular convolution as a dense
matrix built tap by tap, a layer's true norm from the Jacobian of MXNet's own operator (one
column per basis input), a network's local Lipschitz constant from its Jacobian by autograd.
"""

import itertools
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import vision

import gluon_constraints as gc
from gluon_constraints import nn

RNG = np.random.default_rng(7)


# -- references ---------------------------------------------------------------------------------------
def circular_matrix(kernel, size, stride, dilation, groups):
    """The circular (cross-correlation) convolution of ``kernel`` (out, in / groups, *k) on inputs
    of ``size``, written out tap by tap as a dense matrix."""
    out_channels, group_in = kernel.shape[:2]
    outputs = [n // s for n, s in zip(size, stride)]
    matrix = np.zeros((out_channels, *outputs, group_in * groups, *size))
    for a in range(out_channels):
        group = a // (out_channels // groups)
        for o in itertools.product(*map(range, outputs)):
            for b in range(group_in):
                for x in itertools.product(*map(range, kernel.shape[2:])):
                    i = tuple((oo * s + xx * d) % n for oo, s, xx, d, n in zip(o, stride, x, dilation, size))
                    matrix[(a, *o, group * group_in + b, *i)] += kernel[(a, b, *x)]
    return matrix.reshape(out_channels * int(np.prod(outputs)), -1)


def operator_matrix(function, input_shape):
    """The matrix of a linear function of MXNet arrays: one column per basis input."""
    inputs = int(np.prod(input_shape))
    basis = mx.nd.array(np.eye(inputs, dtype=np.float64).reshape(inputs, *input_shape[1:]), dtype=np.float64)
    return function(basis).asnumpy().reshape(inputs, -1).T


def largest_singular_value(matrix):
    return float(np.linalg.norm(np.asarray(matrix, dtype=np.float64), 2))


def jacobian_norm(net, x):
    """The largest singular value of the network's Jacobian at ``x`` (one example): one row per
    output by autograd."""
    x = x.copy()
    x.attach_grad()
    with autograd.record(train_mode=False):
        y = net(x)
    rows = []
    for j in range(y.size):
        seed = mx.nd.zeros(y.shape, dtype=y.dtype)
        seed.reshape(-1)[j] = 1.0
        y.backward(seed, retain_graph=True)
        rows.append(x.grad.asnumpy().reshape(-1).astype(np.float64))
    return largest_singular_value(np.stack(rows))


# -- conv_operator_norm: exact for circular convolutions ------------------------------------------------
CIRCULAR_CASES = [  # kernel shape, input size, stride, dilation, groups
    ((4, 3, 3), (8,), (1,), (1,), 1),
    ((4, 6, 3, 3), (6, 6), (1, 1), (1, 1), 1),
    ((4, 3, 3, 3), (6, 8), (2, 2), (1, 1), 1),
    ((6, 2, 3, 3), (6, 6), (1, 1), (2, 2), 3),
    ((4, 4, 2, 3), (4, 6), (2, 1), (1, 2), 2),
    ((2, 3, 5, 5), (4, 4), (1, 1), (1, 1), 1),             # a kernel larger than the input: wraps
    ((3, 2, 3, 3, 3), (4, 4, 4), (2, 1, 1), (1, 1, 1), 1),
    ((8, 1, 3, 3), (6, 6), (1, 1), (1, 1), 8),             # depthwise
    ((2, 8, 1, 1), (4, 4), (2, 2), (1, 1), 1),
    ((4, 3, 7, 7), (6, 6), (2, 2), (1, 1), 1),             # many taps on few frequencies
    ((3, 5, 3), (5,), (1,), (3,), 1),                      # dilation that wraps
]


@pytest.mark.parametrize("shape,size,stride,dilation,groups", CIRCULAR_CASES)
def test_conv_operator_norm_is_the_largest_singular_value_of_the_circular_convolution(shape, size, stride,
                                                                                     dilation, groups):
    kernel = RNG.standard_normal(shape)
    exact = largest_singular_value(circular_matrix(kernel, size, stride, dilation, groups))
    computed = gc.conv_operator_norm(kernel, size, dilation, groups, stride)
    assert exact <= computed <= exact * (1 + 1e-6)


@pytest.mark.parametrize("scale", [1e-300, 1e-170, 1e-155, 1e77, 1e150, 1e300])
def test_norms_of_huge_and_tiny_weights_are_the_scaled_norms(scale):
    # unscaled, the Gram matrices' squares overflow above 1e154 and lose their digits in the
    # subnormals below 1e-154 (the norm came out below the true one): scaling by a power of two
    # is exact, so the bound is the unit-scale one times the scale, to its rounding
    from gluon_constraints.catalogue import spectrum
    kernel = RNG.standard_normal((4, 3, 3, 3))
    weight = RNG.standard_normal((5, 7))
    transfer = RNG.standard_normal((6, 4, 3)) + 1j * RNG.standard_normal((6, 4, 3))
    kernel_norm = largest_singular_value(circular_matrix(kernel, (6, 6), (1, 1), (1, 1), 1))
    cases = [(gc.conv_operator_norm(kernel * scale, (6, 6)), kernel_norm),
             (spectrum.dense_operator_norm(weight * scale), largest_singular_value(weight)),
             (spectrum.largest_singular_value(transfer * scale), max(np.linalg.svd(transfer, compute_uv=False)[:, 0]))]
    for bound, true in cases:
        # the true norm of the scaled weight is true * scale up to the scaling's rounding (1 ulp)
        assert true * scale * (1 - 4 * np.finfo(float).eps) <= bound <= true * scale * (1 + 1e-6)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_a_huge_dilation_is_its_remainder_on_the_circle(stride):
    # tap x sits at x * d mod 8 on a circle of 8: d = 8e8 + 3 is d = 3 (the dilated kernel,
    # 2e9 taps wide, once tried to allocate 536 GiB)
    kernel = RNG.standard_normal((3, 2, 3, 3))
    huge = gc.conv_operator_norm(kernel, (8, 8), dilation=(8 * 10 ** 8 + 3, 5), stride=stride)
    small = gc.conv_operator_norm(kernel, (8, 8), dilation=(3, 5), stride=stride)
    exact = largest_singular_value(circular_matrix(kernel, (8, 8), stride, (3, 5), 1))
    assert huge == small and exact <= huge <= exact * (1 + 1e-6)


def test_taps_that_wrap_onto_each_other_and_nearly_cancel_are_summed_exactly():
    # [1, 2^-60, -1] on a circle of 1 is the 1x1 matrix [2^-60]; numpy's sum of the three is 0
    assert 2.0 ** -60 <= gc.conv_operator_norm(np.array([[[1.0, 2.0 ** -60, -1.0]]]), (1,)) <= 2.0 ** -60 * (1 + 1e-6)
    # 5 taps on a circle of 2, cancelling at both positions to their last bits: the exact sums
    # (math.fsum per entry) on the circle give the reference's circular matrix
    kernel = RNG.standard_normal((2, 3, 5))
    kernel[..., 3] = -kernel[..., 1] + 2.0 ** -40 * RNG.standard_normal((2, 3))
    kernel[..., 4] = -(kernel[..., 0] + kernel[..., 2])
    wrapped = np.array([[[math.fsum(row[position::2]) for position in (0, 1)] for row in rows] for rows in kernel])
    exact = largest_singular_value(circular_matrix(wrapped, (2,), (1,), (1,), 1))
    assert 0 < exact < 1e-10 and exact <= gc.conv_operator_norm(kernel, (2,)) <= exact * (1 + 1e-6)


def test_conv_operator_norm_of_a_1x1_convolution_is_the_matrix_norm_at_every_size():
    matrix = RNG.standard_normal((5, 3))
    for size in ((1, 1), (4, 7)):
        assert gc.conv_operator_norm(matrix[:, :, None, None], size) == pytest.approx(
            largest_singular_value(matrix), rel=1e-7)


def test_matrices_with_one_dominant_frequency_and_zero_kernels():
    # an all-ones kernel passes the constant input with gain (channels x taps); zero has norm 0
    assert gc.conv_operator_norm(np.ones((2, 2, 3, 3)), (5, 5)) == pytest.approx(2 * 9, rel=1e-7)
    assert gc.conv_operator_norm(np.zeros((2, 2, 3, 3)), (5, 5)) == 0.0


ZERO_PADDED = [  # layer, input shape
    (lambda: gluon.nn.Conv2D(4, 3, padding=1, in_channels=2), (1, 2, 24, 24)),
    (lambda: gluon.nn.Conv1D(3, 5, padding=2, in_channels=2), (1, 2, 40)),
    (lambda: gluon.nn.Conv2D(4, 3, strides=2, padding=1, in_channels=2), (1, 2, 12, 12)),
    (lambda: gluon.nn.Conv2D(4, 3, strides=2, in_channels=2), (1, 2, 11, 11)),
    (lambda: gluon.nn.Conv2D(4, 3, padding=2, dilation=2, in_channels=2), (1, 2, 10, 10)),
    (lambda: gluon.nn.Conv2D(4, 3, padding=1, groups=2, in_channels=4), (1, 4, 8, 8)),
    (lambda: gluon.nn.Conv2DTranspose(3, 3, padding=1, in_channels=2), (1, 2, 9, 9)),
    (lambda: gluon.nn.Conv2DTranspose(3, 4, strides=2, padding=1, in_channels=2), (1, 2, 6, 6)),
    (lambda: gluon.nn.Conv1DTranspose(2, 3, in_channels=3), (1, 3, 12)),
    (lambda: gluon.nn.Conv3D(2, 3, padding=1, in_channels=2), (1, 2, 5, 5, 5)),
    # small inputs, where some taps read only padding and the circle is smaller than n + 2p
    (lambda: gluon.nn.Conv2D(4, 3, padding=1, in_channels=2), (1, 2, 1, 1)),
    (lambda: gluon.nn.Conv2D(4, 3, strides=2, padding=1, in_channels=2), (1, 2, 2, 2)),
    (lambda: gluon.nn.Conv2D(3, 3, padding=3, in_channels=2), (1, 2, 3, 3)),
    (lambda: gluon.nn.Conv2D(3, 3, padding=2, dilation=2, in_channels=2), (1, 2, 2, 3)),
    (lambda: gluon.nn.Conv2D(3, 1, strides=2, in_channels=4), (1, 4, 6, 6)),
    (lambda: gluon.nn.Conv1D(2, 4, strides=3, padding=3, in_channels=2), (1, 2, 5)),
    (lambda: gluon.nn.Conv2DTranspose(3, 3, strides=2, padding=1, in_channels=2), (1, 2, 1, 2)),
]


@pytest.mark.parametrize("case", range(len(ZERO_PADDED)))
def test_a_convolution_layer_bound_is_at_least_its_true_norm(case):
    make, shape = ZERO_PADDED[case]
    layer = make()
    layer.initialize(mx.init.Normal(1.0))
    layer.cast("float64")
    true = largest_singular_value(operator_matrix(layer, shape))
    bound = gc.lipschitz_bound(layer, shape).bound
    assert true <= bound


@pytest.mark.parametrize("make,shape", [
    (lambda: gluon.nn.Conv2D(4, 3, padding=1, in_channels=3), (1, 3, 1, 1)),          # one live tap
    (lambda: gluon.nn.Conv2D(5, 3, strides=2, padding=1, in_channels=3), (1, 3, 2, 2)),  # one output
    (lambda: gluon.nn.Conv2D(6, 1, strides=2, in_channels=4), (1, 4, 8, 8)),          # a 1x1 downsampling
])
def test_the_bound_is_exact_where_the_zero_padded_convolution_is_one_matrix(make, shape):
    # each of these is a single matrix applied to every position: its norm, not a circle's
    layer = make()
    layer.initialize(mx.init.Normal(1.0))
    layer.cast("float64")
    true = largest_singular_value(operator_matrix(layer, shape))
    assert true <= gc.lipschitz_bound(layer, shape).bound <= true * (1 + 1e-6)


@pytest.mark.parametrize("shape,size,dilation", [
    ((3, 2, 3, 3), (7, 8), (1, 1)),      # odd and even sides
    ((2, 4, 3, 2), (6, 5), (2, 3)),      # dilated
    ((2, 2, 4), (5,), (2,)),             # taps that wrap onto each other
])
def test_transfer_matrices_and_taps_of_are_numpys_fft_on_the_grid(shape, size, dilation):
    # the direct transforms against numpy's rfftn of the kernel on its grid and irfftn read at the taps
    from gluon_constraints.catalogue.spectrum import on_grid, tap_angles, tap_positions, taps_of, transfer_matrices
    kernel = RNG.standard_normal(shape)
    a, b = shape[:2]
    angles = tap_angles(shape[2:], size, dilation)
    axes = tuple(range(2, 2 + len(size)))
    spectrum = np.fft.rfftn(on_grid(kernel, size, dilation), axes=axes).reshape(a, b, -1)
    transfer = transfer_matrices(kernel.reshape(a, b, -1), angles)
    np.testing.assert_allclose(transfer, spectrum.transpose(2, 0, 1), rtol=0, atol=1e-12 * np.abs(kernel).sum())
    # a spectrum that is no kernel's (random): irfftn reads it as numpy defines it
    matrices = RNG.standard_normal(transfer.shape) + 1j * RNG.standard_normal(transfer.shape)
    grid = np.fft.irfftn(matrices.transpose(1, 2, 0).reshape(a, b, *size[:-1], size[-1] // 2 + 1), s=size, axes=axes)
    expected = grid.reshape(a, b, -1)[:, :, tap_positions(shape[2:], size, dilation)]
    np.testing.assert_allclose(taps_of(matrices, angles, size), expected, rtol=0, atol=1e-13 * np.abs(matrices).sum())


def test_largest_eigenvalue_is_exact_when_many_matrices_share_nearly_the_same_top():
    # the flat tops of random convolutions' spectra: the estimates rank them wrongly at times,
    # and the certified maximum must still be the true one
    from gluon_constraints.catalogue.spectrum import CANDIDATE_MARGIN, _largest_eigenvalue_bound
    rng = np.random.default_rng(3)
    vectors = np.linalg.qr(rng.standard_normal((40, 24, 24)) + 1j * rng.standard_normal((40, 24, 24)))[0]
    values = np.sort(rng.uniform(0.0, 1.0, (40, 24)), axis=1)
    values[:, -1] = 1.0 + rng.uniform(0.0, 1e-6, 40)                    # tops within 1e-6 of each other
    values[:, -2] = values[:, -1] * (1 - rng.uniform(0.0, 1e-3, 40))   # and a close second in each
    gram = vectors @ (values[..., None] * np.conj(np.swapaxes(vectors, 1, 2)))
    exact = np.linalg.eigvalsh(gram)[:, -1].max()
    assert exact <= _largest_eigenvalue_bound(gram) <= exact * (1 + 2 * CANDIDATE_MARGIN)


def test_lanczos_estimates_stay_below_the_top_of_low_rank_matrices():
    # more steps than the rank: the Krylov space runs out, and the rounding left over must not
    # become a direction (it gave Ritz values 17 times the largest eigenvalue)
    from gluon_constraints.catalogue.spectrum import _ritz_values
    rng = np.random.default_rng(5)
    for rank in (1, 2, 3, 4):
        factor = rng.standard_normal((30, rank)) + 1j * rng.standard_normal((30, rank))
        gram = factor @ np.conj(factor.T)
        top = np.linalg.eigvalsh(gram)[-1]
        assert _ritz_values(gram[None], 20)[0] <= top * (1 + 4 * 30 * np.finfo(float).eps)


@pytest.mark.parametrize("spectrum", ["spread", "close_top", "low_rank", "zero"])
def test_the_top_eigenvalue_is_within_the_margin_of_lapacks(monkeypatch, spectrum):
    # Lanczos with one Cholesky certificate, or the eigensolver where that fails: either way
    # theta <= lambda <= theta (1 + CANDIDATE_MARGIN)
    from gluon_constraints.catalogue import spectrum as module
    rng = np.random.default_rng(9)
    n = 300
    values = {"spread": rng.uniform(0.0, 1.0, n),
              "close_top": np.concatenate([rng.uniform(0.0, 1.0, n - 2), [1.0 - 1e-6, 1.0]]),
              "low_rank": np.concatenate([np.zeros(n - 3), rng.uniform(1.0, 2.0, 3)]),
              "zero": np.zeros(n)}[spectrum]
    vectors = np.linalg.qr(rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n)))[0]
    gram = (vectors * values) @ np.conj(vectors.T)
    gram = (gram + np.conj(gram.T)) / 2
    exact = np.linalg.eigvalsh(gram)[-1]
    solver_calls = []
    solver = module._largest_eigenvalue
    monkeypatch.setattr(module, "_largest_eigenvalue", lambda g: solver_calls.append(1) or solver(g))
    theta = module._top_eigenvalue(gram.copy())
    rounding = 4 * n * np.finfo(float).eps * values.max()
    assert theta - rounding <= exact <= theta * (1 + module.CANDIDATE_MARGIN) + rounding
    if spectrum == "close_top":  # a gap of 1e-6: 40 steps do not resolve it to 1e-7
        assert solver_calls


@pytest.mark.parametrize("shape", [(64, 64), (64, 1000), (1000, 64), (256, 4096)])
@pytest.mark.parametrize("spread", ["orthogonal", "gaussian"])
def test_dense_norms_with_spectra_bunched_away_from_zero(shape, spread):
    # orthogonal and tall or wide Gaussian matrices have every singular value within a small
    # factor of the top: Lanczos vectors reorthogonalised once lost their orthogonality there,
    # and the Ritz value (a Dense layer's "exact" norm) came out 4 to 8 times the true one
    from gluon_constraints.catalogue import spectrum
    rng = np.random.default_rng(12)
    weight = rng.standard_normal(shape)
    if spread == "orthogonal":
        q = np.linalg.qr(rng.standard_normal((max(shape), max(shape))))[0]
        weight = q[:shape[0], :shape[1]].astype(np.float32).astype(np.float64)  # float32-rounded
    true = largest_singular_value(weight)
    assert true <= spectrum.dense_operator_norm(weight) <= true * (1 + 2 * spectrum.CANDIDATE_MARGIN)


def test_a_lanczos_value_that_went_wrong_is_caught_by_its_lower_certificate(monkeypatch):
    # the upper Cholesky test passes any value above the top; the lower one must send a value
    # far above it to the eigensolver
    from gluon_constraints.catalogue import spectrum
    rng = np.random.default_rng(13)
    factor = rng.standard_normal((40, 40))
    gram = factor @ factor.T
    exact = np.linalg.eigvalsh(gram)[-1]
    monkeypatch.setattr(spectrum, "_ritz_values", lambda g, steps: np.array([48.0 * exact]))
    assert exact <= spectrum._top_eigenvalue(gram) * (1 + spectrum.CANDIDATE_MARGIN) <= exact * (1 + 2e-7)


@pytest.mark.parametrize("declared,shape", [((8, 8), (1, 2, 32, 32)), ((4, 4), (1, 2, 16, 16)),
                                            ((16, 16), (1, 2, 16, 16))])
def test_an_operator_norm_on_another_input_size_does_not_lower_the_bound(declared, shape):
    # the constraint holds the norm on its own circle, 10x10 for 8x8 inputs: a 32x32 input's
    # convolution is not in it, and its norm can be above max_value
    layer = nn.Conv2D(2, 3, padding=1, in_channels=2,
                      weight_constraint=gc.OperatorNorm(1.0, input_shape=declared, padding=1))
    layer.initialize(mx.init.Normal(1.0))
    layer.cast("float64")
    gc.apply_constraints(layer)
    true = largest_singular_value(operator_matrix(layer, shape))
    assert true <= gc.lipschitz_bound(layer, shape).bound <= true * 1.05


def test_the_bound_of_a_padded_convolution_on_a_realistic_input_is_within_one_percent():
    layer = gluon.nn.Conv2D(4, 3, padding=1, in_channels=2)
    layer.initialize(mx.init.Normal(1.0))
    layer.cast("float64")
    shape = (1, 2, 24, 24)
    true = largest_singular_value(operator_matrix(layer, shape))
    assert true <= gc.lipschitz_bound(layer, shape).bound <= true * 1.01


def test_a_dense_layer_bound_is_its_largest_singular_value():
    layer = gluon.nn.Dense(7, in_units=11)
    layer.initialize(mx.init.Normal(1.0))
    result = gc.lipschitz_bound(layer, (1, 11))
    exact = largest_singular_value(layer.weight.data().asnumpy())
    assert exact <= result.bound <= exact * (1 + 1e-6)
    assert [(row.bound, row.exact) for row in result.layers] == [(result.bound, True)]


# -- lipschitz_bound: never below the network's local Lipschitz constants -------------------------------
def mlp():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(16, activation="tanh", in_units=8), gluon.nn.Dense(16, in_units=16),
            gluon.nn.LeakyReLU(0.2), gluon.nn.Dropout(0.5), gluon.nn.Dense(12, activation="sigmoid"),
            gluon.nn.GELU(), gluon.nn.Dense(4))
    return net, (1, 8)


def convnet():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Conv2D(6, 3, padding=1, in_channels=2), gluon.nn.BatchNorm(in_channels=6),
            gluon.nn.Activation("relu"), gluon.nn.MaxPool2D(2), gluon.nn.Conv2D(6, 3, strides=2, padding=1),
            gluon.nn.ELU(1.5), gluon.nn.AvgPool2D(3, strides=1, padding=1), gluon.nn.Conv2D(4, 1),
            gluon.nn.PReLU(), gluon.nn.GlobalAvgPool2D(), gluon.nn.Flatten(), gluon.nn.Dense(3))
    return net, (1, 2, 12, 12)


def branches():
    net = gluon.nn.HybridSequential()
    concurrent = gluon.contrib.nn.HybridConcurrent(axis=1)
    concurrent.add(gluon.nn.Dense(5, in_units=6), gluon.contrib.nn.Identity(), gluon.nn.Dense(3, in_units=6))
    net.add(concurrent, gluon.nn.Activation("softrelu"), gluon.nn.Dense(4))
    return net, (1, 6)


NETWORKS = {
    "mlp": mlp,
    "convnet": convnet,
    "concurrent": branches,
    "resnet18_v1": lambda: (vision.resnet18_v1(classes=5), (1, 3, 32, 32)),
    "resnet18_v2": lambda: (vision.resnet18_v2(classes=5), (1, 3, 32, 32)),
    "resnet50_v2": lambda: (vision.resnet50_v2(classes=4), (1, 3, 32, 32)),
}


def initialized(name):
    net, shape = NETWORKS[name]()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net(mx.nd.zeros(shape))
    for pattern, low, high in ((".*gamma", -1.5, 1.5), (".*running_var", 0.5, 2.0)):  # statistics as if trained
        for param in net.collect_params(pattern).values():
            param.set_data(mx.nd.array(RNG.uniform(low, high, param.shape)))
    return net, shape


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_the_bound_is_never_below_the_jacobian_norm_at_random_points(name):
    net, shape = initialized(name)
    bound = gc.lipschitz_bound(net, shape).bound
    for _ in range(3):
        x = mx.nd.array(RNG.standard_normal(shape))
        assert jacobian_norm(net, x) <= bound * (1 + 1e-5)  # float32 forward and backward


@pytest.mark.parametrize("name", ["mlp", "convnet", "resnet18_v1"])
def test_outputs_move_at_most_bound_times_the_input_move(name):
    net, shape = initialized(name)
    bound = gc.lipschitz_bound(net, shape).bound
    x = mx.nd.array(RNG.standard_normal((16, *shape[1:])))
    y = x + mx.nd.array(RNG.standard_normal(x.shape)) * 0.01
    with autograd.pause(train_mode=False):
        moved = (net(x) - net(y)).asnumpy().reshape(16, -1)
    steps = (x - y).asnumpy().reshape(16, -1)
    assert (np.linalg.norm(moved, axis=1) <= bound * np.linalg.norm(steps, axis=1) * (1 + 1e-5)).all()


def test_the_breakdown_multiplies_to_the_bound_along_a_chain():
    net, shape = initialized("mlp")
    result = gc.lipschitz_bound(net, shape)
    kinds = [row.kind.split(" ")[0] for row in result.layers]
    assert kinds == ["Dense", "Activation", "Dense", "LeakyReLU(alpha=0.2)", "Dropout", "Dense", "Activation",
                     "GELU", "Dense"]
    assert math.prod(row.bound for row in result.layers) == pytest.approx(result.bound, rel=1e-12)
    slopes = {row.kind: row.bound for row in result.layers if not row.kind.startswith("Dense")}
    assert slopes["Activation tanh"] == 1.0 and slopes["Activation sigmoid"] == 0.25
    assert slopes["GELU"] == pytest.approx(1.1289, abs=1e-4)


def test_batch_norm_is_bounded_by_its_largest_gamma_over_the_running_deviation():
    norm = gluon.nn.BatchNorm(in_channels=3, epsilon=1e-3)
    norm.initialize()
    norm.gamma.set_data(mx.nd.array([0.5, -3.0, 1.0]))
    variance = np.array([0.25, 4.0, 0.01], dtype=np.float32)
    norm.running_var.set_data(mx.nd.array(variance))
    expected = max(0.5 / math.sqrt(variance[0] + 1e-3), 3.0 / math.sqrt(variance[1] + 1e-3),
                   1.0 / math.sqrt(float(variance[2]) + 1e-3))
    assert gc.lipschitz_bound(norm, (1, 3, 4, 4)).bound == pytest.approx(expected, rel=1e-8)


def test_a_residual_block_is_bounded_by_the_sum_of_its_branches():
    net, shape = initialized("resnet18_v1")
    rows = gc.lipschitz_bound(net, shape).layers
    first = [row.kind for row in rows].index("residual sum (body + shortcut), then ReLU")
    body = rows[first - 5:first]    # stage 1's first block: conv, BN, ReLU, conv, BN; identity shortcut
    assert [row.name for row in body] == [child.name for child in net.features[4][0].body]
    assert rows[first].bound == pytest.approx(math.prod(row.bound for row in body) + 1.0, rel=1e-12)


# -- what it refuses ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("block,named", [
    (lambda: gluon.nn.Embedding(10, 4), "embedding"),
    (lambda: gluon.nn.LayerNorm(in_channels=4), "layernorm"),
    (lambda: gluon.nn.HybridLambda(lambda F, x: x * 2), "hybridlambda"),
])
def test_a_block_it_cannot_bound_is_named(block, named):
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=4), block())
    net.initialize()
    with pytest.raises(gc.CertificationError, match=f"cannot bound block '[^']*{named}"):
        gc.lipschitz_bound(net, (1, 4))


def test_an_activation_without_a_known_constant_is_refused():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4, in_units=4), gluon.nn.Activation("log_sigmoid"))
    net.initialize()
    with pytest.raises(gc.CertificationError, match="activation 'log_sigmoid'"):
        gc.lipschitz_bound(net, (1, 4))


def test_register_lipschitz_checks_its_arguments():
    with pytest.raises(gc.CertificationError, match="block class and a callable rule"):
        gc.register_lipschitz("Dense", lambda block, x, walk: (1.0, x))


# -- OperatorNorm ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,size,padding,groups", [
    ((6, 4, 3, 3), (6, 6), 1, 1),
    ((4, 4, 3, 3), (5, 7), 0, 2),
    ((5, 3, 5), (9,), 2, 1),
])
def test_operator_norm_projects_onto_the_exact_norm_ball(shape, size, padding, groups):
    constraint = gc.OperatorNorm(1.5, input_shape=size, padding=padding, groups=groups)
    kernel = RNG.standard_normal(shape) * 3.0
    padded = tuple(n + 2 * padding for n in size)
    ones = (1,) * len(size)
    assert largest_singular_value(circular_matrix(kernel, padded, ones, ones, groups)) > 1.5
    projected = constraint(mx.nd.array(kernel, dtype=np.float64)).asnumpy()
    after = largest_singular_value(circular_matrix(projected, padded, ones, ones, groups))
    assert after <= 1.5 * (1 + constraint.tolerance)
    assert np.linalg.norm(projected - kernel) < np.linalg.norm(kernel)      # moved, not zeroed
    again = constraint(mx.nd.array(projected, dtype=np.float64)).asnumpy()
    assert again.tobytes() == projected.tobytes()                            # inside: unchanged


def test_operator_norm_on_a_dense_weight_clips_its_singular_values():
    weight = RNG.standard_normal((6, 4))
    u, s, vt = np.linalg.svd(weight, full_matrices=False)
    projected = gc.OperatorNorm(1.0)(mx.nd.array(weight, dtype=np.float64)).asnumpy()
    np.testing.assert_allclose(projected, (u * np.minimum(s, 1.0)) @ vt, rtol=1e-10, atol=1e-12)


def test_operator_norm_layers_train_to_a_certified_bound():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(6, 3, padding=1, in_channels=2,
                      weight_constraint=gc.OperatorNorm(0.8, input_shape=(8, 8), padding=1)),
            nn.Activation("relu"), nn.Flatten(), nn.Dense(3, weight_constraint=gc.OperatorNorm(0.8)))
    net.initialize(mx.init.Normal(1.0))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    x = mx.nd.array(RNG.standard_normal((4, 2, 8, 8)))
    for _ in range(3):
        with autograd.record():
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x), mx.nd.array([0, 1, 2, 0]))
        loss.backward()
        trainer.step(4)
    gc.verify_constraints(trainer)
    conv = net[0].weight.data().asnumpy().astype(np.float64)
    assert largest_singular_value(circular_matrix(conv, (10, 10), (1, 1), (1, 1), 1)) <= 0.8 * (1 + 1e-3)
    rows = gc.lipschitz_bound(net, (1, 2, 8, 8)).layers
    assert rows[0].bound <= 0.8 * (1 + 1e-3) and rows[-1].bound <= 0.8 * (1 + 1e-6)


def test_operator_norm_channels_last_and_transposed_layouts():
    for channels_last, layer in ((True, nn.Conv2D(4, 3, padding=1, in_channels=3, layout="NHWC")),
                                 (False, nn.Conv2DTranspose(4, 3, padding=1, in_channels=3))):
        constraint = gc.OperatorNorm(0.5, input_shape=(6, 6), padding=1)
        gc.attach(layer.weight, constraint, layer=layer)
        layer.initialize(mx.init.Normal(2.0))
        gc.apply_constraints(layer)
        weight = layer.weight.data().asnumpy().astype(np.float64)
        kernel = np.moveaxis(weight, -1, 1) if channels_last else weight
        assert gc.conv_operator_norm(kernel, (8, 8)) <= 0.5 * (1 + 1e-3)


@pytest.mark.parametrize("arguments,message", [
    (dict(max_value=0.0), "max_value"),
    (dict(input_shape=(0, 4)), "input_shape must be ints >= 1"),
    (dict(input_shape="8"), "input_shape must be ints >= 1"),
    (dict(padding=-1), "padding must be ints >= 0"),
    (dict(groups=0), "groups must be an int >= 1"),
    (dict(tolerance=-1e-3), "tolerance"),
    (dict(iterations=1.5), "iterations must be an int >= 1"),
])
def test_operator_norm_refuses_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        gc.OperatorNorm(**arguments)


@pytest.mark.parametrize("constraint,shape,message", [
    (gc.OperatorNorm(1.0), (4, 3, 3, 3), "needs input_shape"),
    (gc.OperatorNorm(1.0, input_shape=(8, 8, 8)), (4, 3, 3, 3), "input_shape .* has 3 entries"),
    (gc.OperatorNorm(1.0, input_shape=8, groups=3), (4, 3, 3, 3), "groups=3 does not divide"),
    (gc.OperatorNorm(1.0, input_shape=8), (4,), "needs a Dense or convolution weight"),
])
def test_operator_norm_refuses_a_weight_it_cannot_bound_and_changes_nothing(constraint, shape, message):
    layer = gluon.nn.Dense(4, in_units=3) if len(shape) == 1 else gluon.nn.Conv2D(4, 3, in_channels=3)
    layer.initialize()
    param = layer.bias if len(shape) == 1 else layer.weight
    before = param.data().asnumpy().copy()
    with pytest.raises(gc.ConstraintShapeError, match=message):
        gc.attach(param, constraint, layer=layer)
    assert getattr(param, "constraint", None) is None
    assert param.data().asnumpy().tobytes() == before.tobytes()


# -- certified radius and accuracy --------------------------------------------------------------------
def classifier():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(32, activation="relu", in_units=10), gluon.nn.Dense(5))
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


def test_certified_radius_is_the_margin_over_sqrt2_times_the_bound():
    net = classifier()
    x = mx.nd.array(RNG.standard_normal((20, 10)))
    bound = gc.lipschitz_bound(net, (1, 10)).bound
    scores = np.sort(net(x).asnumpy().astype(np.float64), axis=1)
    expected = (scores[:, -1] - scores[:, -2]) / (math.sqrt(2) * bound)
    np.testing.assert_allclose(gc.certified_radius(net, x), expected, rtol=1e-6)
    np.testing.assert_allclose(gc.certified_radius(net, x, bound=2 * bound), expected / 2, rtol=1e-6)


def test_no_attack_finds_an_adversarial_example_inside_a_certified_radius():
    net = classifier()
    x = mx.nd.array(RNG.standard_normal((20, 10)))
    radius = gc.certified_radius(net, x)
    labels = net(x).argmax(axis=1)
    for restart in range(8):  # projected gradient ascent on the cross-entropy, from random starts
        delta = mx.nd.array(RNG.standard_normal(x.shape))
        delta = delta / mx.nd.norm(delta, axis=1, keepdims=True) * mx.nd.array(radius[:, None] * RNG.uniform(0, 1))
        for _ in range(30):
            delta.attach_grad()
            with autograd.record():
                loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x + delta), labels)
            loss.backward()
            step = delta.grad / (mx.nd.norm(delta.grad, axis=1, keepdims=True) + 1e-12)
            delta = delta + step * mx.nd.array(radius[:, None] * 0.25)
            length = mx.nd.norm(delta, axis=1, keepdims=True) + 1e-30
            delta = delta * mx.nd.minimum(mx.nd.array(radius[:, None]) / length, 1.0)
        attacked = net(x + delta).argmax(axis=1)
        assert (attacked == labels).asnumpy().all(), restart


def test_certified_accuracy_counts_correct_examples_with_radius_at_least_epsilon():
    net = classifier()
    x = mx.nd.array(RNG.standard_normal((30, 10)))
    predicted = net(x).argmax(axis=1).asnumpy()
    labels = np.where(np.arange(30) % 3 == 0, (predicted + 1) % 5, predicted)      # a third wrong
    radius = gc.certified_radius(net, x)
    batches = [(x[:16], mx.nd.array(labels[:16])), (x[16:], labels[16:])]
    epsilons = [0.0, float(np.median(radius)), 10.0]
    expected = {e: float(np.mean((predicted == labels) & (radius >= e))) for e in epsilons}
    assert gc.certified_accuracy(net, batches, epsilons) == expected
    assert gc.certified_accuracy(net, batches, epsilons[1]) == expected[epsilons[1]]


@pytest.mark.parametrize("call,message", [
    (lambda net, x: gc.certified_radius(net, x, bound=0.0), "bound must be a positive finite"),
    (lambda net, x: gc.certified_radius(net, x, bound=float("nan")), "bound must be a positive finite"),
    (lambda net, x: gc.certified_accuracy(net, [(x, [0] * len(x))], -1.0), "epsilon must be finite numbers >= 0"),
    (lambda net, x: gc.certified_accuracy(net, [], 0.1), "no examples"),
])
def test_certification_refuses_bad_arguments(call, message):
    with pytest.raises(gc.CertificationError, match=message):
        call(classifier(), mx.nd.array(RNG.standard_normal((4, 10))))


# -- found by trying it as a hostile user would ------------------------------------------------------------
def test_a_subclass_that_changes_the_computation_is_refused():
    class Scaled(gluon.nn.Dense):
        def hybrid_forward(self, F, x, weight, bias=None):
            return 100 * super().hybrid_forward(F, x, weight, bias)

    layer = Scaled(3, in_units=4)
    layer.initialize()
    with pytest.raises(gc.CertificationError, match="subclasses Dense but overrides hybrid_forward"):
        gc.lipschitz_bound(layer, (1, 4))


@pytest.mark.parametrize("make,shape", [
    (lambda: gluon.nn.AvgPool2D(2, 2, ceil_mode=True), (1, 1, 3, 3)),     # border windows of one entry
    (lambda: gluon.nn.AvgPool1D(4, 3, ceil_mode=True), (1, 1, 5)),
    (lambda: gluon.nn.AvgPool2D(3, 2, padding=1, count_include_pad=False), (1, 1, 5, 5)),
    (lambda: gluon.nn.AvgPool2D(3, 2, padding=1), (1, 1, 5, 5)),
])
def test_average_pooling_bounds_hold_for_cut_and_padded_windows(make, shape):
    pool = make()
    true = largest_singular_value(operator_matrix(pool, shape))
    assert true <= gc.lipschitz_bound(pool, shape, ctx=mx.cpu()).bound * (1 + 1e-12)


def test_certified_accuracy_reads_column_labels_and_refuses_one_hot_ones():
    net = classifier()
    x = mx.nd.array(RNG.standard_normal((12, 10)))
    labels = net(x).argmax(axis=1).asnumpy()
    flat = gc.certified_accuracy(net, [(x, labels)], [0.0, 0.05])
    assert gc.certified_accuracy(net, [(x, labels.reshape(-1, 1))], [0.0, 0.05]) == flat
    assert gc.certified_accuracy(net, [(x.asnumpy(), labels)], np.array(0.0)) == flat[0.0] == 1.0
    with pytest.raises(gc.CertificationError, match=r"one class index per example: got labels of shape \(12, 5\)"):
        gc.certified_accuracy(net, [(x, np.eye(5)[labels.astype(int)])], 0.0)


@pytest.mark.parametrize("arguments,message", [
    (dict(size=(0, 0)), r"size must be 2 ints >= 1"),
    (dict(size=(4,)), r"size must be 2 ints >= 1"),
    (dict(dilation=(0, 1)), r"dilation must be 2 ints >= 1"),
    (dict(stride=(2,)), r"stride must be 2 ints >= 1"),
    (dict(groups=3), r"groups must be an int >= 1 that divides axis 0"),
    (dict(kernel=np.full((2, 2, 3, 3), np.nan)), "NaN or infinite"),
    (dict(kernel=np.ones((2, 2, 3, 3)) * 1j), "must be a real array"),
    (dict(kernel=np.ones((2, 3))), "must be a real array"),
    (dict(kernel=np.ones((4, 3, 0, 3))), r"no entries: got shape \(4, 3, 0, 3\)"),
    (dict(kernel=np.ones((0, 3, 3, 3))), r"no entries: got shape \(0, 3, 3, 3\)"),
])
def test_conv_operator_norm_names_a_bad_argument(arguments, message):
    call = dict(kernel=np.ones((2, 2, 3, 3)), size=(6, 6))
    call.update(arguments)
    kernel, size = call.pop("kernel"), call.pop("size")
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.conv_operator_norm(kernel, size, **call)


def test_operator_norm_passes_non_finite_weights_through_and_refuses_a_vector():
    weights = mx.nd.array(np.full((2, 2, 3, 3), np.nan))
    out = gc.OperatorNorm(1.0, input_shape=4)(weights)
    assert np.isnan(out.asnumpy()).all()
    with pytest.raises(gc.ConstraintShapeError, match="needs a Dense or convolution weight"):
        gc.OperatorNorm(1.0, input_shape=4)(mx.nd.ones((3,)))
