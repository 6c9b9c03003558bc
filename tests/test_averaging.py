"""gc.WeightAverage (docs/training.md, "Weight averages"): EMA and SWA against numpy's recurrence
on one and two contexts, averages feasible for every family, exact swaps, saving and loading."""

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
from gluon_constraints import nn
from gluon_constraints.catalogue.feasibility import violation
from gluon_constraints.gluon.attachment import reduction_of
from gluon_constraints.kernels import library, projection
from gluon_constraints.training import average_copies, average_step

TWO = [mx.cpu(0), mx.cpu(1)]


def mlp(ctx, constraint=None, dtype="float32"):
    net = nn.HybridSequential()
    net.add(nn.Dense(6, in_units=5, activation="tanh", weight_constraint=constraint),
            nn.BatchNorm(in_channels=6), nn.Dense(3, in_units=6))
    net.initialize(mx.init.Normal(1.0), ctx=ctx)
    net.cast(dtype)
    return net


def step(net, trainer, ctx, rng):
    x = mx.nd.array(rng.standard_normal((8, 5)))
    parts = gluon.utils.split_and_load(x, ctx)
    with autograd.record():
        losses = [(net(part) ** 2).sum() for part in parts]
    for loss in losses:
        loss.backward()
    trainer.step(8)


def followed(net, trainer, ctx, rng, decay, steps):
    """Train ``steps`` steps; numpy's EMA recurrence of each copy's weights, from the start."""
    expected = {c: weights(net, c) for c in ctx}
    for _ in range(steps):
        step(net, trainer, ctx, rng)
        for c in ctx:
            now = weights(net, c)
            expected[c] = {k: decay * v + (1 - decay) * now[k] for k, v in expected[c].items()}
    return expected


def assert_averages(ema, expected):
    for c, values in expected.items():  # float32 arithmetic: a few ulps per step
        for name, value in values.items():
            np.testing.assert_allclose(ema.averages[(name, str(c))].asnumpy(), value, rtol=1e-5, atol=1e-6)


def weights(net, ctx):
    return {name: p.data(ctx).asnumpy().astype(np.float64) for name, p in net._collect_params_with_prefix().items()}


@pytest.fixture(params=["fused", "stock"])
def path(request, monkeypatch):
    """Each test on the fused kernel's averaging pass (where it is loaded) and on stock operators."""
    if request.param == "stock":  # MXNet's operators for the step and for the projection
        monkeypatch.setattr(average_step, "kernel", lambda: None)
        monkeypatch.setattr(projection, "kernel", lambda: None)
    elif library.kernel() is None:
        pytest.skip("needs the fused kernel")
    return request.param


