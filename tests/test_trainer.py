"""ConstrainedTrainer in every single-machine configuration (docs/training.md)."""

import warnings
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn as gluon_nn

import gluon_constraints as gc
import training_reference as ref
from gluon_constraints import nn
from gluon_constraints.training.optimizer import master_copy_slot
from steps import forbid_host_synchronisation
from tolerances import assert_float32_close

LR, MOMENTUM, BOUND, STEPS, BATCH = 0.2, 0.9, 0.6, 6, 8
TWO = [mx.cpu(0), mx.cpu(1)]


def build_net(ctx, prefix="mlp_", weights=None):
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Dense(ref.HIDDEN, activation="relu", in_units=ref.IN, weight_constraint=gc.MaxNorm(BOUND)),
                nn.Dense(ref.OUT, in_units=ref.HIDDEN, weight_constraint=gc.MaxNorm(BOUND)))
    net.initialize(ctx=ctx)
    for name, value in (weights or ref.initial_weights()).items():
        net.collect_params()[prefix + name].set_data(mx.nd.array(value))
    return net


def train_steps(net, trainer, ctx, data, split_update=False):
    for x, y in data:
        xs = gluon.utils.split_and_load(mx.nd.array(x), ctx)
        ys = gluon.utils.split_and_load(mx.nd.array(y), ctx)
        with autograd.record():
            losses = [0.5 * ((net(xb) - yb) ** 2).sum() for xb, yb in zip(xs, ys)]
        for loss in losses:
            loss.backward()
        if split_update:
            trainer.allreduce_grads()
            trainer.update(len(x))
        else:
            trainer.step(len(x))


def weights_of(net, prefix="mlp_"):
    return {name[len(prefix):]: p.data(p.list_ctx()[0]).asnumpy() for name, p in net.collect_params().items()}


def assert_feasible_and_identical(net, bound=BOUND, rtol=1e-5):
    for name, p in net.collect_params().items():
        copies = [a.asnumpy() for a in p.list_data()]
        for c in copies[1:]:
            assert c.tobytes() == copies[0].tobytes(), f"{name}: device copies differ"
        if name.endswith("weight"):
            norms = np.sqrt((copies[0].astype(np.float64) ** 2).sum(axis=1))
            assert norms.max() <= bound * (1 + rtol), f"{name}: row norm {norms.max()}"


# What float32 training rounds, against a float64 reference or another context split: per step
# a gradient sums BATCH * HIDDEN products (a batch of the widest fan-in), and the update and the
# projection add about ten roundings (tests/tolerances.py).
OPERATIONS = STEPS * (BATCH * ref.HIDDEN + 10)


def assert_matches_reference(net, reference):
    ours = weights_of(net)
    for name, expected in reference.items():
        assert_float32_close(ours[name], expected, OPERATIONS, err_msg=name)


@pytest.fixture(scope="module")
def reference_run():
    data = ref.batches(STEPS, BATCH)
    result = ref.train(ref.initial_weights(), data, LR, MOMENTUM, BOUND)
    # The bound must bite, or the test proves nothing.
    unconstrained = ref.train(ref.initial_weights(), data, LR, MOMENTUM, 1e9)
    largest = max(np.linalg.norm(unconstrained[k], axis=1).max() for k in unconstrained if k.endswith("weight"))
    assert largest > 1.5 * BOUND
    return data, result


CONFIGS = [
    ("1ctx", [mx.cpu(0)], "device", None),
    ("1ctx-kvstore-None", [mx.cpu(0)], None, None),
    ("1ctx-KVStore-object", [mx.cpu(0)], "object", None),
    ("2ctx-device-default", TWO, "device", None),
    ("2ctx-device-uokv", TWO, "device", True),
    ("2ctx-device-no-uokv", TWO, "device", False),
    ("2ctx-local-default", TWO, "local", None),
    ("2ctx-local-uokv", TWO, "local", True),
    ("2ctx-local-no-uokv", TWO, "local", False),
    ("2ctx-KVStore-object", TWO, "object", None),
    ("2ctx-KVStore-object-no-uokv", TWO, "object", False),
]


