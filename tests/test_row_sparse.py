"""Row-sparse gradients (docs/training.md, "Row-sparse gradients"): a lazy update's rows, and only
those, projected, in every configuration Gluon trains them in.

Each training test runs a constrained trainer and, in lockstep from the same weights, a plain
``gluon.Trainer`` with the same settings: the touched rows must be the plain update's rows
projected in numpy (tests/reference.py), the other rows unchanged bit for bit. A row the
projection leaves alone is compared bitwise (the fused kernel computes MXNet's lazy updates
term for term).
"""

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn
from gluon_constraints.catalogue import Reduction
from gluon_constraints.kernels import library
from gluon_constraints.kernels.boundary import RULES, Rates, UpdateRule, unit_group
from gluon_constraints.kernels.projection import project_touched_rows, projects_rows, touched_group
from steps import forbid_host_synchronisation
from tolerances import assert_float32_close

VOCABULARY, DIM, BOUND, STEPS = 40, 6, 0.5, 4
# Lazy updates MXNet computes with a row-sparse gradient (docs/training.md lists them).
LAZY = {"sgd": ("sgd", {"learning_rate": 2.0}),
        "sgd-momentum-wd": ("sgd", {"learning_rate": 1.0, "momentum": 0.9, "wd": 0.01}),
        "sgd-clip": ("sgd", {"learning_rate": 2.0, "clip_gradient": 0.05}),
        "adam": ("adam", {"learning_rate": 0.3, "wd": 0.01}),
        "adam-clip": ("adam", {"learning_rate": 0.3, "clip_gradient": 0.05}),
        "adagrad": ("adagrad", {"learning_rate": 1.0})}
# Single process: one context (no kvstore), two contexts updating their own copies.
LOCAL = {"1ctx": (1, "device", None), "2ctx-device": (2, "device", False), "2ctx-local": (2, "local", False)}


def build(contexts, constraint=gc.MaxNorm(BOUND), prefix="net_", scale=0.05):
    """Embedding(40, 6, sparse_grad=True) with ``constraint``, then Dense(1); feasible start."""
    net = nn.HybridSequential(prefix=prefix)
    with net.name_scope():
        net.add(nn.Embedding(VOCABULARY, DIM, sparse_grad=True, weight_constraint=constraint),
                nn.Dense(1, flatten=True, in_units=3 * DIM))
    net.initialize(mx.init.Normal(scale), ctx=contexts)
    return net