@pytest.mark.parametrize("contexts,on_kvstore", [(1, None), (2, None), (2, False)])
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_is_numpys_recurrence(contexts, on_kvstore, warmup, path):
    ctx = TWO[:contexts]
    net = mlp(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                                    update_on_kvstore=on_kvstore)
    ema = gc.WeightAverage(net, decay=0.8, warmup=warmup, trainer=trainer)
    expected = {c: weights(net, c) for c in ctx}  # per copy: BatchNorm's running statistics differ
    rng = np.random.default_rng(0)
    for t in range(1, 8):
        step(net, trainer, ctx, rng)
        decay = min(0.8, (1 + t) / (10 + t)) if warmup else 0.8
        for c in ctx:
            now = weights(net, c)
            expected[c] = {k: decay * v + (1 - decay) * now[k] for k, v in expected[c].items()}
    assert ema.updates == 7
    for c in ctx:
        for name, value in expected[c].items():  # float32 arithmetic: a few ulps per step
            np.testing.assert_allclose(ema.averages[(name, str(c))].asnumpy(), value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("on_kvstore", [None, False])
def test_copies_pulled_from_the_kvstore_are_averaged_once(on_kvstore, monkeypatch):
    """docs/training.md, "Weight averages": updating on the kvstore, the trained parameters'
    averages are computed on the first context only and copied to the other when read; BatchNorm's
    running statistics (untrained, different per device) and update_on_kvstore=False copies are
    averaged on every context."""
    net = mlp(TWO, gc.MaxNorm(0.5))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05},
                                    update_on_kvstore=on_kvstore)
    gc.apply_constraints(net)  # feasible from the start: the averages stay feasible unprojected
    ema = gc.WeightAverage(net, decay=0.6, trainer=trainer)
    computed = []
    run = average_step.AverageStep.run
    monkeypatch.setattr(average_step.AverageStep, "run",
                        lambda self, rate, entries, update: (computed.append({key for key, *_ in entries}),
                                                             run(self, rate, entries, update)))
    rng = np.random.default_rng(7)
    expected = followed(net, trainer, TWO, rng, 0.6, 3)
    everywhere = {(name, str(c)) for name in weights(net, mx.cpu(0)) for c in TWO}
    if on_kvstore is None:  # Gluon's default with two contexts: the kvstore updates
        trained = {name for name, p in net._collect_params_with_prefix().items() if p.grad_req != "null"}
        assert trained == {"0.weight", "0.bias", "1.gamma", "1.beta", "2.weight", "2.bias"}
        # the first update computes every copy and finds the trained ones' averages equal
        assert computed == [everywhere] + [everywhere - {(name, "cpu(1)") for name in trained}] * 2
    else:
        assert computed == [everywhere] * 3
    assert_averages(ema, expected)
    assert ema.averages[("0.weight", "cpu(1)")].asnumpy().tobytes() == \
        ema.averages[("0.weight", "cpu(0)")].asnumpy().tobytes()
    step(net, trainer, TWO, rng)  # behind again: swapping in reads every copy's average
    with ema.swapped():
        for name, p in net._collect_params_with_prefix().items():
            assert all(np.array_equal(p.data(c).asnumpy(), ema.averages[(name, str(c))].asnumpy()) for c in TWO)


def test_copies_whose_averages_differ_keep_their_own_history_under_a_kvstore_trainer():
    """Weights made equal by the kvstore's pulls do not make averages with different histories
    equal: an average is left to its first copy's only once compared equal to it."""
    net = mlp(TWO)
    net[0].weight.data(mx.cpu(1))[:] += 1.0  # the copies differ when the average is made
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.8, trainer=trainer)
    expected = followed(net, trainer, TWO, np.random.default_rng(9), 0.8, 3)
    assert np.array_equal(net[0].weight.data(mx.cpu(0)).asnumpy(), net[0].weight.data(mx.cpu(1)).asnumpy())
    assert_averages(ema, expected)


def test_reordered_and_returning_contexts_read_the_averages_they_follow(tmp_path):
    """reset_ctx: after a reorder the first copy's average (saved, copied) is up to date; a copy
    that left and came back takes the average of the copy that stayed."""
    net = mlp(TWO)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.8, trainer=trainer)
    rng = np.random.default_rng(10)
    expected = weights(net, mx.cpu(0))
    for _ in range(2):
        step(net, trainer, TWO, rng)
        now = weights(net, mx.cpu(0))
        expected = {k: 0.8 * v + 0.2 * now[k] for k, v in expected.items()}
    net.collect_params().reset_ctx([mx.cpu(1), mx.cpu(0)])
    ema.save_parameters(str(tmp_path / "ema.params"))
    saved = mx.nd.load(str(tmp_path / "ema.params"))
    for name in ("0.weight", "2.weight"):  # BatchNorm's statistics: the cpu(1) copy's now
        np.testing.assert_allclose(saved[name].asnumpy(), expected[name], rtol=1e-5, atol=1e-6)

    net.collect_params().reset_ctx([mx.cpu(0)])
    step(net, trainer, [mx.cpu(0)], rng)
    net.collect_params().reset_ctx(TWO)
    averages = ema.averages
    for name in expected:
        assert np.array_equal(averages[(name, "cpu(0)")].asnumpy(), averages[(name, "cpu(1)")].asnumpy()), name