@pytest.mark.parametrize("name,ctx,kvstore,uokv", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_training_keeps_constraints_and_matches_reference(name, ctx, kvstore, uokv, reference_run):
    data, expected = reference_run
    net = build_net(ctx)
    kv = mx.kv.create("device") if kvstore == "object" else kvstore
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                                    kvstore=kv, update_on_kvstore=uokv)
    train_steps(net, trainer, ctx, data)
    assert_feasible_and_identical(net)
    assert_matches_reference(net, expected)
    trainer.verify_constraints()
    if len(ctx) > 1 and uokv is not False:
        assert trainer._update_on_kvstore, "this configuration must exercise the kvstore update"


@pytest.mark.parametrize("ctx", [[mx.cpu(0)], TWO], ids=["1ctx", "2ctx"])
def test_allreduce_grads_then_update_keeps_constraints(ctx, reference_run):
    data, expected = reference_run
    net = build_net(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                                    update_on_kvstore=False)
    train_steps(net, trainer, ctx, data, split_update=True)
    assert_feasible_and_identical(net)
    assert_matches_reference(net, expected)


def test_post_step_projection_of_device_copies_is_not_enough(reference_run):
    """Why the projection lives in the optimizer: with the kvstore update (the multi-device
    default) a plain Trainer plus apply_constraints after step() leaves the kvstore's copy
    unconstrained, and the trajectory drifts from the intended one."""
    data, expected = reference_run
    net = build_net(TWO)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM})
    for batch in data:
        train_steps(net, trainer, TWO, [batch])
        gc.apply_constraints(net)
    ours = weights_of(net)
    assert max(np.abs(ours[k] - expected[k]).max() for k in expected) > 1e-2


OPTIMIZERS = [
    ("sgd", {"learning_rate": 0.2, "momentum": 0.9}),
    ("adam", {"learning_rate": 0.1}),
    ("rmsprop", {"learning_rate": 0.05}),
    ("nag", {"learning_rate": 0.2, "momentum": 0.9}),
    ("lamb", {"learning_rate": 0.3}),
    ("lars", {"learning_rate": 5.0, "momentum": 0.9, "eta": 0.5}),
    ("adagrad", {"learning_rate": 0.5}),
    ("ftrl", {"learning_rate": 0.5, "lamda1": 0.001}),
]


@pytest.mark.parametrize("uokv", [True, False], ids=["uokv", "no-uokv"])
@pytest.mark.parametrize("optimizer,params", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_every_builtin_optimizer_keeps_constraints(optimizer, params, uokv, reference_run):
    data, _ = reference_run
    # Reference semantics on one context: plain update, then project the (authoritative) copy.
    reference_net = build_net([mx.cpu(0)], prefix="mlp_")
    plain = gluon.Trainer(reference_net.collect_params(), optimizer, dict(params))
    for batch in data:
        train_steps(reference_net, plain, [mx.cpu(0)], [batch])
        gc.apply_constraints(reference_net)
    net = build_net(TWO)
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, dict(params), update_on_kvstore=uokv)
    train_steps(net, trainer, TWO, data)
    assert_feasible_and_identical(net)
    assert_matches_reference(net, weights_of(reference_net))


