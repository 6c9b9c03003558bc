"""Learning-rate schedules, per-parameter update counts and cadence on every path.

MXNet counts updates per parameter (and device) and asks the learning-rate scheduler for the
rate of each update call at ``num_update``, the largest count so far (docs/training.md,
"Learning-rate schedules"). When parameters have different counts (layers frozen for a while,
stale gradients skipped), the rate an update gets depends on the calls before it. The fused
update, the stock path and plain Gluon must give the same weights, bit for bit, with a bound that
never binds; and ``Scheduled`` bounds and ``every=n`` follow each parameter's own count.
"""

import contextlib
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn

TWO = [mx.cpu(0), mx.cpu(1)]
CONFIGS = [([mx.cpu(0)], None), (TWO, True), (TWO, False)]
CONFIG_IDS = ["1ctx", "2ctx-uokv", "2ctx-no-uokv"]
OPTIMIZERS = {
    "sgd-momentum": ("sgd", {"momentum": 0.9}),
    "nag": ("nag", {"momentum": 0.9}),
    "adam": ("adam", {}),
    "rmsprop": ("rmsprop", {}),
}
# Every scheduler MXNet 1.9 ships, fresh for each run (FactorScheduler keeps state).
SCHEDULERS = {
    "factor": lambda: mx.lr_scheduler.FactorScheduler(step=2, factor=0.5, base_lr=0.05),
    "multifactor": lambda: mx.lr_scheduler.MultiFactorScheduler(step=[2, 3, 4], factor=0.5, base_lr=0.05),
    "poly": lambda: mx.lr_scheduler.PolyScheduler(max_update=6, base_lr=0.05, pwr=2, final_lr=0.001),
    "cosine-warmup": lambda: mx.lr_scheduler.CosineScheduler(max_update=6, base_lr=0.05, final_lr=0.005,
                                                             warmup_steps=2, warmup_begin_lr=0.01),
}
WIDTHS = [(6, 5), (6, 6), (6, 6), (3, 6)]


def build(ctx, prefix, bound=1e3, constraint=None):
    """Four Dense layers with fixed weights; ``constraint(i)`` or ``MaxNorm(bound)`` on each."""
    rng = np.random.default_rng(7)
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        for i, (units, fan_in) in enumerate(WIDTHS):
            net.add(nn.Dense(units, in_units=fan_in, activation="tanh" if i < 3 else None,
                             weight_constraint=constraint(i) if constraint else gc.MaxNorm(bound)))
    net.initialize(ctx=ctx)
    for param in net.collect_params().values():
        param.set_data(mx.nd.array(rng.normal(0, 0.5, param.shape)))
    return net


def batches(steps, seed=11):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(4, 5)), rng.normal(size=(4, 3))) for _ in range(steps)]


def step(net, trainer, ctx, x, y, ignore_stale_grad=False):
    xs = gluon.utils.split_and_load(mx.nd.array(x), ctx)
    ys = gluon.utils.split_and_load(mx.nd.array(y), ctx)
    with autograd.record():
        losses = [((net(a) - b) ** 2).sum() for a, b in zip(xs, ys)]
    for loss in losses:
        loss.backward()
    trainer.step(len(x), ignore_stale_grad=ignore_stale_grad)


def set_frozen(net, layers, frozen):
    for i in layers:
        for param in net[i].collect_params().values():
            param.grad_req = "null" if frozen else "write"


def fine_tune(make_trainer, ctx, prefix, constraint=None):
    """Two steps with the first two layers frozen, then three with every layer trained."""
    net = build(ctx, prefix, constraint=constraint)
    trainer = make_trainer(net.collect_params())
    set_frozen(net, (0, 1), True)
    for number, (x, y) in enumerate(batches(5)):
        if number == 2:
            set_frozen(net, (0, 1), False)
        step(net, trainer, ctx, x, y)
    return net, trainer


