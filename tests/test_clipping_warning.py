"""The warning when a constraint fights the learning rate (docs/training.md, "When the constraint
fights the learning rate"): most units moved on most steps of a window, once per parameter."""

import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn


def network(bound, ctx):
    # Seeded: a unit whose second-layer weights are near zero gets a tiny update and may stay in
    # the ball on a step; which units do depends on the initialization (earlier tests move
    # MXNet's global random state).
    mx.random.seed(11)
    net = nn.HybridSequential()
    net.add(nn.Dense(8, in_units=4, weight_constraint=gc.MaxNorm(bound)),     # linear: every unit learns
            nn.Dense(2, in_units=8, weight_constraint=gc.MaxNorm(1e9)))
    net.initialize(mx.init.Normal(1.0), ctx=ctx)
    return net


def train(net, trainer, steps, ctx):
    rng = np.random.default_rng(0)
    caught = []
    for _ in range(steps):
        x = mx.nd.array(rng.standard_normal((8, 4)))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            parts = gluon.utils.split_and_load(x, ctx)
            with autograd.record():
                losses = [net(part).sum() for part in parts]
            for loss in losses:
                loss.backward()
            trainer.step(8)
        caught += [w for w in seen if issubclass(w.category, gc.ClippingWarning)]
    return caught


@pytest.mark.parametrize("contexts", [1, 2])
def test_a_bound_that_clips_every_step_warns_once_naming_the_parameter(contexts):
    ctx = [mx.cpu(i) for i in range(contexts)]
    net = network(0.01, ctx)  # every step's update pushes every unit out of this tiny ball
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0}, monitor=True,
                                    clip_window=4)
    caught = train(net, trainer, 7, ctx)
    assert caught == []  # the first window's counts are read when the second window ends
    caught = train(net, trainer, 13, ctx)
    assert len(caught) == 1  # once, though every later window is as bad
    message = str(caught[0].message)
    assert f"'{net[0].weight.name}'" in message and "more than 90% of its units on 4 of 4 steps" in message
    assert "(steps 1 to 4)" in message and "Lower the learning rate or raise the bound" in message
    assert issubclass(gc.ClippingWarning, gc.ConstraintWarning) and issubclass(gc.ConstraintWarning, UserWarning)


def test_no_warning_when_the_bound_rarely_binds_or_the_warning_is_off():
    net = network(0.01, [mx.cpu()])
    off = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0}, monitor=True,
                                clip_warning=None, clip_window=2)
    assert train(net, off, 10, [mx.cpu()]) == []
    net = network(1e6, [mx.cpu()])  # never binds
    loose = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0}, monitor=True, clip_window=2)
    assert train(net, loose, 10, [mx.cpu()]) == []
    net = network(0.01, [mx.cpu()])
    unmonitored = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0}, clip_window=2)
    assert train(net, unmonitored, 10, [mx.cpu()]) == []


def test_enforce_takes_the_same_settings():
    net = network(0.01, [mx.cpu()])
    trainer = gc.enforce(gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1.0}), monitor=True,
                         clip_warning=0.5, clip_window=3)
    assert len(train(net, trainer, 9, [mx.cpu()])) == 1


@pytest.mark.parametrize("arguments,message", [
    (dict(clip_warning=1.0), r"clip_warning must be None \(off\) or the share of units in \[0, 1\) .*: got 1.0"),
    (dict(clip_warning="high"), "clip_warning must be None"),
    (dict(clip_window=0), "clip_window must be an int >= 1"),
    (dict(clip_window=2.5), "clip_window must be an int >= 1"),
])
def test_bad_settings_are_refused_and_bind_nothing(arguments, message):
    net = network(1.0, [mx.cpu()])
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.ConstrainedTrainer(net.collect_params(), "sgd", monitor=True, **arguments)
    gc.ConstrainedTrainer(net.collect_params(), "sgd")  # the parameters are still free