@pytest.mark.parametrize("aggregation", ["1", "3", "45"])
def test_aggregated_updates_project_every_parameter(aggregation, monkeypatch, reference_run):
    monkeypatch.setenv("MXNET_OPTIMIZER_AGGREGATION_SIZE", aggregation)
    data, expected = reference_run
    net = build_net([mx.cpu(0)])
    optimizer = mx.optimizer.SGD(learning_rate=LR, momentum=MOMENTUM)
    assert optimizer.aggregate_num == int(aggregation)
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer)
    train_steps(net, trainer, [mx.cpu(0)], data)
    assert_feasible_and_identical(net)
    assert_matches_reference(net, expected)


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
@pytest.mark.parametrize("optimizer,params,kind", [
    ("adam", {"learning_rate": 0.1}, "update"),
    ("rmsprop", {"learning_rate": 0.05}, "update"),
    ("nag", {"learning_rate": 0.1, "momentum": 0.9}, "update"),
    ("sgd", {"learning_rate": 0.2}, "project"),
    ("adagrad", {"learning_rate": 0.2}, "project"),
], ids=["adam", "rmsprop", "nag", "sgd", "adagrad"])
def test_one_step_is_one_kernel_call(optimizer, params, kind, ctx, uokv, monkeypatch, reference_run):
    # Adam, RMSProp and NAG update one parameter per call in MXNet: the wrapper takes the whole
    # step in one call and updates and projects every parameter in one fused kernel call. SGD
    # without momentum and AdaGrad keep MXNet's update, then one kernel call projects the two
    # constrained weights. A local kvstore that updates (2 contexts, uokv) runs one update per
    # push: the fused updates (or the projections) are queued and run in one call per 2^20
    # elements, so this small network's in one. Without the kvstore update, each device's
    # updater makes one call.
    from gluon_constraints.kernels import library

    data, _ = reference_run
    loaded = library.kernel()
    calls = []

    class Counted:
        def projection(self, weights, groups, stats=()):
            prepared = loaded.projection(weights, groups, stats)

            def queue():
                calls.append(("project", len(groups)))
                prepared.queue()
            return SimpleNamespace(queue=queue)

        def update(self, rule, groups, rates, arrays, stats=()):
            calls.append(("update", len(groups)))
            loaded.update(rule, groups, rates, arrays, stats)

    monkeypatch.setattr(library, "_loaded", Counted())
    net = build_net(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), optimizer, dict(params), update_on_kvstore=uokv)
    train_steps(net, trainer, ctx, data[:3])
    per_step = 1 if uokv is not False else len(ctx)  # one call per updater
    weights = 4 if kind == "update" else 2  # the fused update takes the biases too
    assert calls == [(kind, weights)] * (3 * per_step)
    assert_feasible_and_identical(net)
    reference = build_net([mx.cpu(0)], prefix="reference_")
    plain = gluon.Trainer(reference.collect_params(), optimizer, dict(params))
    for batch in data[:3]:
        train_steps(reference, plain, [mx.cpu(0)], [batch])
        gc.apply_constraints(reference)
    assert_matches_reference(net, weights_of(reference, prefix="reference_"))