def batches(seed=3):
    """Token batches touching some rows each step, never rows 30 and up (never touched)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 30, (4, 3)).astype(np.float32) for _ in range(STEPS)]


def step(net, trainer, x, contexts):
    xs = gluon.utils.split_and_load(mx.nd.array(x), contexts)
    with autograd.record():
        losses = [(10.0 * net(xb) - 3.0).square().sum() for xb in xs]
    for loss in losses:
        loss.backward()
    trainer.step(x.shape[0])


def embedding(net, context=None):
    weight = net[0].weight
    return (weight.data(context) if context is not None else weight.list_data()[0]).asnumpy()


def copy_weights(source, target):
    for a, b in zip(source.collect_params().values(), target.collect_params().values()):
        b.set_data(a.data(a.list_ctx()[0]).copy())


def check_step(before, after, plain, touched, project):
    """``after`` (constrained) against ``plain`` (the plain update of ``before``) on one step."""
    untouched = np.setdiff1d(np.arange(VOCABULARY), touched)
    np.testing.assert_array_equal(after[untouched], before[untouched], "an untouched row changed")
    np.testing.assert_array_equal(plain[untouched], before[untouched], "the plain update is not lazy")
    expected = project(plain[touched].astype(np.float64))
    kept = np.all(expected == plain[touched], axis=1)
    np.testing.assert_array_equal(after[touched][kept], plain[touched][kept], "a feasible row changed")
    assert_float32_close(after[touched], expected, 4, "touched rows")


def lockstep(optimizer, contexts, kvstore, uokv, project, constraint=gc.MaxNorm(BOUND), monitor=False):
    """Constrained and plain training from the same weights at every step; check every step."""
    name, options = LAZY[optimizer]
    ours, plain = build(contexts, constraint, "ours_"), build(contexts, None, "plain_")
    gc.apply_constraints(ours)  # a feasible start: the first update projects every row (tested below)
    trainer = gc.ConstrainedTrainer(ours.collect_params(), name, dict(options), kvstore=kvstore,
                                    update_on_kvstore=uokv, monitor=monitor)
    reference = gluon.Trainer(plain.collect_params(), name, dict(options), kvstore=kvstore, update_on_kvstore=uokv)
    stats = []
    for x in batches():
        copy_weights(ours, plain)  # the optimizer states agree: the projection never touches them
        before = embedding(ours)
        step(ours, trainer, x, contexts)
        step(plain, reference, x, contexts)
        for c in contexts:
            check_step(before, embedding(ours, c), embedding(plain, c), np.unique(x).astype(int), project)
        if monitor:
            stats.append((before, embedding(plain), trainer.constraint_stats()))
    return trainer, stats


def max_norm_rows(rows):
    return ref.max_norm(rows, BOUND, (1,))


def without_kernel(monkeypatch):
    """Take the stock path: the kernel is unavailable for trainers made from now on."""
    monkeypatch.setattr(library, "_loaded", None)
    monkeypatch.setattr(library, "_tried", True)


@pytest.mark.parametrize("config", sorted(LOCAL))
@pytest.mark.parametrize("optimizer", sorted(LAZY))
def test_lazy_updates_project_the_touched_rows_and_leave_the_others(optimizer, config):
    count, kvstore, uokv = LOCAL[config]
    lockstep(optimizer, [mx.cpu(i) for i in range(count)], kvstore, uokv, max_norm_rows)


@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam"])
@pytest.mark.parametrize("config", sorted(LOCAL))
def test_the_stock_path_projects_the_same_rows(optimizer, config, monkeypatch):
    without_kernel(monkeypatch)
    count, kvstore, uokv = LOCAL[config]
    trainer, _ = lockstep(optimizer, [mx.cpu(i) for i in range(count)], kvstore, uokv, max_norm_rows)
    assert trainer.optimizer.projector.kernel is None


@pytest.mark.parametrize("constraint,project", [
    (gc.NonNeg(), ref.non_neg),
    (gc.MinMaxNorm(0.2, BOUND), lambda w: ref.min_max_norm(w, 0.2, BOUND, 1.0, (1,))),
    (gc.UnitNorm(), lambda w: ref.unit_norm(w, (1,))),
    (gc.Clip(-0.1, 0.1), lambda w: np.clip(w, -0.1, 0.1)),
    (gc.Compose([gc.NonNeg(), gc.MaxNorm(BOUND)]), lambda w: ref.max_norm(ref.non_neg(w), BOUND, (1,))),
], ids=["nonneg", "minmax", "unit", "clip", "compose"])
def test_every_row_family_projects_only_the_touched_rows(constraint, project):
    lockstep("sgd-momentum-wd", [mx.cpu(0)], "device", None, project, constraint)


def test_simplex_rows_take_the_stock_path_and_match_the_sorting_reference():
    def simplex(rows):  # Euclidean projection onto {w >= 0, sum w = 1}, by sorting (Duchi et al.)
        out = np.empty_like(rows)
        for i, v in enumerate(rows):
            u = np.sort(v)[::-1]
            cumulative = np.cumsum(u) - 1.0
            k = np.nonzero(u - cumulative / np.arange(1, len(u) + 1) > 0)[0][-1]
            out[i] = np.maximum(v - cumulative[k] / (k + 1), 0.0)
        return out

    constraint = gc.Simplex()
    assert touched_group(mx.nd.zeros((VOCABULARY, DIM)), constraint, Reduction((1,))) is None
    # A simplex row is never inside the set by chance: start feasible (uniform rows).
    ours = build([mx.cpu(0)], constraint, "simplex_")
    ours[0].weight.set_data(mx.nd.full((VOCABULARY, DIM), 1.0 / DIM))
    trainer = gc.ConstrainedTrainer(ours.collect_params(), "sgd", {"learning_rate": 0.5})
    plain = build([mx.cpu(0)], None, "simplex_plain_")
    reference = gluon.Trainer(plain.collect_params(), "sgd", {"learning_rate": 0.5})
    for x in batches():
        copy_weights(ours, plain)
        before = embedding(ours)
        step(ours, trainer, x, [mx.cpu(0)])
        step(plain, reference, x, [mx.cpu(0)])
        touched = np.unique(x).astype(int)
        untouched = np.setdiff1d(np.arange(VOCABULARY), touched)
        after = embedding(ours)
        np.testing.assert_array_equal(after[untouched], before[untouched])
        assert_float32_close(after[touched], simplex(embedding(plain)[touched].astype(np.float64)), 4 * DIM)


@pytest.mark.parametrize("kvstore", ["device", "local"])
@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam", "adagrad"])
def test_updates_on_the_kvstore_equal_updates_on_the_devices_bitwise(optimizer, kvstore):
    """The kvstore's copy gets the same merged gradient and the same arithmetic as each device."""
    name, options = LAZY[optimizer]
    contexts = [mx.cpu(0), mx.cpu(1)]
    results = []
    for uokv in (True, False):
        net = build(contexts, prefix=f"kv{uokv}_")
        mx.random.seed(5)
        net.initialize(mx.init.Normal(0.05), ctx=contexts, force_reinit=True)
        trainer = gc.ConstrainedTrainer(net.collect_params(), name, dict(options), kvstore=kvstore,
                                        update_on_kvstore=uokv)
        for x in batches():
            step(net, trainer, x, contexts)
        assert trainer._update_on_kvstore is uokv
        results.append([embedding(net, c) for c in contexts])
        assert np.linalg.norm(results[-1][0], axis=1).max() <= BOUND * (1 + 1e-6)
    for on_kvstore, on_devices in zip(*results):
        np.testing.assert_array_equal(on_kvstore, on_devices)


