"""RadialConstraint on every 2-D convolution layout (docs/constraints.md, "RadialConstraint")."""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import gluon_constraints as gc
from gluon_constraints import nn


def tf_keras_radial(kernel):
    """tf.keras's RadialConstraint._kernel_constraint on one (k, k) slice, in numpy."""
    size = kernel.shape[0]
    start = size // 2
    if size % 2:
        new, index = kernel[start - 1:start, start - 1:start], 0
    else:
        new, index = kernel[start - 1:start, start - 1:start] + np.zeros((2, 2)), 1
    while index < start:
        new = np.pad(new, 1, constant_values=kernel[start + index, start + index])
        index += 1
    return new


def rings(size):
    """Ring number of each cell: Chebyshev distance from the centre (or the central block)."""
    middle = (size - 1) / 2.0
    distance = np.abs(np.arange(size) - middle) - (0.5 if size % 2 == 0 else 0.0)
    return np.maximum.outer(distance, distance).astype(int)


@pytest.mark.parametrize("size", [2, 4, 6])
def test_even_kernels_give_tf_keras_numbers(size, rng):
    kernel = rng.normal(size=(size, size)).astype(np.float32)
    ours = gc.RadialConstraint()(mx.nd.array(kernel[None, None])).asnumpy()[0, 0]
    np.testing.assert_array_equal(ours, tf_keras_radial(kernel))


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_odd_kernels_keep_each_rings_own_value_where_tf_keras_shifts_it(size, rng):
    kernel = rng.normal(size=(size, size)).astype(np.float32)
    ours = gc.RadialConstraint()(mx.nd.array(kernel[None, None])).asnumpy()[0, 0]
    ring, centre = rings(size), size // 2
    for r in range(centre + 1):
        assert np.all(ours[ring == r] == kernel[centre + r, centre + r])
    again = gc.RadialConstraint()(mx.nd.array(ours[None, None])).asnumpy()[0, 0]
    np.testing.assert_array_equal(again, ours)  # a projection: twice equals once
    if size > 1:
        twice = tf_keras_radial(tf_keras_radial(kernel))
        assert not np.array_equal(twice, tf_keras_radial(kernel))  # tf.keras's is not


LAYERS = [
    ("Conv2D-NCHW", lambda: nn.Conv2D(4, 3, in_channels=2, weight_constraint=gc.RadialConstraint()), (2, 3)),
    ("Conv2D-NHWC", lambda: nn.Conv2D(4, 4, in_channels=2, layout="NHWC",
                                      weight_constraint=gc.RadialConstraint()), (1, 2)),
    ("Conv2DTranspose-NCHW", lambda: nn.Conv2DTranspose(4, 5, in_channels=2,
                                                        weight_constraint=gc.RadialConstraint()), (2, 3)),
    ("Conv2DTranspose-NHWC-grouped", lambda: nn.Conv2DTranspose(4, 3, in_channels=4, groups=2, layout="NHWC",
                                                                weight_constraint=gc.RadialConstraint()), (1, 2)),
]


@pytest.mark.parametrize("build,kernel_axes", [case[1:] for case in LAYERS], ids=[case[0] for case in LAYERS])
def test_every_layout_makes_each_kernel_slice_radial(build, kernel_axes, rng):
    layer = build()
    layer.initialize()
    w = rng.normal(size=layer.weight.shape).astype(np.float32)
    layer.weight.set_data(mx.nd.array(w))
    gc.apply_constraints(layer)
    moved = np.moveaxis(w, kernel_axes, (2, 3))
    expected = np.empty_like(moved)
    size = moved.shape[-1]
    ring, centre = rings(size), size // 2
    for a in range(moved.shape[0]):
        for b in range(moved.shape[1]):
            for r in range(ring.max() + 1):
                source = (centre - 1, centre - 1) if size % 2 == 0 and r == 0 else (centre + r, centre + r)
                expected[a, b][ring == r] = moved[a, b][source]
    np.testing.assert_array_equal(layer.weight.data().asnumpy(), np.moveaxis(expected, (2, 3), kernel_axes))


def test_the_trainer_keeps_kernels_radial():
    layer = nn.Conv2D(3, 3, in_channels=2, weight_constraint=gc.RadialConstraint())
    layer.initialize()
    trainer = gc.ConstrainedTrainer(layer.collect_params(), "adam", {"learning_rate": 0.1})
    for _ in range(2):
        with autograd.record():
            loss = layer(mx.nd.random.normal(shape=(2, 2, 5, 5))).sum()
        loss.backward()
        trainer.step(2)
    w = layer.weight.data().asnumpy()
    ring = rings(3)
    for slice_ in w.reshape(-1, 3, 3):
        assert np.all(slice_[ring == 1] == slice_[2, 2])
    trainer.verify_constraints()


@pytest.mark.parametrize("build,message", [
    (lambda: nn.Dense(3, in_units=4, weight_constraint=gc.RadialConstraint()),
     "RadialConstraint for parameter '\\S+' needs a 2-D convolution weight \\(4 dimensions\\): got shape \\(3, 4\\)"),
    (lambda: nn.Conv2D(3, (3, 2), in_channels=1, weight_constraint=gc.RadialConstraint()),
     "RadialConstraint for parameter '\\S+' needs square kernels: got 3x2 on axes \\(2, 3\\)"),
], ids=["Dense", "non-square"])
def test_weights_that_are_no_square_2d_kernels_are_refused_at_attach(build, message):
    with pytest.raises(gc.ConstraintShapeError, match=message):
        build()


def test_radial_constraint_round_trips_and_comes_from_keras():
    c = gc.RadialConstraint(axis=(1, 2))
    assert gc.deserialize(gc.serialize(c)) == c
    assert gc.get("radial_constraint") == gc.RadialConstraint()
    assert gc.from_keras({"class_name": "RadialConstraint", "config": {}}, nn.Conv2D(3, 3)) == gc.RadialConstraint()
    expected = (r"must name the kernel's two spatial axes, e.g. \(2, 3\) "
                r"for an NCHW Conv2D weight, or be None \(the layer's\): got 1")
    with pytest.raises(gc.ConstraintArgumentError, match=expected):
        gc.RadialConstraint(axis=1)
