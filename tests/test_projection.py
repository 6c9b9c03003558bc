"""In-place projection: the fused kernel against the stock-operator path and float64 references."""

import shutil
import subprocess
import threading

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gluon_constraints as gc
import reference as ref
from gluon_constraints import nn
from gluon_constraints.kernels import library, sources
from gluon_constraints.kernels.boundary import MODES, RULES, Rates, UnitGroup, UpdateRule, unit_group
from gluon_constraints.kernels.projection import project_in_place, unit_groups
from tolerances import assert_float32_close, float32_atol

# The kernel comes prebuilt with a wheel (tests/test_wheel.py runs this file against one) or is
# built on first use by a compiler.
PREBUILT, _ = library.prebuilt_library()
requires_compiler = pytest.mark.skipif(PREBUILT is None and shutil.which("g++") is None,
                                       reason="needs the wheel's prebuilt kernel or a C++ compiler")


@requires_compiler
def test_kernel_is_loaded_from_the_wheel_or_built_where_a_compiler_exists():
    assert library.kernel() is not None
    if PREBUILT is not None:
        assert library.kernel().path == PREBUILT
    else:
        assert library.kernel().path.parent == library.cache_directory()


CASES = [
    ("MaxNorm", gc.MaxNorm(1.0), lambda w, a: ref.max_norm(w, 1.0, a)),
    ("MinMaxNorm", gc.MinMaxNorm(0.8, 1.2), lambda w, a: ref.min_max_norm(w, 0.8, 1.2, 1.0, a)),
    ("MinMaxNorm-rate", gc.MinMaxNorm(0.8, 1.2, rate=0.3), lambda w, a: ref.min_max_norm(w, 0.8, 1.2, 0.3, a)),
    ("UnitNorm", gc.UnitNorm(), lambda w, a: ref.unit_norm(w, a)),
    ("NonNeg", gc.NonNeg(), lambda w, a: ref.non_neg(w)),
    ("Compose", gc.Compose([gc.NonNeg(), gc.MaxNorm(1.0)]), lambda w, a: ref.max_norm(ref.non_neg(w), 1.0, a)),
]


def weights(rng, shape):
    scale = rng.choice([0.01, 0.1, 1.0], size=(shape[0],) + (1,) * (len(shape) - 1))
    w = (rng.normal(size=shape) * scale).astype(np.float32)
    w[0] = 0.0
    return w