@pytest.mark.parametrize("name,options", [("nag", {"learning_rate": 1.0, "momentum": 0.9}),
                                          ("sgd", {"learning_rate": 1.0, "momentum": 0.9, "lazy_update": False}),
                                          ("ftrl", {"learning_rate": 1.0}),
                                          ("rmsprop", {"learning_rate": 0.1})],
                         ids=["nag", "sgd-not-lazy", "ftrl-dense-weight", "rmsprop"])
def test_updates_that_write_every_row_project_every_row(name, options):
    """Not lazy: every row may move (momentum, weight decay, FTRL's state), so every row is projected."""
    net = build([mx.cpu(0)], prefix=name + "_")
    trainer = gc.ConstrainedTrainer(net.collect_params(), name, dict(options))
    for x in batches():
        step(net, trainer, x, [mx.cpu(0)])
        net[0].weight.set_data(net[0].weight.data() * 3.0)  # every row out of the set
    step(net, trainer, batches()[0], [mx.cpu(0)])
    assert np.linalg.norm(embedding(net), axis=1).max() <= BOUND * (1 + 1e-6)


def test_the_first_update_makes_every_row_feasible_then_only_touched_rows_move():
    net = build([mx.cpu(0)], prefix="first_", scale=1.0)  # rows of norm about 2.4 > 0.5
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    first, *rest = batches()
    step(net, trainer, first, [mx.cpu(0)])
    weights = embedding(net)
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), BOUND, rtol=1e-6)
    for x in rest:
        before = embedding(net)
        step(net, trainer, x, [mx.cpu(0)])
        untouched = np.setdiff1d(np.arange(VOCABULARY), np.unique(x).astype(int))
        np.testing.assert_array_equal(embedding(net)[untouched], before[untouched])


def test_a_new_constraint_projects_the_whole_table_once():
    net = build([mx.cpu(0)], prefix="swap_")
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    for x in batches()[:2]:
        step(net, trainer, x, [mx.cpu(0)])
    gc.attach(net[0].weight, gc.MaxNorm(0.1))
    x = batches()[2]
    step(net, trainer, x, [mx.cpu(0)])
    assert np.linalg.norm(embedding(net), axis=1).max() <= 0.1 * (1 + 1e-6)
    before = embedding(net)
    x = batches()[3]
    step(net, trainer, x, [mx.cpu(0)])
    untouched = np.setdiff1d(np.arange(VOCABULARY), np.unique(x).astype(int))
    np.testing.assert_array_equal(embedding(net)[untouched], before[untouched])


def test_every_other_step_projects_the_whole_table():
    net = build([mx.cpu(0)], prefix="every_")
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 2.0}, every=2)
    data = batches()
    step(net, trainer, data[0], [mx.cpu(0)])
    assert np.linalg.norm(embedding(net), axis=1).max() > BOUND  # step 1 projects nothing
    step(net, trainer, data[1], [mx.cpu(0)])  # step 2: rows of steps 1 and 2 too
    assert np.linalg.norm(embedding(net), axis=1).max() <= BOUND * (1 + 1e-6)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stock"])