def test_copies_left_equal_are_compared_once_however_often_they_are_read(monkeypatch):
    net = nn.HybridSequential()
    net.add(nn.Dense(6, in_units=5, activation="tanh"), nn.Dense(3, in_units=6))
    net.initialize(mx.init.Normal(1.0), ctx=TWO)
    net[0].cast("float64")  # averages of two types: compared together
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.8, trainer=trainer)
    compared = []
    compare = average_copies.AverageCopies._compare
    monkeypatch.setattr(average_copies.AverageCopies, "_compare",
                        lambda self, pairs: (compared.append(len(pairs)), compare(self, pairs)))
    expected = {c: weights(net, c) for c in TWO}
    rng = np.random.default_rng(11)
    for _ in range(4):
        parts = gluon.utils.split_and_load(mx.nd.array(rng.standard_normal((8, 5)), dtype="float64"), TWO)
        with autograd.record():
            losses = [(net[1](net[0](part).astype("float32")) ** 2).sum() for part in parts]
        for loss in losses:
            loss.backward()
        trainer.step(8)
        for c in TWO:
            now = weights(net, c)
            expected[c] = {k: 0.8 * v + 0.2 * now[k] for k, v in expected[c].items()}
        ema.averages[("0.weight", "cpu(1)")].wait_to_read()  # reads and swaps keep the copies left
        with ema.swapped():
            pass
    assert compared == [4, 0, 0, 0]  # the parameters' cpu(1) copies, at the first step
    assert_averages(ema, expected)


def test_a_copy_moved_between_contexts_takes_the_average_it_left_and_swaps_back():
    net = mlp(TWO)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.8, trainer=trainer)
    rng = np.random.default_rng(12)
    step(net, trainer, TWO, rng)
    net.collect_params().reset_ctx([mx.cpu(1)])
    for _ in range(2):
        step(net, trainer, [mx.cpu(1)], rng)
    on_one = {key[0]: value.asnumpy() for key, value in ema.averages.items() if key[1] == "cpu(1)"}
    net.collect_params().reset_ctx([mx.cpu(0)])  # hops back: the weights and the average come along
    ema.update()
    assert ema.updates == 4
    now = weights(net, mx.cpu(0))
    for name, value in on_one.items():
        np.testing.assert_allclose(ema.averages[(name, "cpu(0)")].asnumpy(), 0.8 * value + 0.2 * now[name],
                                   rtol=1e-5, atol=1e-6)
    kept = weights(net, mx.cpu(0))
    ema.swap()  # swapped in on one context, swapped back on two
    net.collect_params().reset_ctx(TWO)
    ema.swap()
    for c in TWO:
        assert all(v.tobytes() == kept[k].tobytes() for k, v in weights(net, c).items())


def test_numpy_scalars_are_taken_and_a_failed_copy_to_writes_nothing():
    net = mlp([mx.cpu()])
    ema = gc.WeightAverage(net, decay=np.float32(0.5), every=np.int64(2))
    assert (ema.decay, ema.every) == (float(np.float32(0.5)), 2) and type(ema.every) is int
    target = nn.HybridSequential()
    target.add(nn.Dense(6, in_units=5), nn.BatchNorm(in_channels=6), nn.Dense(4, in_units=6))
    target.initialize()
    kept = target[0].weight.data().asnumpy().copy()
    with pytest.raises(gc.ConstraintTypeError, match=r"'2.weight' has shape \(4, 6\), the average \(3, 6\). Nothing"):
        ema.copy_to(target)
    assert np.array_equal(target[0].weight.data().asnumpy(), kept)


def test_a_manual_update_after_kvstore_steps_averages_every_copy_from_where_it_stands():
    """Copies left equal to the first are brought up to date before a step that averages every
    copy (here an update called by hand after a trainer that updates on the kvstore is gone)."""
    net = mlp(TWO)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.5, trainer=trainer)
    rng = np.random.default_rng(8)
    step(net, trainer, TWO, rng)
    kept = ema.averages[("0.weight", "cpu(0)")].asnumpy().astype(np.float64)
    ema._trained_by = None  # as if the trainer had been dropped
    net[0].weight.set_data(net[0].weight.data(mx.cpu(0)) * 2)
    ema.update()
    expected = 0.5 * kept + 0.5 * net[0].weight.data(mx.cpu(1)).asnumpy()
    np.testing.assert_allclose(ema.averages[("0.weight", "cpu(1)")].asnumpy(), expected, rtol=1e-6, atol=1e-7)


