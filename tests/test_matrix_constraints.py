"""SpectralNorm and Orthogonal (docs/constraints.md): numpy references, training on every
path, and power-iteration vectors that resume bitwise from save_states."""

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
from gluon_constraints import nn
from steps import squared_output_step

TWO = [mx.cpu(0), mx.cpu(1)]


def numpy_spectral_norm(w, max_value, iterations):
    """The documented algorithm in numpy: power iteration from the seeded vector, then rescale."""
    m = w.reshape(w.shape[0], -1).astype(np.float64)
    u = np.random.default_rng(m.shape[0]).standard_normal(m.shape[0])
    u /= np.linalg.norm(u)
    for _ in range(iterations):
        v = m.T @ u
        v /= np.linalg.norm(v)
        u = m @ v
        u /= np.linalg.norm(u)
    sigma = u @ m @ v
    return w * (max_value / sigma if sigma > max_value * (1 + 2.0**-18) else 1.0), sigma


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (8, 3, 3, 3)])
def test_spectral_norm_matches_numpy_power_iteration(shape):
    w = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    got = gc.SpectralNorm(1.5)(mx.nd.array(w)).asnumpy()
    expected, sigma = numpy_spectral_norm(w, 1.5, 20)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    true_sigma = np.linalg.svd(w.reshape(shape[0], -1).astype(np.float64), compute_uv=False)[0]
    assert sigma <= true_sigma * (1 + 1e-12) and sigma > 0.95 * true_sigma  # a lower estimate
    small = w / (2 * true_sigma)  # inside the set: unchanged
    assert gc.SpectralNorm(1.5)(mx.nd.array(small)).asnumpy().tobytes() == small.tobytes()


@pytest.mark.parametrize("arguments,message", [
    ({"max_value": 0}, "SpectralNorm max_value must be > 0: got 0"),
    ({"power_iterations": 0}, "SpectralNorm power_iterations must be an int >= 1: got 0"),
    ({"initial_iterations": 2.5}, "SpectralNorm initial_iterations must be an int >= 1: got 2.5"),
])
def test_bad_spectral_norm_arguments_are_refused(arguments, message):
    with pytest.raises(gc.ConstraintArgumentError, match=message):
        gc.SpectralNorm(**arguments)


def test_spectral_norm_cannot_be_composed():
    with pytest.raises(gc.ConstraintArgumentError, match="Compose cannot hold SpectralNorm"):
        gc.Compose([gc.NonNeg(), gc.SpectralNorm()])


@pytest.mark.parametrize("shape", [(3, 7), (7, 3), (4, 2, 3, 3)])
def test_orthogonal_is_the_polar_factor(shape):
    w = np.random.default_rng(2).normal(0, 1, shape)
    got = gc.Orthogonal()(mx.nd.array(w, dtype="float64")).asnumpy()
    u, _, vt = np.linalg.svd(w.reshape(shape[0], -1), full_matrices=False)
    np.testing.assert_allclose(got.reshape(shape[0], -1), u @ vt, atol=1e-12)
    assert gc.Orthogonal()(mx.nd.array(got, dtype="float64")).asnumpy().tobytes() == got.tobytes()


def test_orthogonal_with_beta_is_one_parseval_step():
    w = np.random.default_rng(3).normal(0, 0.5, (4, 6))
    got = gc.Orthogonal(beta=0.1)(mx.nd.array(w, dtype="float64")).asnumpy()
    np.testing.assert_allclose(got, 1.1 * w - 0.1 * w @ w.T @ w, rtol=1e-12)
    with pytest.raises(gc.ConstraintArgumentError, match=r"Orthogonal beta must be None or lie in \(0, 1\]: got 2"):
        gc.Orthogonal(beta=2)


def conv_net(ctx, weight_constraint, dense_constraint):
    net = nn.HybridSequential()
    net.add(nn.Conv2D(6, 3, in_channels=2, weight_constraint=weight_constraint),
            nn.Flatten(), nn.Dense(5, in_units=6 * 4 * 4, weight_constraint=dense_constraint))
    net.initialize(mx.init.Xavier(magnitude=6), ctx=ctx)
    return net


