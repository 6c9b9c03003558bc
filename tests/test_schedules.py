"""Scheduled bounds and projection cadence (docs/training.md#schedules-and-cadence): against a
plain trainer followed by numpy projections, and exact on resume from save_states."""

import json
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

import gluon_constraints as gc
from gluon_constraints import nn
from steps import squared_output_step
from tolerances import assert_float32_close

TWO = [mx.cpu(0), mx.cpu(1)]
STEPS = 6
# One context against two (the gradient of a batch of 4 summed in another order), and a
# projection rounded in float32 against one in numpy: per step a gradient of 4 examples over
# 6 outputs and 5 inputs, and about ten roundings of the update and projection.
OPERATIONS = STEPS * (4 * 6 * 5 + 10)


def max_norm_rows(w, bound):
    n = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (w * (bound / np.maximum(n, bound))).astype(np.float32)


def build(ctx, constraint):
    net = nn.Dense(6, in_units=5, weight_constraint=constraint)
    net.initialize(mx.init.Constant(mx.nd.array(np.random.default_rng(0).normal(0, 2, (6, 5)))), ctx=ctx)
    net.bias.initialize(mx.init.Zero(), ctx=ctx, force_reinit=True)
    return net


def step(net, trainer, ctx, t):
    squared_output_step(net, trainer, mx.nd.array(np.random.default_rng(100 + t).normal(0, 1, (4, 5))), ctx)


def reference(bound_after, projected_after):
    """A plain trainer on one context, with MaxNorm(bound_after(t)) applied in numpy after step t."""
    net = build([mx.cpu(0)], None)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    for t in range(1, STEPS + 1):
        step(net, trainer, [mx.cpu(0)], t)
        if projected_after(t):
            net.weight.set_data(mx.nd.array(max_norm_rows(net.weight.data().asnumpy(), bound_after(t))))
    return net.weight.data().asnumpy()


def test_scheduled_moves_the_argument_linearly_then_is_the_constraint():
    c = gc.Scheduled(gc.MaxNorm(3.0), start=10.0, steps=4)
    assert [c.at(t).max_value for t in (0, 1, 2, 3)] == [10.0, 8.25, 6.5, 4.75]
    assert c.at(4) is c.constraint and c.at(100) is c.constraint
    assert c.at(2) is c.at(2)  # the same object while the bound does not change
    radius = gc.Scheduled(gc.Simplex(1.0), start=4.0, steps=2, argument="radius")
    assert radius.at(1) == gc.Simplex(2.5)
    assert gc.deserialize(json.loads(json.dumps(gc.serialize(c)))) == c
    w = mx.nd.array([[30.0, 40.0]])
    assert c(w).asnumpy().tolist() == gc.MaxNorm(3.0)(w).asnumpy().tolist()  # outside a trainer


@pytest.mark.parametrize("arguments,message", [
    ((gc.MaxNorm(3.0), 10.0, 4, "radius"), r"Scheduled cannot move argument 'radius' of MaxNorm: a schedule "
                                           r"moves a float argument linearly, and MaxNorm's are \['max_value'\]"),
    ((gc.MaxNorm(3.0), 10.0, 4, "ord"), r"Scheduled cannot move argument 'ord' of MaxNorm: .* MaxNorm's are "
                                        r"\['max_value'\]\. Got MaxNorm\(max_value=3\.0, axis=None, ord=2\)"),
    ((gc.SpectralNorm(1.0), 3, 4, "power_iterations"), r"Scheduled cannot move argument 'power_iterations' of "
                                                       r"SpectralNorm: .* SpectralNorm's are \['max_value'\]"),
    ((gc.Orthogonal(), 0.5, 4, "beta"), r"Scheduled cannot move argument 'beta' of Orthogonal: .* Orthogonal's "
                                        r"are \(none\)"),
    ((gc.MaxNorm(3.0), -1.0, 4), r"MaxNorm max_value must be > 0: got -1.0"),
    ((gc.MaxNorm(3.0), 10.0, 0), r"Scheduled steps must be an int >= 1: got 0"),
    ((gc.Compose([gc.NonNeg()]), 1.0, 4), r"Scheduled wraps one constraint"),
])
def test_bad_schedules_are_refused(arguments, message):
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.Scheduled(*arguments)


@pytest.mark.parametrize("start", [None, "10", [1.0]])
def test_a_start_that_is_not_a_number_is_refused_naming_it(start):
    expected = r"Scheduled\(MaxNorm\) start must be a real number: got " + re.escape(repr(start))
    with pytest.raises(TypeError, match=expected):
        gc.Scheduled(gc.MaxNorm(3.0), start, 4)