def test_ema_every_k_steps_uses_decay_to_the_k():
    net = mlp([mx.cpu()])
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.9, every=3, trainer=trainer)
    expected = weights(net, mx.cpu())
    rng = np.random.default_rng(5)
    for t in range(1, 10):
        step(net, trainer, [mx.cpu()], rng)
        if t % 3 == 0:
            now = weights(net, mx.cpu())
            expected = {k: 0.9 ** 3 * v + (1 - 0.9 ** 3) * now[k] for k, v in expected.items()}
    for name, value in expected.items():
        np.testing.assert_allclose(ema.averages[(name, "cpu(0)")].asnumpy(), value, rtol=1e-5, atol=1e-6)


def test_swa_is_the_mean_of_the_sampled_weights():
    net = mlp([mx.cpu()])
    trainer = gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": 0.05})
    swa = gc.WeightAverage(net, mode="swa", start=3, every=2)
    rng = np.random.default_rng(1)
    sampled = []
    for t in range(1, 11):
        step(net, trainer, [mx.cpu()], rng)
        swa.update()
        if t >= 3 and (t - 3) % 2 == 0:
            sampled.append(weights(net, mx.cpu()))
        if t == 2:  # before start: the weights themselves
            assert all(np.array_equal(swa.averages[(k, "cpu(0)")].asnumpy(), v.astype(np.float32))
                       for k, v in weights(net, mx.cpu()).items())
    assert swa.averaged == len(sampled) == 4
    for name in sampled[0]:
        mean = np.mean([s[name] for s in sampled], axis=0)
        np.testing.assert_allclose(swa.averages[(name, "cpu(0)")].asnumpy(), mean, rtol=1e-5, atol=1e-6)


FAMILIES = {
    "MaxNorm": gc.MaxNorm(0.5), "MinMaxNorm": gc.MinMaxNorm(0.4, 0.5), "UnitNorm": gc.UnitNorm(),
    "NonNeg": gc.NonNeg(), "Clip": gc.Clip(-0.1, 0.2), "Simplex": gc.Simplex(), "L1Ball": gc.L1Ball(0.5),
    "SpectralNorm": gc.SpectralNorm(0.5), "Orthogonal": gc.Orthogonal(), "RadialConstraint": gc.RadialConstraint(),
    "OperatorNorm": gc.OperatorNorm(0.5, input_shape=5, padding=1),
    "Compose": gc.Compose([gc.NonNeg(), gc.MaxNorm(0.5)]), "Constraint": gc.Constraint(),
}


def test_every_family_is_covered():
    ours = {name for name, cls in gc.registered_constraints().items()
            if cls.__module__.startswith("gluon_constraints.")}
    assert ours - set(FAMILIES) == {"Scheduled"}  # its bound moves with the training step


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_averages_are_feasible_after_every_update(family, path):
    constraint = FAMILIES[family]
    conv = nn.Conv2D(4, 3, padding=1, in_channels=2, weight_constraint=constraint)
    conv.initialize(ctx=TWO)
    ema = gc.WeightAverage(conv, decay=0.5)
    rng = np.random.default_rng(2)
    for _ in range(4):  # feasible weights far apart: their average leaves a non-convex set
        conv.weight.set_data(mx.nd.array(rng.standard_normal(conv.weight.shape) * 3))
        gc.apply_constraints(conv)
        ema.update()
        for c in TWO:
            average = ema.averages[("weight", str(c))]
            assert violation(constraint, average, reduction_of(conv.weight)) is None, family