def train(net, trainer, ctx, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        squared_output_step(net, trainer, mx.nd.array(rng.normal(0, 1, (4, 2, 6, 6))), ctx)


def top_singular_value(array):
    return np.linalg.svd(array.reshape(array.shape[0], -1).astype(np.float64), compute_uv=False)[0]


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_training_keeps_spectral_norms_and_orthogonality(ctx, uokv):
    # Seeded: the power iteration's lag after a step depends on the weights (docs/constraints.md
    # quotes this net's), and unseeded they would depend on the tests run before in the process.
    mx.random.seed(0)
    net = conv_net(ctx, gc.SpectralNorm(0.8, power_iterations=3), gc.Orthogonal())
    trainer = gc.ConstrainedTrainer(net.collect_params(), "sgd", {"learning_rate": 0.3, "momentum": 0.9},
                                    update_on_kvstore=uokv)
    train(net, trainer, ctx, 6, seed=0)
    for context in ctx:
        conv = net[0].weight.data(context).asnumpy()
        assert top_singular_value(conv) <= 0.8 * (1 + 1e-3)
        dense = net[2].weight.data(context).asnumpy().astype(np.float64)
        np.testing.assert_allclose(dense @ dense.T, np.eye(5), atol=1e-5)
    gc.verify_constraints(trainer)


@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_power_iteration_vectors_resume_bitwise_from_save_states(ctx, uokv, tmp_path):
    def fresh():
        mx.random.seed(7)
        net = conv_net(ctx, gc.SpectralNorm(0.5), None)
        return net, gc.ConstrainedTrainer(net.collect_params(), "adam", {"learning_rate": 0.05},
                                          update_on_kvstore=uokv)

    straight, trainer = fresh()
    train(straight, trainer, ctx, 3, seed=1)
    train(straight, trainer, ctx, 3, seed=2)

    first, trainer = fresh()
    train(first, trainer, ctx, 3, seed=1)
    saved = {key: value.asnumpy() for key, value in trainer.optimizer.iterates.items()}
    assert len(saved) == (len(ctx) if uokv is False else 1)  # one vector per updated copy
    first.save_parameters(str(tmp_path / "net.params"))
    trainer.save_states(str(tmp_path / "trainer.states"))

    resumed, trainer = fresh()
    resumed.load_parameters(str(tmp_path / "net.params"), ctx=ctx)
    trainer.load_states(str(tmp_path / "trainer.states"))
    restored = {key: value.asnumpy() for key, value in trainer.optimizer.iterates.items()}
    assert restored.keys() == saved.keys()
    assert all(restored[key].tobytes() == saved[key].tobytes() for key in saved)
    train(resumed, trainer, ctx, 3, seed=2)
    for a, b in zip(straight.collect_params().values(), resumed.collect_params().values()):
        assert a.data().asnumpy().tobytes() == b.data().asnumpy().tobytes(), a.name


@pytest.mark.parametrize("constraint,check", [
    (gc.Clip(-0.1, 0.1), lambda m: np.abs(m).max() <= np.float32(0.1)),
    (gc.Simplex(1.0), lambda m: m.min() >= 0 and np.allclose(m.sum(axis=1), 1.0, rtol=1e-5)),
    (gc.SpectralNorm(0.5, power_iterations=3), lambda m: top_singular_value(m) <= 0.5 * 1.01),
    (gc.Orthogonal(), lambda m: np.allclose(m.astype(np.float64) @ m.T, np.eye(4), atol=1e-5)),
], ids=["clip", "simplex", "spectral-norm", "orthogonal"])
@pytest.mark.parametrize("ctx,uokv", [([mx.cpu(0)], None), (TWO, True), (TWO, False)],
                         ids=["1ctx", "2ctx-uokv", "2ctx-no-uokv"])
def test_float16_weights_project_their_float32_master_copy(constraint, check, ctx, uokv):
    from test_trainer import make_fp16_weight, master_copies, write_grad

    rng = np.random.default_rng(6)
    params, weight = make_fp16_weight(ctx, (4, 6), f"mp_{type(constraint).__name__.lower()}_")
    weight.set_data(mx.nd.array(rng.normal(0, 0.3, (4, 6)), dtype="float16"))
    gc.attach(weight, constraint)
    trainer = gc.ConstrainedTrainer(params, "adam", {"learning_rate": 0.1, "multi_precision": True},
                                    update_on_kvstore=uokv)
    for _ in range(4):
        write_grad(weight, rng.normal(0, 1, (4, 6)).astype(np.float16))
        trainer.step(1)
    for master in master_copies(trainer, 0):
        assert master.dtype == np.float32 and check(master)
    copies = [a.asnumpy() for a in weight.list_data()]
    assert all(c.tobytes() == copies[0].tobytes() for c in copies)
    np.testing.assert_array_equal(copies[0], master_copies(trainer, 0)[0].astype(np.float16))