def test_monitoring_reports_the_touched_rows(fused, monkeypatch):
    """moved: the fraction of the touched rows the projection changed; max and mean of their norms."""
    if not fused:
        without_kernel(monkeypatch)
    _, records = lockstep("sgd", [mx.cpu(0)], "device", None, max_norm_rows, monitor=True)
    for (_, plain, stats), x in zip(records[1:], batches()[1:]):  # the first step projects every row
        norms = np.linalg.norm(plain[np.unique(x).astype(int)].astype(np.float64), axis=1)
        after = np.minimum(norms, BOUND)
        measured = stats["ours_embedding0_weight"]
        assert measured["moved"].asscalar() == pytest.approx(np.mean(norms > BOUND))
        assert measured["max_norm"].asscalar() == pytest.approx(after.max(), rel=1e-5)
        assert measured["mean_norm"].asscalar() == pytest.approx(after.mean(), rel=1e-5)


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
def test_a_monitored_fused_step_does_not_wait_for_the_device(monkeypatch):
    net = build([mx.cpu(0)], prefix="nosync_")
    trainer = gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": 0.3}, monitor=True)
    data = batches()
    step(net, trainer, data[0], [mx.cpu(0)])  # the first step projects the whole table
    mx.nd.waitall()
    calls = forbid_host_synchronisation(monkeypatch)
    for x in data[1:]:
        step(net, trainer, x, [mx.cpu(0)])
    stats = trainer.constraint_stats()
    monkeypatch.undo()
    assert calls == [] and 0.0 <= stats["nosync_embedding0_weight"]["moved"].asscalar() <= 1.0


def test_float16_sparse_embeddings_are_refused_by_mxnet_itself():
    """MXNet 1.9.1 computes no float16 row-sparse embedding gradient: plain Gluon fails the same way."""
    for trainer_class in (gluon.Trainer, gc.ConstrainedTrainer):
        net = nn.Embedding(VOCABULARY, DIM, sparse_grad=True, weight_constraint=gc.MaxNorm(BOUND))
        net.initialize()
        net.cast("float16")
        trainer = trainer_class(net.collect_params(), "adam", {"multi_precision": True})
        with pytest.raises(mx.base.MXNetError, match="only supports 32-bit and 64-bit floating point"):
            with autograd.record():
                loss = net(mx.nd.array(batches()[0], dtype="float16")).sum()
            loss.backward()
            trainer.step(1)
            mx.nd.waitall()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_float16_weights_with_float32_masters(name):
    """Adam updates its float32 master copy lazily: its touched rows are projected, then cast. SGD's
    float16 operators take dense gradients (every row is written), so every row is projected."""
    param = gluon.Parameter(f"half_{name}", shape=(VOCABULARY, DIM), dtype="float16", grad_stype="row_sparse")
    param.initialize(mx.init.Normal(0.05))
    gc.attach(param, gc.MaxNorm(BOUND))
    trainer = gc.ConstrainedTrainer([param], name, {"learning_rate": 1.0, "multi_precision": True})
    for x in batches():
        touched = np.unique(x).astype(int)
        before = param.data().asnumpy()
        gradient = np.full((len(touched), DIM), 5.0, np.float16)
        sparse = mx.nd.sparse.row_sparse_array((gradient, touched), shape=param.shape, dtype="float16")
        sparse.copyto(param.list_grad()[0])
        param.list_data()[0]._fresh_grad = True  # as backward would mark it
        trainer.step(1)
        master = trainer._updaters[0].states[0][0 if name == "adam" else 1].asnumpy()
        weights = param.data().asnumpy()
        np.testing.assert_array_equal(weights, master.astype(np.float16))
        assert np.linalg.norm(master.astype(np.float64), axis=1).max() <= BOUND * (1 + 1e-6)
        untouched = np.setdiff1d(np.arange(VOCABULARY), touched)
        np.testing.assert_array_equal(weights[untouched], before[untouched])