def test_float16_weights_get_float32_averages_and_swap_exactly():
    # (MXNet runs float16 Dense layers on GPUs only: the weights change by hand here)
    net = mlp([mx.cpu()], gc.MaxNorm(1.0), dtype="float16")
    ema = gc.WeightAverage(net, decay=0.9)
    rng = np.random.default_rng(3)
    for _ in range(3):
        for p in net.collect_params().values():
            p.set_data(mx.nd.array(rng.standard_normal(p.shape), dtype="float16"))
        gc.apply_constraints(net)
        ema.update()
    assert np.dtype(net[0].weight.dtype) == np.float16 and all(a.dtype == np.float32 for a in ema.averages.values())
    before = {k: v.copy() for k, v in weights(net, mx.cpu()).items()}
    kept = {k: v.asnumpy().copy() for k, v in ema.averages.items()}
    with ema.swapped():
        for name, p in net._collect_params_with_prefix().items():
            # float16, but BatchNorm's, which Gluon keeps in float32
            assert np.dtype(p.data().dtype) == np.dtype(p.dtype)
            assert np.array_equal(p.data().asnumpy(), kept[(name, "cpu(0)")].astype(p.dtype))
        with pytest.raises(gc.EnforcementError, match="while the averages are swapped in"):
            ema.update()
    after = weights(net, mx.cpu())
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)              # bitwise
    assert all(ema.averages[k].asnumpy().tobytes() == kept[k].tobytes() for k in kept)  # untouched


def test_copy_to_save_parameters_and_resuming(tmp_path):
    net = mlp([mx.cpu()], gc.UnitNorm())
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.05})
    ema = gc.WeightAverage(net, decay=0.7, trainer=trainer)
    rng = np.random.default_rng(4)
    for _ in range(3):
        step(net, trainer, [mx.cpu()], rng)
    twin = mlp([mx.cpu()])
    ema.copy_to(twin)
    ema.save_parameters(str(tmp_path / "ema.params"))
    loaded = mlp([mx.cpu()])
    loaded.load_parameters(str(tmp_path / "ema.params"))
    for (name, average), a, b in zip(((n, ema.averages[(n, "cpu(0)")]) for n in weights(net, mx.cpu())),
                                     weights(twin, mx.cpu()).values(), weights(loaded, mx.cpu()).values()):
        assert a.tobytes() == b.tobytes() == average.asnumpy().astype(np.float64).tobytes(), name

    ema.save(str(tmp_path / "ema.state"))
    resumed = gc.WeightAverage(net, decay=0.7)
    resumed.load(str(tmp_path / "ema.state"))
    assert resumed.updates == 3
    for one in (ema, resumed):
        one.update()
    assert all(ema.averages[k].asnumpy().tobytes() == resumed.averages[k].asnumpy().tobytes() for k in ema.averages)
    other = nn.Dense(2, in_units=2)
    other.initialize()
    with pytest.raises(gc.ConstraintTypeError, match="holds averages of other parameters"):
        gc.WeightAverage(other).load(str(tmp_path / "ema.state"))


@pytest.mark.parametrize("arguments,message", [
    (dict(decay=1.0), r"decay must be a number in \[0, 1\): got 1.0"),
    (dict(mode="mean"), "mode must be 'ema' or 'swa': got 'mean'"),
    (dict(mode="swa", start=0), "start must be an int >= 1: got 0"),
    (dict(mode="swa", every=1.5), "every must be an int >= 1: got 1.5"),
    (dict(warmup="yes"), "warmup must be True or False"),
])
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.WeightAverage(mlp([mx.cpu()]), **arguments)


def test_a_trainer_that_does_not_enforce_and_an_uninitialized_network_are_refused():
    net = mlp([mx.cpu()])
    with pytest.raises(gc.ConstraintTypeError, match="call averages.update"):
        gc.WeightAverage(net, trainer=gluon.Trainer(net.collect_params(), "sgd"))
    with pytest.raises(gc.ConstraintTypeError, match="needs an initialized network"):
        gc.WeightAverage(nn.Dense(2))