@pytest.mark.parametrize("make,groups", [
    (lambda params: gc.ConstrainedTrainer(params, "sgd", {"learning_rate": 0.05, "momentum": 0.9}),
     [[1024, 1024 * 1024]] * 3),  # (bias, weight) of dense2, then 1, then 0
    (lambda params: gc.enforce(gluon.Trainer(params, "sgd", {"learning_rate": 0.05, "momentum": 0.9})),
     [[1024 * 1024], [1024, 1024 * 1024], [1024, 1024 * 1024], [1024]]),  # by name: weight before bias
], ids=["ConstrainedTrainer", "enforce"])
def test_kvstore_pushes_update_in_groups_of_2_20_elements_last_layers_first(make, groups, monkeypatch):
    # The backward pass computes the last layers' gradients first: pushed last layer first, the
    # queued updates run once 2^20 elements are queued, so the first calls can run while the
    # backward pass still computes the first layers' gradients. A ConstrainedTrainer pushes in
    # the reverse of the order it was given the parameters in; a trainer given enforcement
    # later, in the reverse of Gluon's order by name.
    from gluon_constraints.kernels import library

    loaded = library.kernel()
    calls = []

    class Recorded:
        def update(self, rule, groups, rates, arrays, stats=()):
            calls.append([a.size for a in arrays[::3]])  # per weight: (w, grad, momentum)
            loaded.update(rule, groups, rates, arrays, stats)

    monkeypatch.setattr(library, "_loaded", Recorded())

    def build(ctx, prefix):
        net = nn.HybridSequential(prefix=prefix)
        with net.name_scope():
            for _ in range(3):
                net.add(nn.Dense(1024, in_units=1024, weight_constraint=gc.MaxNorm(0.5)))
        mx.random.seed(3)
        net.initialize(mx.init.Normal(0.05), ctx=ctx)
        return net

    rng = np.random.default_rng(5)
    data = [(rng.normal(size=(4, 1024)).astype(np.float32), rng.normal(size=(4, 1024)).astype(np.float32))
            for _ in range(2)]
    net = build(TWO, "grouped_")
    trainer = make(net.collect_params())
    train_steps(net, trainer, TWO, data)
    assert calls == groups * len(data)
    monkeypatch.undo()
    # The same two contexts and the same kvstore sum of their gradients, each device updating
    # with MXNet's own operator and then projecting: the same arithmetic, so the same bits.
    reference = build(TWO, "reference_")
    plain = gluon.Trainer(reference.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9},
                          update_on_kvstore=False)
    for batch in data:
        train_steps(reference, plain, TWO, [batch])
        gc.apply_constraints(reference)
    for (name, ours), theirs in zip(net.collect_params().items(), reference.collect_params().values()):
        copies = [a.asnumpy() for a in ours.list_data()]
        assert copies[0].tobytes() == copies[1].tobytes(), name
        assert copies[0].tobytes() == theirs.data().asnumpy().tobytes(), name


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_fused_updates_are_planned_once_per_parameter_and_device(ctx, uokv, monkeypatch, reference_run):
    # Each device's updater has its own optimizer states: without the device in the record,
    # two updaters would replace each other's entries at every step.
    from gluon_constraints.training import projector

    data, _ = reference_run
    planned = []
    original = projector.update_entry

    def counted(*arguments, **options):
        planned.append(arguments[1].name)  # (kernel, rule, ...)
        return original(*arguments, **options)

    monkeypatch.setattr(projector, "update_entry", counted)
    net = build_net(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": 0.1}, update_on_kvstore=uokv)
    train_steps(net, trainer, ctx, data[:1])
    copies = len(ctx) if uokv is False else 1  # one updater per device, or the kvstore's
    assert planned == ["adam"] * (4 * copies)
    train_steps(net, trainer, ctx, data[1:4])
    assert len(planned) == 4 * copies


def make_fp16_weight(ctx, shape, prefix):
    """A float16 parameter (CPU has no float16 FullyConnected: gradients are written directly)."""
    params = gluon.ParameterDict(prefix)
    weight = params.get("weight", shape=shape, dtype="float16")
    params.initialize(ctx=ctx)
    return params, weight


def write_grad(param, value):
    for arr, grad in zip(param.list_data(), param.list_grad()):
        grad[:] = mx.nd.array(value, dtype="float16", ctx=grad.context)
        arr._fresh_grad = True


@pytest.mark.parametrize("optimizer,options,step", [
    ("sgd", {"momentum": 0.9}, lambda w, g, s, lr: _momentum_step(w, g, s, lr, 0.9)),
    ("nag", {"momentum": 0.9}, None),
    ("adam", {}, None),
], ids=["sgd", "nag", "adam"])
@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_multi_precision_projects_the_float32_master_copy(optimizer, options, step, ctx, uokv):
    rng = np.random.default_rng(5)
    params, weight = make_fp16_weight(ctx, (4, 6), f"mp_{optimizer}_")
    w0 = rng.normal(0, 0.2, (4, 6)).astype(np.float16)
    weight.set_data(mx.nd.array(w0, dtype="float16"))
    gc.attach(weight, gc.MaxNorm(BOUND))
    trainer = gc.ConstrainedTrainer(params, optimizer, dict(options, learning_rate=0.1, multi_precision=True),
                                    update_on_kvstore=uokv)
    # A constant gradient pushing every row outwards: without projecting the master copy the
    # norms grow step after step (fp16 weights are re-cast from the master each step).
    grad = (-np.sign(w0.astype(np.float64)) * 2.0).astype(np.float16)
    master, state = w0.astype(np.float64), np.zeros((4, 6))
    for _ in range(8):
        write_grad(weight, grad)
        trainer.step(1)
        if step is not None:
            master, state = step(master, grad.astype(np.float64), state, 0.1)
            master = ref.max_norm_rows(master, BOUND)
    copies = [a.asnumpy() for a in weight.list_data()]
    assert all(c.dtype == np.float16 for c in copies)
    for c in copies[1:]:
        assert c.tobytes() == copies[0].tobytes()
    norms = np.sqrt((copies[0].astype(np.float64) ** 2).sum(axis=1))
    assert norms.max() <= BOUND * (1 + 2e-3)
    assert norms.min() >= BOUND * (1 - 2e-3), "every row is pushed to the bound"
    for master_copy in master_copies(trainer, 0):
        assert master_copy.dtype == np.float32
        master_norms = np.sqrt((master_copy.astype(np.float64) ** 2).sum(axis=1))
        assert master_norms.max() <= BOUND * (1 + 1e-5), "the float32 master copy must be projected"
    if step is not None:
        np.testing.assert_allclose(copies[0], master.astype(np.float16), rtol=2e-3, atol=2e-3)


def master_copies(trainer, index):
    """The float32 master copies the optimizer keeps (kvstore updater or one per device)."""
    updaters = [trainer._kvstore._updater] if trainer._update_on_kvstore else trainer._updaters
    slot = master_copy_slot(type(trainer.optimizer.inner))
    return [u.states[index][slot].asnumpy() for u in updaters]


def _momentum_step(w, g, mom, lr, momentum):
    mom = momentum * mom - lr * g
    return w + mom, mom


def test_multi_precision_with_unknown_master_layout_is_refused():
    class Reordered(mx.optimizer.SGD):
        def create_state_multi_precision(self, index, weight):
            return super().create_state_multi_precision(index, weight)[::-1]

    params, weight = make_fp16_weight([mx.cpu(0)], (2, 3), "unknown_mp_")
    gc.attach(weight, gc.MaxNorm(1.0))
    with pytest.raises(gc.UnsupportedOptimizerError) as info:
        gc.ConstrainedTrainer(params, Reordered(multi_precision=True))
    assert "Optimizer Reordered defines its own multi-precision state layout" in str(info.value)


@pytest.mark.parametrize("ctx", [[mx.cpu(0)], TWO], ids=["1ctx", "2ctx"])
def test_sparse_grad_embedding_keeps_its_constraint(ctx):
    net = nn.HybridSequential(prefix="emb_")
    with net.name_scope():
        net.add(nn.Embedding(20, 6, sparse_grad=True, weight_constraint=gc.MaxNorm(0.5)),
                gluon_nn.Dense(1, flatten=True))
    net.initialize(mx.init.Normal(0.3), ctx=ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    rng = np.random.default_rng(2)
    for _ in range(5):
        tokens = mx.nd.array(rng.integers(0, 20, (4, 3)))
        target = mx.nd.array(rng.normal(0, 5, (4, 1)))
        xs, ys = gluon.utils.split_and_load(tokens, ctx), gluon.utils.split_and_load(target, ctx)
        with autograd.record():
            losses = [((net(x) - y) ** 2).sum() for x, y in zip(xs, ys)]
        for loss in losses:
            loss.backward()
        trainer.step(4)
    emb = net[0].weight
    assert emb.list_grad()[0].stype == "row_sparse"
    copies = [a.asnumpy() for a in emb.list_data()]
    for c in copies[1:]:
        assert c.tobytes() == copies[0].tobytes()
    norms = np.sqrt((copies[0].astype(np.float64) ** 2).sum(axis=1))
    assert 0.5 * (1 - 1e-5) <= norms.max() <= 0.5 * (1 + 1e-5)


@pytest.mark.parametrize("uokv", [True, False], ids=["uokv", "no-uokv"])
def test_resuming_from_checkpoint_equals_uninterrupted_run(uokv, tmp_path, reference_run):
    data, _ = reference_run
    options = {"learning_rate": LR, "momentum": MOMENTUM}
    straight = build_net(TWO)
    trainer = gc.ConstrainedTrainer(straight.collect_params(), "sgd", dict(options), update_on_kvstore=uokv)
    train_steps(straight, trainer, TWO, data)

    first = build_net(TWO)
    trainer = gc.ConstrainedTrainer(first.collect_params(), "sgd", dict(options), update_on_kvstore=uokv)
    train_steps(first, trainer, TWO, data[:3])
    first.save_parameters(str(tmp_path / "net.params"))
    trainer.save_states(str(tmp_path / "trainer.states"))

    resumed = build_net(TWO, weights={k: np.zeros_like(v) for k, v in ref.initial_weights().items()})
    resumed.load_parameters(str(tmp_path / "net.params"), ctx=TWO)
    trainer = gc.ConstrainedTrainer(resumed.collect_params(), "sgd", dict(options), update_on_kvstore=uokv)
    trainer.load_states(str(tmp_path / "trainer.states"))
    assert isinstance(trainer.optimizer, gc.ConstrainedOptimizer)
    train_steps(resumed, trainer, TWO, data[3:])
    for name, value in weights_of(straight).items():
        assert weights_of(resumed)[name].tobytes() == value.tobytes(), name


def test_states_saved_by_a_plain_trainer_still_get_enforcement(tmp_path, reference_run):
    data, _ = reference_run
    plain_net = build_net([mx.cpu(0)])
    plain = gluon.Trainer(plain_net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM})
    train_steps(plain_net, plain, [mx.cpu(0)], data[:2])
    plain.save_states(str(tmp_path / "plain.states"))
    net = build_net([mx.cpu(0)])
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM})
    trainer.load_states(str(tmp_path / "plain.states"))
    assert isinstance(trainer.optimizer, gc.ConstrainedOptimizer)
    train_steps(net, trainer, [mx.cpu(0)], data[2:])
    assert_feasible_and_identical(net)


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_set_learning_rate_keeps_working(ctx, uokv, reference_run):
    data, _ = reference_run
    net = build_net(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR}, update_on_kvstore=uokv)
    train_steps(net, trainer, ctx, data[:2])
    trainer.set_learning_rate(0.0)
    assert trainer.learning_rate == 0.0
    before = weights_of(net)
    train_steps(net, trainer, ctx, data[2:4])
    for name, value in weights_of(net).items():
        assert value.tobytes() == before[name].tobytes(), name
    trainer.set_learning_rate(LR)
    train_steps(net, trainer, ctx, data[4:])
    assert any(weights_of(net)[k].tobytes() != before[k].tobytes() for k in before)
    assert_feasible_and_identical(net)


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_enforcement_makes_no_host_synchronisation(ctx, uokv, monkeypatch, reference_run):
    data, _ = reference_run
    net = build_net(ctx)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM},
                                    update_on_kvstore=uokv)
    train_steps(net, trainer, ctx, data[:1])  # first step: kvstore set-up, outside the check
    mx.nd.waitall()
    xs = gluon.utils.split_and_load(mx.nd.array(data[1][0]), ctx)
    ys = gluon.utils.split_and_load(mx.nd.array(data[1][1]), ctx)
    with autograd.record():
        losses = [0.5 * ((net(xb) - yb) ** 2).sum() for xb, yb in zip(xs, ys)]
    for loss in losses:
        loss.backward()
    forbidden_calls = forbid_host_synchronisation(monkeypatch)
    trainer.step(BATCH)
    monkeypatch.undo()
    assert forbidden_calls == []
    assert_feasible_and_identical(net)