# -- the kernel's operator against MXNet's own lazy updates ------------------------------------------
RULE_CASES = {  # rule name, optimizer op, op kwargs, hyperparameters (h1, h2, h3), state count
    "sgd_lazy": (mx.nd.sgd_update, {}, (0.0, 0.0, 0.0), 0),
    "sgd_mom_lazy": (mx.nd.sgd_mom_update, {"momentum": 0.9}, (0.9, 0.0, 0.0), 1),
    "adam_lazy": (mx.nd.adam_update, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}, (0.9, 0.999, 1e-8), 2),
    "adagrad_lazy": (mx.nd.sparse.adagrad_update, {"epsilon": 1e-7}, (1e-7, 0.0, 0.0), 1),
}


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
@pytest.mark.parametrize("clip", [-1.0, 0.02], ids=["no-clip", "clip"])
@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_the_kernels_lazy_rules_are_mxnets_bit_for_bit(rule, clip, rng):
    operator, hyper, h, states = RULE_CASES[rule]
    wd = 0.0 if rule == "adagrad_lazy" else 0.01
    weight = rng.normal(size=(50, 7)).astype(np.float32)
    rows = np.array([0, 3, 4, 17, 49])
    grad = mx.nd.sparse.row_sparse_array((rng.normal(size=(5, 7)).astype(np.float32), rows), shape=(50, 7))
    state_values = [np.abs(rng.normal(size=(50, 7))).astype(np.float32) for _ in range(states)]
    ours, theirs = mx.nd.array(weight), mx.nd.array(weight)
    our_states, their_states = [mx.nd.array(s) for s in state_values], [mx.nd.array(s) for s in state_values]
    kwargs = dict(hyper, lr=0.1, wd=wd, rescale_grad=0.5)
    if clip >= 0:
        kwargs["clip_gradient"] = clip
    if rule != "adagrad_lazy":
        kwargs["lazy_update"] = True
    operator(theirs, grad, *their_states, out=theirs, **kwargs)
    group = unit_group((50, 1, 1), "norm", 0.0, 1e30, 1.0, 0.0, 2)  # a bound nothing reaches
    indices = mx.nd.empty((51,), dtype=np.int64)
    library.kernel().touched_rows(UpdateRule(RULES[rule], 0, 0.5, clip, *h), group, Rates(0.1, wd), ours, grad,
                                  indices, our_states)
    np.testing.assert_array_equal(ours.asnumpy(), theirs.asnumpy())
    for mine, other in zip(our_states, their_states):
        np.testing.assert_array_equal(mine.asnumpy(), other.asnumpy())


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stock"])
@pytest.mark.parametrize("storage", ["default", "row_sparse"])
def test_projecting_touched_rows_of_a_table(storage, fused, rng):
    values = rng.normal(size=(30, 5)).astype(np.float32)
    array = mx.nd.array(values).tostype(storage)
    touched = np.array([2, 3, 11, 29])
    rows = mx.nd.sparse.row_sparse_array((np.ones((4, 5), np.float32), touched), shape=(30, 5))
    constraint, reduction = gc.MaxNorm(1.0), Reduction((1,))
    group = touched_group(array, constraint, reduction) if fused else None
    assert (group is not None) == (fused and library.kernel() is not None) or not fused
    stats = mx.nd.zeros((3,))
    project_touched_rows(array, rows, constraint, reduction, stats, group)
    expected = values.copy()
    expected[touched] = ref.max_norm(values[touched], 1.0, (1,))
    result = array.asnumpy()
    untouched = np.setdiff1d(np.arange(30), touched)
    np.testing.assert_array_equal(result[untouched], values[untouched])
    assert_float32_close(result[touched], expected[touched], 4)
    norms = np.linalg.norm(values[touched].astype(np.float64), axis=1)
    np.testing.assert_allclose(stats.asnumpy(), [np.mean(norms > 1.0), min(norms.max(), 1.0),
                                                 np.minimum(norms, 1.0).mean()], rtol=1e-5)


def test_which_constraints_project_rows_on_their_own():
    shape = (VOCABULARY, DIM)
    rows = Reduction((1,))
    assert projects_rows(gc.MaxNorm(1.0), rows, shape)
    assert projects_rows(gc.Compose([gc.NonNeg(), gc.UnitNorm()]), rows, shape)
    assert projects_rows(gc.Simplex(), rows, shape)
    assert not projects_rows(gc.MaxNorm(1.0, axis=0), rows, shape)  # columns span every row
    assert not projects_rows(gc.SpectralNorm(), rows, shape)
    assert not projects_rows(gc.Orthogonal(), rows, shape)


def group_with_mode(mode, runs=1):
    group = unit_group((6, runs, 1), "norm", 0.0, 0.5, 1.0)
    group.mode = mode
    return group