def test_a_parameter_shared_by_two_layers_is_averaged_once_and_swapped_back():
    first = nn.Dense(4, in_units=4, weight_constraint=gc.UnitNorm())
    second = nn.Dense(4, in_units=4, params=first.collect_params())
    net = nn.HybridSequential()
    net.add(first, second)
    net.initialize(mx.init.Normal(1.0))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    ema = gc.WeightAverage(net, decay=0.5, trainer=trainer)
    rng = np.random.default_rng(6)
    for _ in range(3):
        with autograd.record():
            loss = (net(mx.nd.array(rng.standard_normal((2, 4)))) ** 2).sum()
        loss.backward()
        trainer.step(2)
    before = first.weight.data().asnumpy().copy()
    with ema.swapped():
        assert not np.array_equal(first.weight.data().asnumpy(), before)
    assert first.weight.data().asnumpy().tobytes() == before.tobytes()
    twin = nn.HybridSequential()
    twin.add(nn.Dense(4, in_units=4), nn.Dense(4, in_units=4))
    twin.initialize()
    ema.copy_to(twin)  # both structural names get the one average
    assert twin[0].weight.data().asnumpy().tobytes() == twin[1].weight.data().asnumpy().tobytes()


def test_swa_averages_before_start_are_the_projected_weights():
    net = nn.Dense(4, in_units=3, weight_constraint=gc.UnitNorm())
    net.initialize(mx.init.Normal(2.0))
    swa = gc.WeightAverage(net, mode="swa", start=5)
    net.weight.set_data(mx.nd.array(np.random.default_rng(7).standard_normal((4, 3)) * 3))  # off the sphere
    swa.update()
    rows = swa.averages[("weight", "cpu(0)")].asnumpy().astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)


def test_a_step_while_the_averages_are_swapped_in_is_refused_before_anything_changes():
    net = mlp([mx.cpu()])
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    ema = gc.WeightAverage(net, decay=0.9, trainer=trainer)
    rng = np.random.default_rng(8)
    step(net, trainer, [mx.cpu()], rng)
    with ema.swapped():
        held = weights(net, mx.cpu())
        updates = trainer.optimizer.num_update
        with autograd.record():
            loss = (net(mx.nd.array(rng.standard_normal((8, 5)))) ** 2).sum()
        loss.backward()
        with pytest.raises(gc.EnforcementError, match="while the averages are swapped in.*Nothing was changed"):
            trainer.step(8)
        assert trainer.optimizer.num_update == updates
        trained = [k for k in held if not k.endswith(("running_mean", "running_var"))]  # the forward moves those
        now = weights(net, mx.cpu())
        assert all(now[k].tobytes() == held[k].tobytes() for k in trained)


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
@pytest.mark.parametrize("constraint", [gc.MaxNorm(0.3), gc.UnitNorm(), gc.MinMaxNorm(0.5, 0.8, rate=0.5),
                                        gc.NonNeg(), gc.Clip(-0.1, 0.2), gc.MaxNorm(0.3, ord=math.inf), None],
                         ids=["MaxNorm", "UnitNorm", "MinMaxNorm", "NonNeg", "Clip", "MaxNorm-inf", "none"])