def test_constraint_that_does_not_fit_is_refused_when_the_trainer_is_built():
    net = build_net([mx.cpu(0)], prefix="bad_")
    net[0].weight.constraint = gc.MaxNorm(1.0, axis=(2,))  # set by hand, bypassing attach's check
    with pytest.raises(ValueError, match="for parameter 'bad_dense0_weight' is out of range for shape"):
        gc.ConstrainedTrainer(net.collect_params(), "sgd")


def test_deferred_parameter_set_by_hand_is_checked_before_the_first_step():
    net = gluon_nn.Dense(3, prefix="late_")
    net.initialize(mx.init.Normal(1.0))
    net.weight.constraint = gc.MaxNorm(1.0, axis=3)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    x = mx.nd.ones((2, 4))
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    before = net.weight.data().asnumpy()
    with pytest.raises(ValueError, match="for parameter 'late_weight' is out of range for shape \\(3, 4\\)"):
        trainer.step(2)
    assert net.weight.data().asnumpy().tobytes() == before.tobytes()


def test_warns_about_constrained_parameters_no_trainer_updates():
    net = build_net([mx.cpu(0)], prefix="partial_")
    trainer = gc.ConstrainedTrainer(net[0].collect_params(), "sgd", {"learning_rate": 0.1})
    x = mx.nd.ones((2, ref.IN))
    with autograd.record():
        loss = net(x).sum()
    loss.backward()
    with pytest.warns(UserWarning, match="not updated by this trainer .*: partial_dense1_weight"):
        trainer.step(2, ignore_stale_grad=True)