@contextlib.contextmanager
def diverging_rates_warned(expected):
    """Expect exactly one DivergingCopiesWarning about shared num_update if ``expected``, else
    none (other warnings are left to the test's filters)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gc.DivergingCopiesWarning)
        yield
    ours = [w for w in caught if issubclass(w.category, gc.DivergingCopiesWarning)]
    for other in caught:
        if other not in ours:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    assert len(ours) == (1 if expected else 0), [str(w.message) for w in ours]
    assert all("share one num_update" in str(w.message) for w in ours)


def weights(net):
    return [p.list_data()[0].asnumpy() for p in net.collect_params().values()]


def assert_bitwise_equal(ours, theirs, label):
    for index, (a, b) in enumerate(zip(ours, theirs)):
        assert a.tobytes() == b.tobytes(), f"{label}: parameter {index} differs by {np.abs(a - b).max():.3g}"


@pytest.mark.parametrize("schedule", sorted(SCHEDULERS))
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fine_tuning_a_partly_frozen_network_under_a_schedule_is_plain_gluon(optimizer, schedule, monkeypatch):
    name, options = OPTIMIZERS[optimizer]

    def trainer_of(make):
        return lambda params: make(params, name, {**options, "learning_rate": 0.05,
                                                  "lr_scheduler": SCHEDULERS[schedule]()})

    plain, _ = fine_tune(trainer_of(gluon.Trainer), [mx.cpu(0)], "plain_")
    fused, _ = fine_tune(trainer_of(gc.ConstrainedTrainer), [mx.cpu(0)], "fused_")
    assert_bitwise_equal(weights(fused), weights(plain), "fused")
    from gluon_constraints.kernels import library

    monkeypatch.setattr(library, "_loaded", None)
    monkeypatch.setattr(library, "_tried", True)
    stock, _ = fine_tune(trainer_of(gc.ConstrainedTrainer), [mx.cpu(0)], "stock_")
    assert_bitwise_equal(weights(stock), weights(plain), "stock")


@pytest.mark.parametrize("ctx,uokv", CONFIGS[1:], ids=CONFIG_IDS[1:])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_two_contexts_fine_tuning_under_a_schedule_is_plain_gluon(optimizer, ctx, uokv):
    name, options = OPTIMIZERS[optimizer]

    def trainer_of(make):
        return lambda params: make(params, name, {**options, "learning_rate": 0.05,
                                                  "lr_scheduler": SCHEDULERS["cosine-warmup"]()},
                                   update_on_kvstore=uokv)

    plain, _ = fine_tune(trainer_of(gluon.Trainer), ctx, "plain_")
    # Without the kvstore update the devices' updaters share num_update: the second device's
    # copy of a lagging layer gets a later rate (MXNet's behaviour), warned once.
    with diverging_rates_warned(not uokv):
        fused, _ = fine_tune(trainer_of(gc.ConstrainedTrainer), ctx, "fused_")
    for ours, theirs in zip(fused.collect_params().values(), plain.collect_params().values()):
        copies = [a.asnumpy() for a in ours.list_data()]
        assert_bitwise_equal(copies, [a.asnumpy() for a in theirs.list_data()], ours.name)
        if uokv:
            assert copies[0].tobytes() == copies[1].tobytes(), ours.name


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_stale_gradients_skipped_under_a_schedule_give_plain_gluon_rates(optimizer, ctx, uokv):
    # The last layer sees no data for two steps: with ignore_stale_grad=True it is skipped (on
    # the devices; a kvstore that updates pushes its stale gradient, as in plain Gluon).
    name, options = OPTIMIZERS[optimizer]

    def run(make, prefix):
        net = build(ctx, prefix)
        settings = {**options, "learning_rate": 0.05, "lr_scheduler": SCHEDULERS["poly"]()}
        trainer = make(net.collect_params(), name, settings, update_on_kvstore=uokv)
        trunk = nn.HybridSequential()
        for i in range(3):
            trunk.add(net[i])
        for number, (x, y) in enumerate(batches(5)):
            xs = gluon.utils.split_and_load(mx.nd.array(x), ctx)
            with autograd.record():
                outputs = [(trunk if number < 2 else net)(a) for a in xs]
                losses = [(out ** 2).sum() for out in outputs]
            for loss in losses:
                loss.backward()
            trainer.step(len(x), ignore_stale_grad=True)
        return net

    plain = run(gluon.Trainer, "plain_")
    with diverging_rates_warned(len(ctx) > 1 and not uokv):
        fused = run(gc.ConstrainedTrainer, "fused_")
    for ours, theirs in zip(fused.collect_params().values(), plain.collect_params().values()):
        assert_bitwise_equal([a.asnumpy() for a in ours.list_data()],
                             [a.asnumpy() for a in theirs.list_data()], ours.name)


def test_the_kvstore_receives_gluons_order_when_a_schedule_makes_the_order_matter(monkeypatch):
    # Last layer first lets the updates overlap the backward pass; with a schedule and uneven
    # counts the order changes the rates, so the pushes keep Gluon's order then.
    from gluon_constraints.training.trainer import EnforcedTraining

    pushed = []
    original = EnforcedTraining.ordered_for_pushes

    def recorded(self, updated):
        result = original(self, updated)
        pushed.append([index for index, _ in result])
        return result

    monkeypatch.setattr(EnforcedTraining, "ordered_for_pushes", recorded)
    def constrained(params):  # a scheduler of its own, as before
        return gc.ConstrainedTrainer(params, "adam", {"learning_rate": 0.05, "lr_scheduler": SCHEDULERS["poly"]()})

    fine_tune(constrained, TWO, "ordered_")
    # Steps 1-2: only layers 2 and 3 (indices 4-7), counts equal: last layer first (the reverse
    # of registration order, weight before bias). Steps 3-5:
    # layers 0 and 1 are two updates behind: Gluon's order.
    assert pushed[0] == pushed[1] == [6, 7, 4, 5]  # by name: dense3_bias is 6, dense3_weight 7
    assert pushed[2] == pushed[3] == pushed[4] == list(range(8))


def reference_projection(value, bound):
    norms = np.sqrt((value.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return value * (bound / np.maximum(norms, bound))


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("kind", ["scheduled", "every-2"])
def test_scheduled_bounds_and_cadence_follow_each_parameters_own_count(kind, ctx, uokv):
    # Reference: plain Gluon with the update on the devices, then a float64 numpy projection of
    # each updated weight at that weight's own count (the bound of a Scheduled constraint, or
    # every second update).
    def bound_at(count):
        if kind == "every-2":
            return 0.4 if count % 2 == 0 else None
        return 1.2 + (0.3 - 1.2) * min(count, 4) / 4

    def constraint(_):
        return gc.MaxNorm(0.4) if kind == "every-2" else gc.Scheduled(gc.MaxNorm(0.3), start=1.2, steps=4)

    def make(params):
        return gc.ConstrainedTrainer(params, "sgd", {"learning_rate": 0.3, "momentum": 0.5},
                                     update_on_kvstore=uokv, every=2 if kind == "every-2" else 1)

    ours, _ = fine_tune(make, ctx, "ours_", constraint=constraint)

    reference = build(ctx, "reference_")
    plain = gluon.Trainer(reference.collect_params(), "sgd", {"learning_rate": 0.3, "momentum": 0.5},
                          update_on_kvstore=False)
    counts = [0] * len(WIDTHS)
    set_frozen(reference, (0, 1), True)
    for number, (x, y) in enumerate(batches(5)):
        if number == 2:
            set_frozen(reference, (0, 1), False)
        step(reference, plain, ctx, x, y)
        for layer in range(len(WIDTHS)):
            if number < 2 and layer < 2:
                continue
            counts[layer] += 1
            bound = bound_at(counts[layer])
            if bound is not None:
                weight = reference[layer].weight
                weight.set_data(mx.nd.array(reference_projection(weight.data(ctx[0]).asnumpy(), bound)))
    assert counts == [3, 3, 5, 5]
    for layer in range(len(WIDTHS)):
        expected = reference[layer].weight.data(ctx[0]).asnumpy()
        for copy in ours[layer].weight.list_data():
            # Both runs round every operation to float32; the projections differ by the
            # rounding of a norm of 6 terms and a rescale, about 10 eps32 per step, over 5 steps.
            np.testing.assert_allclose(copy.asnumpy(), expected, rtol=0,
                                       atol=50 * np.finfo(np.float32).eps * np.abs(expected).max(),
                                       err_msg=f"layer {layer}")


@pytest.mark.parametrize("ctx,uokv", CONFIGS, ids=CONFIG_IDS)
def test_a_copy_skipped_for_its_stale_gradient_is_projected(ctx, uokv):
    # An infeasible weight whose layer sees no data: step(..., ignore_stale_grad=True) skips it
    # on the devices, and the trainer projects it as it is; with a kvstore that updates, Gluon
    # pushes its stale (zero) gradient and the update projects it. Either way it is feasible.
    net = build(ctx, "stale_", constraint=lambda i: gc.MaxNorm(0.3))
    initial = net[3].weight.data(ctx[0]).asnumpy()
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1},
                                    update_on_kvstore=uokv)
    trunk = nn.HybridSequential()
    for i in range(3):
        trunk.add(net[i])
    x = gluon.utils.split_and_load(mx.nd.array(batches(1)[0][0]), ctx)
    with autograd.record():
        losses = [(trunk(a) ** 2).sum() for a in x]
    for loss in losses:
        loss.backward()
    trainer.step(4, ignore_stale_grad=True)
    trainer.verify_constraints()
    skipped = net[3].weight
    expected = reference_projection(initial, 0.3)
    for copy in skipped.list_data():
        # One float32 projection: a norm of 6 terms and a rescale, a few eps32 each.
        np.testing.assert_allclose(copy.asnumpy(), expected, rtol=0,
                                   atol=10 * np.finfo(np.float32).eps * np.abs(expected).max())