def test_the_fused_averaging_pass_is_the_stock_operators_bit_for_bit(constraint, monkeypatch):
    # docs/training.md, "Weight averages": one kernel call moves every average (MXNet's
    # sgd_update, term for term) and projects it while in cache; the stock path runs
    # sgd_update and then the projection. Both compute the same float32 operations.
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, in_channels=3, weight_constraint=constraint),
            nn.Dense(5, in_units=8 * 6 * 6, weight_constraint=constraint))
    net.initialize(mx.init.Normal(1.0), ctx=TWO)
    rng = np.random.default_rng(5)
    results = {}
    for path in ("fused", "stock"):
        if path == "stock":
            monkeypatch.setattr(average_step, "kernel", lambda: None)
            monkeypatch.setattr(projection, "kernel", lambda: None)
        for param in net.collect_params().values():
            param.set_data(mx.nd.array(np.random.default_rng(6).standard_normal(param.shape)))
        ema = gc.WeightAverage(net, decay=0.7)
        for _ in range(3):
            for param in net.collect_params().values():
                values = rng.standard_normal(param.shape) * 2
                values.reshape(-1)[::7] = np.nan if param.name.endswith("weight") else values.reshape(-1)[::7]
                param.set_data(mx.nd.array(values))  # units holding NaN keep it, on either path
            ema.update()
        if path == "fused":
            assert all(plan.group is not None for plan in ema._step._plans.values())
        results[path] = {key: average.asnumpy() for key, average in ema.averages.items()}
        rng = np.random.default_rng(5)
    for key, value in results["fused"].items():
        np.testing.assert_array_equal(value, results["stock"][key], err_msg=str(key))


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
def test_averages_of_convolutions_held_in_mkldnn_blocked_layout_are_read_plain():
    # An inference-mode forward may leave a convolution weight in MKL-DNN's blocked layout; the
    # fused pass reads the weight, so it makes it plain first (one filter times 1, exact).
    net = nn.Conv2D(16, 3, in_channels=8, weight_constraint=gc.MaxNorm(0.5))
    net.initialize(mx.init.Normal(1.0))
    ema = gc.WeightAverage(net, decay=0.5)
    net.weight.set_data(net.weight.data() * 2)
    net(mx.nd.ones((1, 8, 10, 10)))  # inference mode: MKL-DNN may reorder the weight
    expected = 0.5 * ema.averages[("weight", "cpu(0)")].asnumpy() + 0.5 * net.weight.data().asnumpy()
    ema.update()
    average = ema.averages[("weight", "cpu(0)")].asnumpy().astype(np.float64)
    norms = np.sqrt((expected.astype(np.float64).reshape(16, -1) ** 2).sum(axis=1))
    expected = expected * (0.5 / np.maximum(norms, 0.5))[:, None, None, None]
    np.testing.assert_allclose(average, expected, rtol=1e-5, atol=1e-6)


def test_a_network_moved_to_another_context_is_refused_and_nothing_changes():
    net = mlp([mx.cpu(0)], gc.MaxNorm(0.5))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    ema = gc.WeightAverage(net, decay=0.5, trainer=trainer)
    kept = {key: average.asnumpy() for key, average in ema.averages.items()}
    net.collect_params().reset_ctx(mx.cpu(1))
    for call in (ema.update, ema.swap):
        with pytest.raises(gc.EnforcementError, match=r"now live on contexts the averages are not on \(cpu\(0\)\): "
                                                      r"the network moved \(reset_ctx\) .* Nothing was changed"):
            call()
    with pytest.raises(gc.EnforcementError):
        with ema.swapped():
            pass
    net.collect_params().reset_ctx(mx.cpu(0))  # moved back: everything works again
    assert all((ema.averages[key].asnumpy() == value).all() for key, value in kept.items())
    before = weights(net, mx.cpu(0))
    with ema.swapped():
        pass
    assert all((weights(net, mx.cpu(0))[name] == value).all() for name, value in before.items())
    step(net, trainer, [mx.cpu(0)], np.random.default_rng(3))
    assert ema.updates == 1


def test_row_sparse_weights_are_refused_by_name():
    embedding = gluon.contrib.nn.SparseEmbedding(10, 4)
    embedding.initialize()
    with pytest.raises(gc.ConstraintTypeError, match=r"parameters \['weight'\] are row-sparse .* "
                                                      r"nn.Embedding\(sparse_grad=True\)"):
        gc.WeightAverage(embedding)


def test_a_scheduled_bound_is_taken_at_the_averages_update_count(path):
    # The averages are projected as the weights are after each step: with the bound in force
    # at that step (the average's update count), not the bound the schedule ends at.
    dense = nn.Dense(3, in_units=4, use_bias=False, weight_constraint=gc.Scheduled(gc.MaxNorm(1.0), start=10.0,
                                                                                   steps=100))
    dense.initialize(mx.init.Constant(2.0))  # row norms 4: inside the first bounds, outside the last
    ema = gc.WeightAverage(dense, decay=0.5)
    for update in range(1, 4):
        ema.update()
        bound = 10.0 + (1.0 - 10.0) * update / 100
        norms = np.linalg.norm(ema.averages[("weight", "cpu(0)")].asnumpy().astype(np.float64), axis=1)
        np.testing.assert_allclose(norms, min(4.0, bound), rtol=1e-6)