def test_enforce_installs_into_a_plain_trainer_once_and_only_before_the_first_step(reference_run):
    data, expected = reference_run
    net = build_net(TWO)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM})
    assert gc.enforce(trainer) is trainer
    optimizer = trainer.optimizer
    assert gc.enforce(trainer).optimizer is optimizer
    train_steps(net, trainer, TWO, data)
    assert_matches_reference(net, expected)
    trainer.verify_constraints()
    late = gluon.Trainer(build_net([mx.cpu(0)], prefix="late_mlp_").collect_params(), "sgd")
    late._init_kvstore()
    with pytest.raises(gc.EnforcementError, match="enforce\\(\\) was called after the trainer created its kvstore"):
        gc.enforce(late)


def test_verify_constraints_names_violated_parameters_and_copies(reference_run):
    net = build_net(TWO, prefix="mlp_")
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": LR})
    train_steps(net, trainer, TWO, reference_run[0][:1])
    trainer.verify_constraints()
    net[0].weight.list_data()[1][:] = 5.0
    with pytest.raises(gc.ConstraintViolationError) as info:
        trainer.verify_constraints()
    message = str(info.value)
    assert "mlp_dense0_weight (context cpu(1)): projection would change it by" in message
    assert "mlp_dense0_weight (context cpu(1)): differs from context cpu(0)" in message
    assert "mlp_dense1_weight" not in message


