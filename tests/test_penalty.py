"""gc.penalty (docs/training.md#soft-constraints-a-penalty-instead-of-a-projection): values and
gradients against numpy formulas."""

import mxnet as mx
import numpy as np
from mxnet import autograd

import gluon_constraints as gc
from gluon_constraints import nn

TWO = [mx.cpu(0), mx.cpu(1)]


def test_penalty_is_the_squared_excess_over_the_bounds_and_its_gradient():
    rng = np.random.default_rng(4)
    net = nn.HybridSequential()
    net.add(nn.Dense(6, in_units=4, weight_constraint=gc.MaxNorm(1.0), bias_constraint=gc.NonNeg()),
            nn.Dense(3, in_units=6))  # unconstrained: no term
    net.initialize(mx.init.Normal(1.0))
    net[0].bias.set_data(mx.nd.array(rng.normal(0, 1, 6)))
    w, b = net[0].weight.data().asnumpy().astype(np.float64), net[0].bias.data().asnumpy().astype(np.float64)
    n = np.sqrt((w ** 2).sum(axis=1))
    expected = (np.maximum(n - 1.0, 0) ** 2).sum() + (np.minimum(b, 0) ** 2).sum()
    with autograd.record():
        value = gc.penalty(net)
    value.backward()
    np.testing.assert_allclose(value.asscalar(), expected, rtol=1e-5)
    nearest = w * (1.0 / np.maximum(n, 1.0))[:, None]
    np.testing.assert_allclose(net[0].weight.grad().asnumpy(), 2 * (w - nearest), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net[0].bias.grad().asnumpy(), 2 * np.minimum(b, 0), rtol=1e-5)
    assert np.all(net[1].weight.grad().asnumpy() == 0)


def test_penalty_is_zero_inside_and_uses_the_asked_context():
    net = nn.Dense(3, in_units=2, weight_constraint=gc.MaxNorm(10.0))
    net.initialize(mx.init.Constant(0.1), ctx=TWO)
    value = gc.penalty(net, ctx=mx.cpu(1))
    assert value.context == mx.cpu(1) and value.asscalar() == 0.0
    plain = nn.Dense(3, in_units=2)
    plain.initialize()
    assert gc.penalty(plain).asnumpy().tolist() == [0.0]


def test_training_with_the_penalty_shrinks_the_excess():
    net = nn.Dense(4, in_units=3, weight_constraint=gc.MaxNorm(0.5))
    net.initialize(mx.init.Normal(2.0))
    trainer = mx.gluon.Trainer([net.weight], "sgd", {"learning_rate": 0.1})
    before = gc.penalty(net).asscalar()
    for _ in range(20):
        with autograd.record():
            loss = gc.penalty(net)
        loss.backward()
        trainer.step(1)
    after = gc.penalty(net).asscalar()
    assert before > 0.1 and after < before * 0.05