def test_every_float_argument_of_the_catalogue_can_be_scheduled_through_a_step():
    # A schedule accepted at construction works at every update (docs/constraints.md, "Schedules").
    for constraint, argument, start in [(gc.MinMaxNorm(0.5, 1.0), "min_value", 0.0),
                                        (gc.MinMaxNorm(0.5, 1.0), "rate", 0.0),
                                        (gc.Clip(-1.0, 1.0), "max_value", 3.0), (gc.Simplex(2.0), "radius", 1.0),
                                        (gc.L1Ball(2.0), "radius", 5.0), (gc.SpectralNorm(1.0), "max_value", 4.0),
                                        (gc.Orthogonal(beta=0.5), "beta", 0.1)]:
        scheduled = gc.Scheduled(constraint, start, 3, argument=argument)
        for update in range(5):
            resolved = scheduled.at(update)
            expected = start + (getattr(constraint, argument) - start) * min(update, 3) / 3
            assert getattr(resolved, argument) == pytest.approx(expected, rel=1e-12), (constraint, update)


def test_a_schedule_cannot_go_into_a_compose():
    with pytest.raises(gc.ConstraintArgumentError, match="Compose cannot hold Scheduled"):
        gc.Compose([gc.NonNeg(), gc.Scheduled(gc.MaxNorm(3.0), 10.0, 4)])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_cadence_is_refused(bad):
    net = build([mx.cpu(0)], gc.MaxNorm(1.0))
    expected = r"every must be an int >= 1 .*got " + repr(bad).replace("(", r"\(")
    with pytest.raises(gc.ConstraintArgumentError, match=expected):
        gc.ConstrainedTrainer(net.collect_params(), "sgd", every=bad)


CONFIGS = [([mx.cpu(0)], None), (TWO, True), (TWO, False)]
IDS = ["1ctx", "2ctx-uokv", "2ctx-no-uokv"]


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=IDS)
def test_scheduled_bound_matches_numpy_after_every_step(ctx, uokv):
    schedule = gc.Scheduled(gc.MaxNorm(1.0), start=4.0, steps=4)
    net = build(ctx, schedule)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                                    update_on_kvstore=uokv)
    for t in range(1, STEPS + 1):
        step(net, trainer, ctx, t)
        trainer.verify_constraints()  # against the bound of this update
    expected = reference(lambda t: schedule.at(t).max_value, lambda t: True)
    for context in ctx:
        assert_float32_close(net.weight.data(context).asnumpy(), expected, OPERATIONS)


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=IDS)
def test_every_third_update_is_projected_and_no_other(ctx, uokv):
    net = build(ctx, gc.MaxNorm(0.5))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9},
                                    update_on_kvstore=uokv, every=3)
    norms = []
    for t in range(1, STEPS + 1):
        step(net, trainer, ctx, t)
        norms.append(np.sqrt((net.weight.data().asnumpy().astype(np.float64) ** 2).sum(axis=1)).max())
    assert norms[2] <= 0.5 * (1 + 1e-6) and norms[5] <= 0.5 * (1 + 1e-6)
    assert min(norms[0], norms[1], norms[3], norms[4]) > 0.5  # not projected between
    expected = reference(lambda t: 0.5, lambda t: t % 3 == 0)
    for context in ctx:
        assert_float32_close(net.weight.data(context).asnumpy(), expected, OPERATIONS)


@pytest.mark.parametrize("optimizer,options", [("sgd", {"learning_rate": 0.1, "momentum": 0.9}),
                                               ("adam", {"learning_rate": 0.1})], ids=["sgd", "adam"])
@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=IDS)
def test_schedule_and_cadence_resume_exactly_from_save_states(ctx, uokv, optimizer, options, tmp_path):
    # Both take the fused update; Adam's bias correction follows the restored update counts.
    def fresh():
        net = build(ctx, gc.Scheduled(gc.MaxNorm(0.5), start=3.0, steps=5))
        trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, dict(options),
                                        update_on_kvstore=uokv, every=2)
        return net, trainer

    straight, trainer = fresh()
    for t in range(1, STEPS + 1):
        step(straight, trainer, ctx, t)

    first, trainer = fresh()
    for t in range(1, 4):  # stops after update 3: between two projections, inside the ramp
        step(first, trainer, ctx, t)
    first.save_parameters(str(tmp_path / "net.params"))
    trainer.save_states(str(tmp_path / "trainer.states"))

    resumed, trainer = fresh()
    resumed.load_parameters(str(tmp_path / "net.params"), ctx=ctx)
    trainer.load_states(str(tmp_path / "trainer.states"))
    for t in range(4, STEPS + 1):
        step(resumed, trainer, ctx, t)
    assert resumed.weight.data().asnumpy().tobytes() == straight.weight.data().asnumpy().tobytes()


@pytest.mark.parametrize("constraint", [gc.MaxNorm(2.0), gc.NonNeg(), gc.Compose([gc.NonNeg(), gc.UnitNorm()])],
                         ids=["MaxNorm", "NonNeg", "Compose"])
def test_an_unscheduled_constraint_is_in_force_at_every_update(constraint):
    # docs/architecture.md, the Constraint contract: at(update) is the constraint itself unless
    # it is scheduled.
    assert not constraint.scheduled
    assert all(constraint.at(update) is constraint for update in (0, 1, 7, 10 ** 6))