@requires_compiler
@pytest.mark.parametrize("shape", [(300, 50), (1, 7), (13,)], ids=["2d", "one-row", "1d"])
@pytest.mark.parametrize("name,constraint,reference", CASES, ids=[c[0] for c in CASES])
def test_fused_and_stock_paths_agree_with_the_reference(name, constraint, reference, shape, rng):
    w = weights(rng, shape)
    axes = ref.per_output_unit_axes(len(shape))
    reduction = gc.Reduction(axes)
    fused_w, stock_w = mx.nd.array(w), mx.nd.array(w)
    project_in_place([(fused_w, constraint, reduction)], use_fused=True)
    project_in_place([(stock_w, constraint, reduction)], use_fused=False)
    expected = reference(w.astype(np.float64), axes)
    np.testing.assert_allclose(fused_w.asnumpy(), expected, rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(stock_w.asnumpy(), expected, rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(fused_w.asnumpy(), stock_w.asnumpy(), rtol=2e-6, atol=1e-8)


@requires_compiler
def test_fused_leaves_feasible_rows_bitwise_unchanged_and_is_idempotent(rng):
    w = weights(rng, (200, 64))
    array = mx.nd.array(w)
    project_in_place([(array, gc.MaxNorm(0.5), gc.Reduction((1,)))])
    once = array.asnumpy()
    inside = np.sqrt((w.astype(np.float64) ** 2).sum(1)) <= 0.5
    assert inside.any() and not inside.all()
    assert once[inside].tobytes() == w[inside].tobytes()
    project_in_place([(array, gc.MaxNorm(0.5), gc.Reduction((1,)))])
    assert array.asnumpy().tobytes() == once.tobytes()


@requires_compiler
def test_one_call_projects_several_weights_with_their_own_constraints(rng):
    arrays = [mx.nd.array(weights(rng, s)) for s in [(40, 9), (17,), (5, 30)]]
    originals = [a.asnumpy() for a in arrays]
    constraints = [gc.MaxNorm(0.3), gc.NonNeg(), gc.UnitNorm()]
    project_in_place([(a, c, gc.Reduction(ref.per_output_unit_axes(a.ndim)))
                      for a, c in zip(arrays, constraints)])
    np.testing.assert_allclose(arrays[0].asnumpy(), ref.max_norm(originals[0], 0.3, (1,)), rtol=2e-6)
    np.testing.assert_array_equal(arrays[1].asnumpy(), ref.non_neg(originals[1]).astype(np.float32))
    np.testing.assert_allclose(arrays[2].asnumpy(), ref.unit_norm(originals[2], (1,)), rtol=2e-6, atol=1e-8)


class Halved(gc.MaxNorm):
    """A subclass computing something else: the kernel must not be used for it (a lowering is
    registered for one exact class)."""

    def project(self, w, reduction, boundary_rtol):
        return w * 0.5


@pytest.mark.parametrize("array,constraint,reduction", [
    (mx.nd.ones((2, 3, 4, 5, 6)), gc.MaxNorm(1.0), gc.Reduction((1, 3))),       # kept, reduced, kept, reduced, kept
    (mx.nd.ones((4, 30)), gc.MaxNorm(1.0), gc.Reduction((1, 3), (2, 2, 3, 5, 2))),  # the same in a view
    (mx.nd.ones((4, 3), dtype="float16"), gc.MaxNorm(1.0), gc.Reduction((1,))),  # not float32
    (mx.nd.ones((4, 3)), Halved(1.0), gc.Reduction((1,))),                       # unknown arithmetic
], ids=["no-layout", "no-layout-view", "float16", "subclass"])
def test_cases_the_kernel_does_not_cover_use_stock_operators(array, constraint, reduction):
    assert unit_groups(array, constraint, reduction) is None
    expected = constraint(array, reduction).asnumpy()
    project_in_place([(array, constraint, reduction)])
    np.testing.assert_array_equal(array.asnumpy(), expected)


def test_unit_layout_reads_each_pattern_of_kept_and_reduced_axes():
    from gluon_constraints.kernels.projection import unit_layout

    # (G, A, U): unit (g, u) is A runs of contiguous elements of the (G, A, U, rest) view.
    assert unit_layout(gc.Reduction((1,)), (64, 32)) == (64, 1, 1)                 # Dense rows
    assert unit_layout(gc.Reduction((1, 2, 3)), (8, 4, 3, 3)) == (8, 1, 1)         # conv filters
    assert unit_layout(gc.Reduction((0,)), (64, 32)) == (1, 64, 32)                # columns
    assert unit_layout(gc.Reduction((0, 2, 3)), (4, 6, 3, 3)) == (1, 4, 6)         # transposed conv
    assert unit_layout(gc.Reduction((1, 3, 4), (2, 2, 6, 3, 3)), (4, 6, 3, 3)) == (2, 2, 6)  # grouped
    assert unit_layout(gc.Reduction((0, 1, 2)), (4, 3, 3, 6)) == (1, 36, 6)        # channels-last
    assert unit_layout(gc.Reduction((0, 2)), (1, 5, 1)) == (5, 1, 1)               # size-1 axes ignored
    assert unit_layout(gc.Reduction((0, 1)), (4, 5)) == (1, 1, 1)                  # one unit
    assert unit_layout(gc.Reduction((1, 3)), (2, 3, 4, 5, 6)) is None              # K R K R K


STRIDED = [  # (shape, reduction): units that are not rows of the weight
    ((40, 70), gc.Reduction((0,))),                                # Dense columns
    ((6, 70, 3, 3), gc.Reduction((0, 2, 3))),                      # transposed conv, 2 blocks of units
    ((8, 70, 2, 2), gc.Reduction((1, 3, 4), (2, 4, 70, 2, 2))),    # grouped transposed conv
    ((6, 3, 3, 70), gc.Reduction((0, 1, 2))),                      # channels-last: runs of 1
    ((64, 130, 3, 3), gc.Reduction((0, 2, 3))),                    # large: units on several threads
]


@requires_compiler
@pytest.mark.parametrize("shape,reduction", STRIDED, ids=["columns", "transposed", "grouped", "channels-last", "large"])
@pytest.mark.parametrize("name,constraint,reference", CASES + [
    ("MaxNorm-L1", gc.MaxNorm(3.0, ord=1), None), ("MaxNorm-inf", gc.MaxNorm(0.5, ord="inf"), None)],
    ids=[c[0] for c in CASES] + ["MaxNorm-L1", "MaxNorm-inf"])
def test_strided_units_take_the_kernel_and_agree_with_the_reference(name, constraint, reference, shape,
                                                                    reduction, rng):
    from gluon_constraints.kernels.projection import kernel_item

    viewed = reduction.view_shape or shape
    w = (rng.normal(size=shape) * rng.choice([0.01, 0.1, 1.0], size=shape[:1] + (1,) * (len(shape) - 1))
         ).astype(np.float32)
    v = w.reshape(viewed).astype(np.float64)
    if reference is not None:
        expected = reference(v, reduction.axes)
    else:  # MaxNorm in L1 or max norm, from its definition
        bound = constraint.max_value
        n = (np.abs(v).sum(axis=reduction.axes, keepdims=True) if name.endswith("L1")
             else np.abs(v).max(axis=reduction.axes, keepdims=True))
        expected = v * bound / np.maximum(n, bound)
    fused, stock = mx.nd.array(w), mx.nd.array(w)
    assert kernel_item(fused, constraint, reduction) is not None
    project_in_place([(fused, constraint, reduction)])
    project_in_place([(stock, constraint, reduction)], use_fused=False)
    np.testing.assert_allclose(fused.asnumpy(), expected.reshape(shape), rtol=2e-6, atol=1e-8)
    np.testing.assert_allclose(fused.asnumpy(), stock.asnumpy(), rtol=2e-6, atol=1e-8)


def train_mlp(trainer_factory, after_step, steps=5):
    """A 2-layer MLP with a lr_mult, trained from fixed weights; returns weights and momenta."""
    from mxnet import autograd
    from mxnet.gluon import nn as gluon_nn

    net = gluon_nn.HybridSequential(prefix="fsgd_")
    with net.name_scope():
        net.add(gluon_nn.Dense(16, activation="relu", in_units=8), gluon_nn.Dense(4, in_units=16))
    net.initialize(mx.init.Normal(0.5))
    rng = np.random.default_rng(9)
    for p in net.collect_params().values():
        p.set_data(mx.nd.array(rng.normal(0, 0.5, p.shape)))
    gc.constrain(net, {"dense0_weight": gc.MaxNorm(0.7), "dense1_weight": gc.UnitNorm(), "dense1_bias": "non_neg"})
    net[1].weight.lr_mult = 0.5
    trainer = trainer_factory(net.collect_params())
    for _ in range(steps):
        x = mx.nd.array(rng.normal(size=(6, 8)))
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(6)
        after_step(net)
    weights = {n: p.data().asnumpy() for n, p in net.collect_params().items()}
    return weights, trainer


# The fused update is MXNet's update term for term; the two projections (kernel and stock) each
# round a float64 rescale once, and may differ by an ulp where their float64 norms, summed in
# other orders, round to neighbouring float32 results. Over the tests' 4 or 5 steps, a few
# roundings per step (tests/tolerances.py).
PROJECTED_STEPS = 5 * 4
FUSED_UPDATES = {  # optimizer: (options, MXNet's operators the fused update replaces)
    "sgd": ({"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-3, "clip_gradient": 2.0},
            ("sgd_mom_update", "multi_sgd_mom_update")),
    "nag": ({"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-2, "clip_gradient": 2.0},
            ("nag_mom_update",)),
    "adam": ({"learning_rate": 0.05, "wd": 1e-2, "clip_gradient": 2.0, "beta1": 0.8, "beta2": 0.99},
             ("adam_update",)),
    "rmsprop": ({"learning_rate": 0.02, "wd": 1e-2, "clip_gradient": 2.0, "gamma1": 0.8,
                 "clip_weights": 0.6}, ("rmsprop_update",)),
}


def state_arrays(state):
    return [state] if isinstance(state, mx.nd.NDArray) else list(state)


@requires_compiler
@pytest.mark.parametrize("optimizer", sorted(FUSED_UPDATES))
def test_fused_update_matches_mxnet_update_followed_by_projection(optimizer, monkeypatch):
    options, mxnet_operators = FUSED_UPDATES[optimizer]

    def stock_projection(net):
        items = [(p.data(), p.constraint, gc.gluon.attachment.reduction_of(p))
                 for p in net.collect_params().values() if getattr(p, "constraint", None) is not None]
        project_in_place(items, use_fused=False)

    expected, plain = train_mlp(lambda ps: mx.gluon.Trainer(ps, optimizer, dict(options)), stock_projection)

    # With MXNet's own update operators out of reach, only the fused update can have run.
    import mxnet.optimizer.optimizer as mx_optimizer

    def unavailable(*args, **kwargs):
        raise AssertionError(f"MXNet's {optimizer} update ran instead of the fused update")

    for name in mxnet_operators:
        monkeypatch.setattr(mx_optimizer, name, unavailable)
    ours, trainer = train_mlp(lambda ps: gc.ConstrainedTrainer(ps, optimizer, dict(options)), lambda net: None)
    for name, value in expected.items():
        assert_float32_close(ours[name], value, PROJECTED_STEPS, err_msg=name)
    for index, state in plain._updaters[0].states.items():
        for got, want in zip(state_arrays(trainer._updaters[0].states[index]), state_arrays(state)):
            assert_float32_close(got.asnumpy(), want.asnumpy(), PROJECTED_STEPS)
    norms = np.sqrt((ours["fsgd_dense0_weight"].astype(np.float64) ** 2).sum(axis=1))
    assert norms.max() <= 0.7 * (1 + 1e-5)
    assert (ours["fsgd_dense1_bias"] >= 0).all()


@requires_compiler
@pytest.mark.parametrize("optimizer", sorted(FUSED_UPDATES))
def test_fused_update_of_transposed_convolutions_matches_mxnet_update_followed_by_projection(
        optimizer, monkeypatch):
    # A transposed convolution's output channel is a column of its (in, out, *kernel) weight:
    # A runs of contiguous elements, within each group for a grouped one.
    from mxnet import autograd

    options, mxnet_operators = FUSED_UPDATES[optimizer]
    rng = np.random.default_rng(12)
    initial = [rng.normal(0, 0.6, (4, 6, 3, 3)), rng.normal(0, 0.6, (6, 2, 2, 2))]
    batches = [rng.normal(size=(2, 4, 5, 5)) for _ in range(4)]

    def trained(make_trainer, after_step):
        net = mx.gluon.nn.HybridSequential()
        net.add(nn.Conv2DTranspose(6, 3, in_channels=4, weight_constraint=gc.MaxNorm(0.8)),
                nn.Conv2DTranspose(4, 2, groups=2, in_channels=6, weight_constraint=gc.MaxNorm(1.2, ord=1)))
        net.initialize()
        for layer, w in zip(net, initial):
            layer.weight.set_data(mx.nd.array(w))
        trainer = make_trainer(net.collect_params())
        for x in batches:
            with autograd.record():
                loss = (net(mx.nd.array(x)) ** 2).mean()
            loss.backward()
            trainer.step(2)
            after_step(net)
        return [layer.weight.data().asnumpy() for layer in net]

    def stock_projection(net):
        project_in_place([(layer.weight.data(), layer.weight.constraint,
                           gc.gluon.attachment.reduction_of(layer.weight)) for layer in net], use_fused=False)

    expected = trained(lambda ps: mx.gluon.Trainer(ps, optimizer, dict(options)), stock_projection)
    import mxnet.optimizer.optimizer as mx_optimizer

    def unavailable(*args, **kwargs):
        raise AssertionError(f"MXNet's {optimizer} update ran instead of the fused update")

    for name in mxnet_operators:
        monkeypatch.setattr(mx_optimizer, name, unavailable)
    ours = trained(lambda ps: gc.ConstrainedTrainer(ps, optimizer, dict(options)), lambda net: None)
    for got, want in zip(ours, expected):
        assert_float32_close(got, want, PROJECTED_STEPS)
    assert np.sqrt((ours[0].astype(np.float64) ** 2).sum(axis=(0, 2, 3))).max() <= 0.8 * (1 + 1e-5)
    # grouped: group k's output channel j reads only the input channels of block k (L1 norms)
    grouped = np.abs(ours[1].reshape((2, 3, 2, 2, 2)).astype(np.float64)).sum(axis=(1, 3, 4))
    assert grouped.max() <= 1.2 * (1 + 1e-5)


@requires_compiler
def test_calls_the_fused_sgd_kernel_cannot_take_fall_back_in_the_optimizers_own_chunks():
    """A Compose of two kernel steps is not fused into SGD: the wrapper then updates through
    MXNet's SGD in chunks of its own size (the Updater hands the wrapper whole steps)."""
    from mxnet import autograd
    from mxnet.gluon import nn as gluon_nn

    def build():
        net = gluon_nn.HybridSequential(prefix="chunk_")
        with net.name_scope():
            for _ in range(5):
                net.add(gluon_nn.Dense(6, in_units=6))
        net.initialize(mx.init.Normal(0.8))
        rng = np.random.default_rng(4)
        for p in net.collect_params().values():
            p.set_data(mx.nd.array(rng.normal(0, 0.8, p.shape)))
        gc.constrain(net, {"weight": [gc.NonNeg(), gc.MaxNorm(0.5)]})
        return net

    def train(net, trainer, after_step):
        rng = np.random.default_rng(5)
        for _ in range(4):
            with autograd.record():
                loss = (net(mx.nd.array(rng.normal(size=(3, 6)))) ** 2).sum()
            loss.backward()
            trainer.step(3)
            after_step(net)
        return {n: p.data().asnumpy() for n, p in net.collect_params().items()}

    options = {"learning_rate": 0.2, "momentum": 0.9}
    ours_net = build()
    trainer = gc.ConstrainedTrainer(ours_net.collect_params(), "sgd", dict(options))
    assert trainer.optimizer.aggregate_num > trainer.optimizer.inner.aggregate_num
    ours = train(ours_net, trainer, lambda net: None)
    plain_net = build()
    expected = train(plain_net, mx.gluon.Trainer(plain_net.collect_params(), "sgd", dict(options)),
                     gc.apply_constraints)
    for name, value in expected.items():
        assert_float32_close(ours[name], value, PROJECTED_STEPS, err_msg=name)
        if name.endswith("weight"):
            assert (value >= 0).all() and np.sqrt((value.astype(np.float64) ** 2).sum(1)).max() <= 0.5 * (1 + 1e-5)


@requires_compiler
@given(data=st.data())
def test_fused_and_stock_agree_on_random_weights_and_constraints(data):
    rows, cols = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    ints = data.draw(hnp.arrays(np.int32, (rows, cols), elements=st.integers(-3000, 3000)))
    w = (ints / 1000.0).astype(np.float32)
    bound = data.draw(st.floats(0.05, 5.0))
    constraint = data.draw(st.sampled_from([
        gc.MaxNorm(bound), gc.MinMaxNorm(bound / 2, bound), gc.MinMaxNorm(bound / 2, bound, rate=0.5),
        gc.UnitNorm(), gc.NonNeg(), gc.Compose([gc.NonNeg(), gc.MaxNorm(bound)])]))
    fused_w, stock_w = mx.nd.array(w), mx.nd.array(w)
    project_in_place([(fused_w, constraint, gc.Reduction((1,)))], use_fused=True)
    project_in_place([(stock_w, constraint, gc.Reduction((1,)))], use_fused=False)
    # Both compute norms and scales in float64 and round each entry once: the float64 norms,
    # summed in other orders, can round a product to a neighbouring float32 (one ulp), or fall
    # on either side of the band's edge (a norm within 2**-18 of a bound counts as on it), which
    # moves a row by at most 2**-18 relative.
    np.testing.assert_allclose(fused_w.asnumpy(), stock_w.asnumpy(), rtol=2.0 ** -18, atol=0)


@pytest.mark.parametrize("shape", [(6, 3, 5), (8, 4, 3, 3), (4, 2, 2, 3, 3)], ids=["1d", "2d", "3d"])
def test_filter_banks_take_the_kernel_as_rows_and_agree_with_numpy(shape):
    rng = np.random.default_rng(len(shape))
    w = rng.normal(0, 1, shape).astype(np.float32)
    axes = tuple(range(1, len(shape)))
    array = mx.nd.array(w)
    (group,) = unit_groups(array, gc.MaxNorm(2.0), gc.Reduction(axes))
    assert (group.groups, group.runs, group.units_per_group) == (shape[0], 1, 1)  # one row per filter
    assert (group.mode, group.lo, group.hi, group.rate, group.norm_order) == (MODES["norm"], 0.0, 2.0, 1.0, 2)
    project_in_place([(array, gc.MaxNorm(2.0), gc.Reduction(axes))])
    np.testing.assert_allclose(array.asnumpy(), ref.max_norm(w, 2.0, axes), rtol=2e-6)
    assert array.shape == shape


class _Blocker(mx.operator.CustomOp):
    """Copies its input once ``released`` is set: everything queued after it on its output waits."""

    released = threading.Event()

    def forward(self, is_train, req, in_data, out_data, aux):
        _Blocker.released.wait(120)
        self.assign(out_data[0], req[0], in_data[0])

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        raise NotImplementedError


@mx.operator.register("gc_test_blocker")
class _BlockerProp(mx.operator.CustomOpProp):
    def create_operator(self, ctx, in_shapes, in_dtypes):
        return _Blocker()


def _finishes(array, seconds):
    """Whether ``array``'s queued writes finish within ``seconds`` (waited for in a thread)."""
    finished = threading.Event()
    threading.Thread(target=lambda: (array.wait_to_read(), finished.set()), daemon=True).start()
    return finished.wait(seconds)


@requires_compiler
def test_a_kernel_call_waits_only_for_its_own_arrays():
    # MXNet gives operators loaded from a library a temporary-space resource shared by every CPU
    # operator, so such a call would wait behind any queued operator holding one, such as a
    # backward pass still running. The kernel's calls are queued with their arrays alone.
    _Blocker.released.clear()
    try:
        held = mx.nd.Custom(mx.nd.ones((64,)), op_type="gc_test_blocker")
        for _ in range(16):  # more than MXNet's temporary-space copies: every copy now waits
            mx.nd.sort(held)
        assert not _finishes(mx.nd.sort(mx.nd.ones((8,))), 0.5)  # what a library operator met
        w = np.random.default_rng(0).normal(0, 1, (8, 5)).astype(np.float32)
        weight = mx.nd.array(w)
        library.kernel().projection([weight], unit_groups(weight, gc.MaxNorm(1.0), gc.Reduction((1,)))).queue()
        assert _finishes(weight, 60)
        np.testing.assert_allclose(weight.asnumpy(), ref.max_norm(w, 1.0, (1,)), rtol=2e-6)
    finally:
        _Blocker.released.set()
        mx.nd.waitall()


def group(mode=MODES["norm"], order=2, layout=(8, 1, 1)):
    """A gc_unit_group of MaxNorm(1.0)'s band by default."""
    return UnitGroup(*layout, mode, order, 0.0, 1.0, 1.0, 2.0 ** -18)


@requires_compiler
@pytest.mark.parametrize("call,message", [
    (lambda k, w, g, m: k.projection([w], [group(mode=7)]).queue(), "gc_project_rows: gc_unit_group 0: unknown mode 7"),
    (lambda k, w, g, m: k.projection([w], [group(order=3)]).queue(),
     "gc_project_rows: gc_unit_group 0: norm_order must be 1, 2 or 0 (max): got 3"),
    (lambda k, w, g, m: k.projection([w], [group(layout=(8, 0, 1))]).queue(),
     "gc_project_rows: gc_unit_group 0: groups, runs and units_per_group must be >= 1"),
    (lambda k, w, g, m: k.projection([w, g], [group()]).queue(), "gc_project_rows: 2 arrays for 1 unit groups"),
    (lambda k, w, g, m: k.update(UpdateRule(10, 0, 1, -1, 0.9, 0, 0), [group(MODES["none"])], [Rates(0.1, 0)],
                                 [w, g, m]),
     "gc_update_project_rows: unknown rule 10"),
    (lambda k, w, g, m: k.update(UpdateRule(RULES["sgd_lazy"], 0, 1, -1, 0, 0, 0), [group(MODES["none"])],
                                 [Rates(0.1, 0)], [w, g]),
     "gc_update_project_rows: unknown rule 4"),
    (lambda k, w, g, m: k.update(UpdateRule(RULES["adam"], 0, 1, -1, 0.9, 0.999, 1e-8), [group(MODES["none"])],
                                 [Rates(0.1, 0)], [w, g, m]), "gc_update_project_rows: 3 arrays for 1 weights"),
    (lambda k, w, g, m: k.update(UpdateRule(RULES["sgd_mom"], 2, 1, -1, 0.9, 0, 0), [group(MODES["none"])],
                                 [Rates(0.1, 0)], [w, g, m]),
     "gc_update_project_rows: background must be 0 or 1, not 2"),
], ids=["mode", "norm-order", "layout", "array-count", "rule", "lazy-rule", "adam-states", "background"])
def test_a_malformed_kernel_call_raises_at_once_and_queues_nothing(call, message):
    w = np.random.default_rng(0).normal(0, 1, (8, 5)).astype(np.float32)
    weight, grad, mom = mx.nd.array(w), mx.nd.ones((8, 5)), mx.nd.ones((8, 5))
    with pytest.raises(mx.base.MXNetError) as error:
        call(library.kernel(), weight, grad, mom)
    assert str(error.value) == message
    np.testing.assert_array_equal(weight.asnumpy(), w)
    np.testing.assert_array_equal(mom.asnumpy(), np.ones((8, 5)))


@requires_compiler
@pytest.mark.parametrize("layer,shape", [(mx.gluon.nn.Conv1D, (16, 8, 3)), (mx.gluon.nn.Conv2D, (16, 8, 3, 3)),
                                         (mx.gluon.nn.Conv3D, (16, 8, 3, 3, 3))], ids=["1d", "2d", "3d"])
def test_a_weight_in_mkldnn_blocked_layout_is_read_plain_by_the_kernel(layer, shape):
    # After an inference-mode forward the filter bank is in MKL-DNN's blocked layout: the kernel
    # given it directly fails (at the next wait, naming the layout), so the projection must first
    # have it converted, which a multiplication by 1 of the first filter alone does.
    from gluon_constraints.kernels.library import kernel

    w = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
    x = mx.nd.ones((2, shape[1]) + (6,) * (len(shape) - 2))
    axes = tuple(range(1, len(shape)))

    def evaluated_layer():
        conv = layer(shape[0], shape[2:], in_channels=shape[1])
        conv.initialize(mx.init.Constant(mx.nd.array(w)))
        conv(x).wait_to_read()
        return conv

    rows = evaluated_layer().weight.data().reshape((shape[0], -1))
    with pytest.raises(mx.base.MXNetError, match="gc_project_rows: cannot read an array in place "
                                                 r"\(MKL-DNN may hold it in its blocked layout\)"):
        kernel().projection([rows], [unit_group((shape[0], 1, 1), "norm", 0.0, 2.0)]).queue()
        rows.wait_to_read()
    weight = evaluated_layer().weight.data()
    project_in_place([(weight, gc.MaxNorm(2.0), gc.Reduction(axes))])
    np.testing.assert_allclose(weight.asnumpy(), ref.max_norm(w, 2.0, axes), rtol=2e-6)


@requires_compiler
@pytest.mark.parametrize("optimizer", sorted(FUSED_UPDATES))
@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), ([mx.cpu(0), mx.cpu(1)], True),
                                      ([mx.cpu(0), mx.cpu(1)], False)], ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_conv_weights_in_mkldnn_layout_after_an_inference_forward_are_updated_correctly(optimizer, ctx, uokv):
    # An inference-mode forward leaves a convolution weight in MKL-DNN's blocked layout (library
    # operators fail on it; MXNet's own operators keep it): the fused update converts the
    # device copies it updates, and gives what MXNet's update followed by the projection gives.
    # With update_on_kvstore the kvstore's own copy, which no forward pass touches, is updated.
    from mxnet import autograd

    options = FUSED_UPDATES[optimizer][0]

    def trained(evaluate_first, constrained):
        layer = nn.Conv2D(8, 3, in_channels=4, weight_constraint=gc.MaxNorm(0.5))
        layer.initialize(mx.init.Constant(mx.nd.array(
            np.random.default_rng(3).normal(0, 0.3, (8, 4, 3, 3)))), ctx=ctx)
        xs = mx.gluon.utils.split_and_load(
            mx.nd.array(np.random.default_rng(4).normal(0, 1, (2 * len(ctx), 4, 6, 6))), ctx)
        # The reference updates the device copies (a plain trainer updating on the kvstore
        # would keep updating its unprojected copy there), then projects them.
        make = gc.ConstrainedTrainer if constrained else mx.gluon.Trainer
        trainer = make(layer.collect_params(), optimizer, dict(options),
                       update_on_kvstore=uokv if constrained else len(ctx) == 1 and None)
        for _ in range(3):
            with autograd.record():
                losses = [(layer(x) ** 2).sum() for x in xs]
            for loss in losses:
                loss.backward()
            if evaluate_first:  # an evaluation between backward and step, as a metric does
                for x in xs:
                    layer(x).wait_to_read()  # inference mode: the weight is reordered in place
            trainer.step(2)
            if not constrained:
                for copy in layer.weight.list_data():
                    project_in_place([(copy, layer.weight.constraint, gc.Reduction((1, 2, 3)))],
                                     use_fused=False)
        copies = [copy.asnumpy() for copy in layer.weight.list_data()]
        # MXNet's own NAG on a blocked weight (the plain reference after an evaluation) left its
        # two device copies apart under two CPU burners: only ours are required to agree.
        assert not constrained or all(c.tobytes() == copies[0].tobytes() for c in copies)
        return copies[0]

    evaluated, plain = trained(True, True), trained(False, True)
    np.testing.assert_array_equal(evaluated, plain)
    # MXNet's own NAG is not the same after an evaluation: its update then reads a plain copy
    # of the weight, so the momentum's weight-decay term sees the old weight instead of the new.
    assert_float32_close(evaluated, trained(False, False), PROJECTED_STEPS)
    unevaluated = trained(False, False)
    apart = np.abs(trained(True, False) - unevaluated).max() > float32_atol(unevaluated, PROJECTED_STEPS)
    assert (optimizer == "nag") == apart
    np.testing.assert_array_less(np.sqrt((plain.astype(np.float64) ** 2).sum(axis=(1, 2, 3))), 0.5 * (1 + 1e-5))


def variant_library(variant, directory):
    """The kernel compiled for ``variant``: the wheel's own (tests/test_wheel.py), else built
    into ``directory`` (skipped without a compiler)."""
    if PREBUILT is not None:
        return PREBUILT.with_name(f"lib-{variant.march}.so")
    if shutil.which("g++") is None:
        pytest.skip("needs the wheel's prebuilt kernel or a C++ compiler")
    built = directory / f"lib-{variant.march}.so"
    subprocess.run(library.build_command(shutil.which("g++"), built, variant.march), check=True,
                   capture_output=True, timeout=300)
    return built


@pytest.mark.parametrize("variant", sources.VARIANTS, ids=[v.march for v in sources.VARIANTS])
def test_the_kernel_computes_the_same_on_every_instruction_set(variant, tmp_path, monkeypatch):
    # docs/training.md, "Guarantees": a wheel carries the kernel for three x86-64 levels (SSE2,
    # AVX2, AVX-512) and a source install builds it with -march=native. Without FMA contraction
    # (-ffp-contract=off) its updates are elementwise and give the same bits on any vector
    # width; only the float64 norms, summed in other orders, may round a projected entry to a
    # neighbouring float32: one ulp. Each level this processor can run must agree with the
    # kernel loaded in this process.
    if not sources.processor_flags() >= variant.features:
        pytest.skip(f"this processor cannot run {variant.march}")
    path = variant_library(variant, tmp_path)
    rng = np.random.default_rng(21)
    weights = rng.normal(0, 1, (64, 96)).astype(np.float32)
    gradients = rng.normal(0, 1, (64, 96)).astype(np.float32)

    def results():
        out = {}
        for order in (1, 2, "inf"):
            for constraint in (gc.MaxNorm(3.0, ord=order), gc.UnitNorm(ord=order), gc.MinMaxNorm(7.0, 9.0, ord=order)):
                array = mx.nd.array(weights)
                project_in_place([(array, constraint, gc.Reduction((1,)))])
                out[repr(constraint)] = array.asnumpy()
        for optimizer, options in FUSED_UPDATES.items():
            param = mx.gluon.Parameter("w", shape=weights.shape)
            param.initialize()
            param.set_data(mx.nd.array(weights))
            gc.attach(param, gc.MaxNorm(3.0))
            trainer = gc.ConstrainedTrainer([param], optimizer, dict(options[0]))
            for _ in range(2):
                param.grad()[:] = mx.nd.array(gradients)
                param.data()._fresh_grad = True  # as a backward pass leaves it
                trainer.step(1)
            out[optimizer] = param.data().asnumpy()
        return out

    native = results()
    monkeypatch.setattr(library, "_loaded", library.loaded(path))
    variant = results()
    for name, value in native.items():
        assert (np.abs(variant[name] - value) <= np.spacing(np.abs(value))).all(), name


@requires_compiler
def test_a_background_call_is_ordered_with_the_operators_queued_around_it():
    # background = 1 runs the call on MXNet's prioritized CPU workers, beside the context's own
    # worker: the engine must still run it after the write of its input queued before it, before
    # the write queued after it, and before the read of its output queued after it.
    rng = np.random.default_rng(3)
    w, avg = rng.normal(0, 1, (256, 1024)).astype(np.float32), rng.normal(0, 1, (256, 1024)).astype(np.float32)
    weight, average = mx.nd.array(w), mx.nd.array(avg)
    rule = UpdateRule(RULES["sgd"], 1, -1.0, -1.0, 0.0, 0.0, 0.0)  # avg <- 0.75 avg + 0.25 w
    reads, expected = [], []
    for _ in range(20):
        weight += 1.0
        library.kernel().update(rule, [group(MODES["none"], layout=(256, 1, 1))], [Rates(0.25, 1.0)],
                                [average, weight])
        weight *= 0.5
        reads.append(average * 1.0)
        w = w + np.float32(1.0)
        avg = np.float32(0.75) * avg - np.float32(-0.25) * w  # sgd_update's float32 terms, lr 0.25, wd 1
        w = w * np.float32(0.5)
        expected.append(avg)
    for read, value in zip(reads, expected):
        np.testing.assert_array_equal(read.asnumpy(), value)
    np.testing.assert_array_equal(weight.asnumpy(), w)


@requires_compiler
@pytest.mark.parametrize("clip", [-1.0, 0.4], ids=["no-clip", "clip"])
@pytest.mark.parametrize("wd,rescale", [(0.0, 1.0), (0.01, 0.125), (1.0, -1.0)], ids=["plain", "wd", "average"])
def test_the_sgd_rule_is_mxnets_sgd_update_bit_for_bit_then_projected(clip, wd, rescale):
    # The kernel's "sgd" rule computes sgd_update's float32 expression term for term (a weight
    # average's step is this rule with wd = 1 and rescale_grad = -1), then the projection.
    rng = np.random.default_rng(9)
    w, g = rng.normal(0, 1, (16, 7)).astype(np.float32), rng.normal(0, 1, (16, 7)).astype(np.float32)
    expected = mx.nd.sgd_update(mx.nd.array(w), mx.nd.array(g), lr=0.3, wd=wd, rescale_grad=rescale,
                                clip_gradient=clip)
    rule = UpdateRule(RULES["sgd"], 0, rescale, clip, 0.0, 0.0, 0.0)
    unprojected, projected = mx.nd.array(w), mx.nd.array(w)
    library.kernel().update(rule, [group(MODES["none"], layout=(16, 1, 1))], [Rates(0.3, wd)],
                            [unprojected, mx.nd.array(g)])
    np.testing.assert_array_equal(unprojected.asnumpy(), expected.asnumpy())
    library.kernel().update(rule, [group(layout=(16, 1, 1))], [Rates(0.3, wd)], [projected, mx.nd.array(g)])
    np.testing.assert_allclose(projected.asnumpy(), ref.max_norm(expected.asnumpy(), 1.0, (1,)), rtol=1e-6, atol=1e-7)