NONE = UpdateRule(RULES["none"], 0, 1.0, -1.0, 0.0, 0.0, 0.0)


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
@pytest.mark.parametrize("call,message", [
    (lambda k, w, r, i: k.touched_rows(NONE, group_with_mode(7), Rates(0, 0), w, r, i), "unknown mode 7"),
    (lambda k, w, r, i: k.touched_rows(NONE, group_with_mode(0, runs=2), Rates(0, 0), w, r, i), "must be rows"),
    (lambda k, w, r, i: k.touched_rows(UpdateRule(RULES["adam"], 0, 1, -1, 0.9, 0.999, 1e-8), group_with_mode(0),
                                       Rates(0, 0), w, r, i), "unknown lazy rule 2"),
    (lambda k, w, r, i: k.touched_rows(UpdateRule(RULES["sgd_mom_lazy"], 0, 1, -1, 0.9, 0, 0), group_with_mode(0),
                                       Rates(0, 0), w, r, i), "3 arrays where the rule takes 4"),
], ids=["mode", "not-rows", "dense-rule", "missing-state"])
def test_a_malformed_call_fails_when_made_and_changes_nothing(call, message):
    weight = mx.nd.ones((6, 2))
    rows = mx.nd.sparse.row_sparse_array((np.ones((1, 2), np.float32), [1]), shape=(6, 2))
    indices = mx.nd.empty((7,), dtype=np.int64)
    with pytest.raises(gc.KernelCallError, match=message):
        call(library.kernel(), weight, rows, indices)
    np.testing.assert_array_equal(weight.asnumpy(), np.ones((6, 2)))
    library.kernel().touched_rows(NONE, group_with_mode(0), Rates(0, 0), weight, rows, indices)  # well formed
    expected = np.ones((6, 2))
    expected[1] = 0.5 / np.sqrt(2.0)  # row 1 only, onto norm 0.5
    assert_float32_close(weight.asnumpy(), expected, 2)


@pytest.mark.skipif(library.kernel() is None, reason="needs the fused kernel")
def test_row_indices_that_do_not_fit_their_buffer_fail_with_one_message():
    rows = mx.nd.sparse.row_sparse_array((np.ones((3, 2), np.float32), [1, 2, 4]), shape=(6, 2))
    library.kernel().touched_rows(NONE, group_with_mode(0), Rates(0, 0), mx.nd.ones((6, 2)), rows,
                                  mx.nd.empty((7,), dtype=np.int64))  # registers gc_row_indices
    for _ in range(2):
        with pytest.raises(mx.base.MXNetError, match="3 rows do not fit an output of 3") as raised:
            mx.nd.gc_row_indices(rows, capacity="3").asnumpy()
        assert str(raised.value).count("gc_row_indices:") == 1  # not earlier failures' messages too
    with pytest.raises(mx.base.MXNetError, match='attribute "capacity" must be an integer >= 1: got "0"'):
        mx.nd.gc_row_indices(rows, capacity="0")


# -- row-sparse weights: the kvstore's copy is the one projected --------------------------------------
def sparse_weight_net(contexts, constraint, prefix):
    """MXNet's SparseEmbedding (a row-sparse weight, pulled a batch's rows at a time), then Dense(1)."""
    net = gluon.nn.Sequential(prefix=prefix)
    with net.name_scope():
        net.add(mx.gluon.contrib.nn.SparseEmbedding(VOCABULARY, DIM), nn.Dense(1, flatten=True, in_units=3 * DIM))
    net.initialize(mx.init.Normal(0.05), ctx=contexts)
    gc.attach(net[0].weight, constraint)
    return net


def stored_weight(trainer):
    index = next(i for i, p in enumerate(trainer._params) if p._stype == "row_sparse")
    rows = mx.nd.sparse.zeros("row_sparse", (VOCABULARY, DIM))
    trainer._kvstore.row_sparse_pull(index, out=rows, row_ids=mx.nd.arange(VOCABULARY, dtype="int64"))
    return rows.asnumpy()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stock"])