def test_constraint_handler_keeps_constraints_in_estimator_fit():
    from mxnet.gluon.contrib.estimator import Estimator

    net = build_net(TWO, prefix="est_")
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR, "momentum": MOMENTUM})
    data = ref.batches(4, BATCH)
    dataset = gluon.data.ArrayDataset(np.concatenate([x for x, _ in data]).astype(np.float32),
                                      np.concatenate([y for _, y in data]).astype(np.float32))
    loader = gluon.data.DataLoader(dataset, batch_size=BATCH)
    est = Estimator(net, gluon.loss.L2Loss(), train_metrics=mx.metric.MSE(), trainer=trainer, context=TWO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Estimator's own logging and deprecation notices
        est.fit(loader, epochs=3, event_handlers=[gc.ConstraintHandler()])
    assert isinstance(trainer.optimizer, gc.ConstrainedOptimizer)
    assert trainer._update_on_kvstore
    assert_feasible_and_identical(net, rtol=1e-5)
    norms = np.sqrt((net[0].weight.data().asnumpy().astype(np.float64) ** 2).sum(axis=1))
    assert norms.max() >= BOUND * (1 - 1e-5), "the bound must have been reached"
    trainer.verify_constraints()


def test_a_lambda_constraint_is_refused_for_parameter_servers_before_the_kvstore_exists():
    net = build_net([mx.cpu(0)], prefix="server_mlp_")
    net[0].weight.constraint = gc.get(lambda w: w * 0.5)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", kvstore="dist_sync")
    data = ref.batches(1, BATCH)
    with pytest.raises(gc.EnforcementError, match="The constraint function <lambda> is defined in "
                                                  ".*which the parameter servers cannot import"):
        train_steps(net, trainer, [mx.cpu(0)], data)