@pytest.mark.parametrize("contexts", [1, 2])
@pytest.mark.parametrize("optimizer", ["sgd-momentum-wd", "adam"])
def test_row_sparse_weights_train_as_dense_weights_with_sparse_gradients(optimizer, contexts, fused, monkeypatch):
    """The kvstore updates the rows a gradient has and projects them: the same arithmetic as a dense
    weight's lazy update on a device (itself checked against plain Gluon above)."""
    if not fused:
        without_kernel(monkeypatch)
    name, options = LAZY[optimizer]
    devices = [mx.cpu(i) for i in range(contexts)]
    sparse = sparse_weight_net(devices, gc.MaxNorm(BOUND), f"rsp{contexts}_")
    dense = build(devices, prefix=f"dns{contexts}_")
    initial = sparse[0].weight._data[0].asnumpy()
    for a, b in zip(sparse.collect_params().values(), dense.collect_params().values()):
        b.set_data(mx.nd.array(a._data[0].asnumpy()))
    sparse_trainer = gc.ConstrainedTrainer(sparse.collect_params(), name, dict(options))
    dense_trainer = gc.ConstrainedTrainer(dense.collect_params(), name, dict(options), update_on_kvstore=False)
    touched = set()
    for x in batches():
        step(sparse, sparse_trainer, x, devices)
        step(dense, dense_trainer, x, devices)
        touched |= set(np.unique(x).astype(int))
        np.testing.assert_array_equal(stored_weight(sparse_trainer), embedding(dense))
    never = sorted(set(range(VOCABULARY)) - touched)
    np.testing.assert_array_equal(stored_weight(sparse_trainer)[never], initial[never])
    assert sparse_trainer._update_on_kvstore
    sparse_trainer.verify_constraints()


@pytest.mark.parametrize("constraint", [gc.SpectralNorm(), gc.Orthogonal(), gc.MaxNorm(1.0, axis=0)],
                         ids=["spectral", "orthogonal", "columns"])
def test_constraints_on_the_whole_matrix_are_refused_on_row_sparse_weights(constraint):
    net = sparse_weight_net([mx.cpu(0)], constraint, "refused_")
    before = net[0].weight._data[0].asnumpy()
    message = r"Parameter 'refused_sparseembedding0_weight' has row_sparse storage and the constraint"
    with pytest.raises(gc.EnforcementError, match=message):
        gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    with pytest.raises(gc.EnforcementError, match=message):
        gc.apply_constraints(net)
    np.testing.assert_array_equal(net[0].weight._data[0].asnumpy(), before)
    gc.attach(net[0].weight, gc.MaxNorm(BOUND))
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 1.0})
    step(net, trainer, batches()[0], [mx.cpu(0)])
    gc.attach(net[0].weight, constraint)  # attached during training: refused at the next step
    stored = stored_weight(trainer)
    with pytest.raises(gc.EnforcementError, match=message):
        step(net, trainer, batches()[1], [mx.cpu(0)])
    np.testing.assert_array_equal(stored_weight(trainer), stored)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "stock"])
def test_apply_constraints_projects_every_row_of_a_row_sparse_weight(fused, monkeypatch):
    if not fused:
        without_kernel(monkeypatch)
    net = sparse_weight_net([mx.cpu(0), mx.cpu(1)], gc.MaxNorm(BOUND), f"apply{fused}_")
    for copy in net[0].weight._data:
        rows = np.ones((VOCABULARY, DIM), np.float32) * np.arange(VOCABULARY, dtype=np.float32).reshape(-1, 1) / 10
        mx.nd.array(rows).tostype("row_sparse").copyto(copy)
    before = net[0].weight._data[0].asnumpy()
    gc.apply_constraints(net)
    for copy in net[0].weight._data:
        assert copy.stype == "row_sparse"
        assert_float32_close(copy.asnumpy(), max_norm_rows(before), 4)


def test_a_scheduled_bound_that_tightens_reaches_the_untouched_rows():
    net = build([mx.cpu(0)], gc.Scheduled(gc.MaxNorm(0.1), start=0.5, steps=2), "tighten_", scale=0.1)
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    data = batches()
    for x in data[:3]:  # the bound reaches 0.1 at the second update and stays there
        step(net, trainer, x, [mx.cpu(0)])
    assert np.linalg.norm(embedding(net)[30:], axis=1).max() <= 0.1 * (1 + 1e-6)  # never touched
    before = embedding(net)
    step(net, trainer, data[3], [mx.cpu(0)])
    untouched = np.setdiff1d(np.arange(VOCABULARY), np.unique(data[3]).astype(int))
    np.testing.assert_array_equal(embedding(net)[untouched], before[untouched])
