"""The constraint catalogue against independent float64 references (docs/constraints.md)."""

import itertools
import math

import mxnet as mx
import numpy as np
import pytest

import gluon_constraints as gc
import reference as ref

SHAPES = [(7,), (5, 6), (4, 3, 5), (3, 2, 3, 4), (2, 3, 2, 3, 2)]


def random_weight(rng, shape, dtype=np.float32):
    """Weights whose slices fall on both sides of the bounds used below."""
    w = rng.normal(size=shape) * rng.choice([0.05, 0.5, 3.0], size=shape[:1] + (1,) * (len(shape) - 1))
    return w.astype(dtype)


def explicit_axes(ndim):
    """Every single axis, its negative spelling, and one multi-axis tuple."""
    cases = [a for a in range(ndim)] + [-1]
    if ndim >= 2:
        cases.append((0, ndim - 1))
    return cases


CATALOGUE = [
    ("MaxNorm", lambda axis: gc.MaxNorm(1.5, axis=axis), lambda w, a: ref.max_norm(w, 1.5, a)),
    ("MinMaxNorm", lambda axis: gc.MinMaxNorm(0.8, 1.5, 1.0, axis=axis),
     lambda w, a: ref.min_max_norm(w, 0.8, 1.5, 1.0, a)),
    ("MinMaxNorm-rate", lambda axis: gc.MinMaxNorm(0.8, 1.5, 0.3, axis=axis),
     lambda w, a: ref.min_max_norm(w, 0.8, 1.5, 0.3, a)),
    ("UnitNorm", lambda axis: gc.UnitNorm(axis=axis), lambda w, a: ref.unit_norm(w, a)),
]


def _positive(axis, ndim):
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(sorted(a % ndim for a in axes))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("name,make,reference", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_norm_constraint_matches_reference_default_axes(shape, name, make, reference, rng):
    w = random_weight(rng, shape)
    out = make(None)(mx.nd.array(w))
    expected = reference(w, ref.per_output_unit_axes(len(shape)))
    np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: f"{len(s)}d")
@pytest.mark.parametrize("name,make,reference", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_norm_constraint_matches_reference_explicit_axes(shape, name, make, reference, rng):
    w = random_weight(rng, shape)
    for axis in explicit_axes(len(shape)):
        out = make(axis)(mx.nd.array(w))
        expected = reference(w, _positive(axis, len(shape)))
        np.testing.assert_allclose(out.asnumpy(), expected, rtol=1e-5, atol=1e-6,
                                   err_msg=f"axis={axis!r}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_non_neg_matches_reference(shape, rng):
    w = random_weight(rng, shape)
    out = gc.NonNeg()(mx.nd.array(w)).asnumpy()
    np.testing.assert_array_equal(out, ref.non_neg(w).astype(np.float32))
    assert (out >= 0).all()


def test_max_norm_keras_test_vectors():
    # Keras 3 constraints_test: MaxNorm(2.0) on the output-unit vectors [0,0,0], [1,0,0],
    # [3,0,0], [3,3,3]; in Gluon's layout each output unit is a row.
    w = mx.nd.array([[0, 0, 0], [1, 0, 0], [3, 0, 0], [3, 3, 3]])
    out = gc.MaxNorm(2.0)(w).asnumpy()
    expected = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [2 / math.sqrt(3)] * 3])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=0)


KERAS_CASES = [
    ("MaxNorm", gc.MaxNorm(2.0), lambda k: ref.keras_max_norm(k, 2.0, (0,))),
    ("MinMaxNorm", gc.MinMaxNorm(0.5, 1.0, 1.0), lambda k: ref.keras_min_max_norm(k, 0.5, 1.0, 1.0, (0,))),
    ("MinMaxNorm-rate", gc.MinMaxNorm(0.5, 1.0, 0.5), lambda k: ref.keras_min_max_norm(k, 0.5, 1.0, 0.5, (0,))),
    ("UnitNorm", gc.UnitNorm(), lambda k: ref.keras_unit_norm(k, (0,))),
    ("NonNeg", gc.NonNeg(), ref.keras_non_neg),
]


@pytest.mark.parametrize("name,constraint,keras", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_agrees_with_keras_epsilon_formula_on_transposed_dense_kernel(name, constraint, keras, rng):
    # A Keras Dense kernel is (in, out) and its constraints reduce axis 0; the Gluon weight is
    # its transpose (out, in), reduced per output unit (axis 1).
    keras_kernel = random_weight(rng, (64, 32)).T.copy()
    keras_result = keras(keras_kernel).T
    ours = constraint(mx.nd.array(keras_kernel.T.copy())).asnumpy()
    np.testing.assert_allclose(ours, keras_result, rtol=1e-5, atol=1e-7)


def test_prior_art_reference_values():
    # prior-art.md (b): W = [[3, 0.1], [4, 0.2]] reduced over axis 0 (column norms 5, 0.2236).
    w = mx.nd.array([[3, 0.1], [4, 0.2]])
    np.testing.assert_allclose(gc.MaxNorm(2, axis=0)(w).asnumpy(), [[1.2, 0.1], [1.6, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(gc.UnitNorm(axis=0)(w).asnumpy(),
                               [[0.6, 0.4472136], [0.8, 0.8944272]], rtol=1e-6)
    np.testing.assert_allclose(gc.MinMaxNorm(0.5, 1.0, rate=0.5, axis=0)(w).asnumpy(),
                               [[1.8, 0.1618034], [2.4, 0.3236068]], rtol=1e-6)


# Inside / on / outside template: for each constraint one slice strictly inside the set, one
# exactly on its boundary, and one outside, with the exact expected result of each.
TEMPLATE = [
    ("MaxNorm", gc.MaxNorm(5.0),
     {"inside": [1.0, -2.0, 0.5], "on": [3.0, 4.0, 0.0], "outside": [6.0, 8.0, 0.0]},
     {"outside": [3.0, 4.0, 0.0]}),
    ("MinMaxNorm-low", gc.MinMaxNorm(5.0, 10.0),
     {"inside": [6.0, 0.0, 0.0], "on": [0.0, 3.0, 4.0], "outside": [0.6, 0.8, 0.0]},
     {"outside": [3.0, 4.0, 0.0]}),
    ("MinMaxNorm-high", gc.MinMaxNorm(1.0, 5.0),
     {"inside": [2.0, 0.0, 0.0], "on": [0.0, 4.0, 3.0], "outside": [0.0, 12.0, 16.0]},
     {"outside": [0.0, 3.0, 4.0]}),
    ("UnitNorm", gc.UnitNorm(),
     {"inside": [0.6, 0.8, 0.0], "on": [0.0, 0.0, 1.0], "outside": [3.0, 0.0, 4.0]},
     {"outside": [0.6, 0.0, 0.8]}),
    ("NonNeg", gc.NonNeg(),
     {"inside": [1.0, 2.0, 3.0], "on": [0.0, 0.0, 5.0], "outside": [-1.0, 2.0, -3.0]},
     {"outside": [0.0, 2.0, 0.0]}),
]


@pytest.mark.parametrize("name,constraint,slices,projected", TEMPLATE, ids=[t[0] for t in TEMPLATE])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_inside_on_outside(name, constraint, slices, projected, dtype):
    w = np.array([slices["inside"], slices["on"], slices["outside"]], dtype=dtype)
    out = constraint(mx.nd.array(w, dtype=dtype)).asnumpy()
    assert out.dtype == dtype
    # Inside and on the boundary: bit-for-bit unchanged.
    assert out[:2].tobytes() == w[:2].tobytes()
    tol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(out[2], projected["outside"], rtol=tol, atol=tol)


@pytest.mark.parametrize("constraint", [gc.MaxNorm(1.0), gc.MinMaxNorm(0.5, 1.0), gc.UnitNorm(),
                                        gc.MinMaxNorm(0.5, 1.0, rate=0.25)], ids=repr)
def test_zero_slices_stay_zero(constraint):
    w = mx.nd.array([[0, 0, 0], [3, 4, 0]])
    out = constraint(w).asnumpy()
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[0], [0, 0, 0])


def test_float16_is_computed_in_float32(rng):
    w16 = (rng.normal(size=(6, 40)) * 3).astype(np.float16)
    out = gc.MaxNorm(2.0)(mx.nd.array(w16, dtype=np.float16))
    assert out.dtype == np.float16
    expected = ref.max_norm(w16.astype(np.float64), 2.0, (1,)).astype(np.float16)
    # float32 arithmetic rounds once to float16 at the end: at most one float16 ulp apart.
    assert np.max(np.abs(out.asnumpy().astype(np.float64) - expected)) <= np.spacing(np.float16(2.0))


def test_keeps_context_and_never_modifies_input(rng):
    data = random_weight(rng, (4, 5))
    w = mx.nd.array(data, ctx=mx.cpu(1))
    out = gc.MaxNorm(0.1)(w)
    assert out.context == mx.cpu(1)
    assert out.shape == w.shape and out.dtype == w.dtype
    np.testing.assert_array_equal(w.asnumpy(), data)
    out[:] = 7.0
    np.testing.assert_array_equal(w.asnumpy(), data)


@pytest.mark.parametrize("constraint", [gc.MaxNorm(1.0), gc.NonNeg(), gc.UnitNorm(), gc.Constraint(),
                                        gc.Compose([gc.NonNeg(), gc.MaxNorm(1.0)])], ids=repr)
def test_result_is_a_new_array_even_when_nothing_changes(constraint):
    w = mx.nd.array([[0.1, 0.2], [0.3, 0.1]])
    out = constraint(w)
    out[:] = -5.0
    np.testing.assert_allclose(w.asnumpy(), [[0.1, 0.2], [0.3, 0.1]], rtol=1e-7)


def test_numpy_mode_returns_numpy_arrays(numpy_mode, rng):
    data = random_weight(rng, (3, 4, 2))
    w = mx.np.array(data)
    out = gc.MaxNorm(1.0)(w)
    assert isinstance(out, mx.np.ndarray)
    assert out.shape == w.shape and out.dtype == w.dtype
    np.testing.assert_allclose(out.asnumpy(), ref.max_norm(data, 1.0, (1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(w.asnumpy(), data)


def test_compose_applies_left_to_right():
    w = mx.nd.array([[-3.0, 4.0, 0.0], [6.0, -8.0, 0.0]])
    out = gc.Compose([gc.NonNeg(), gc.MaxNorm(2.0)])(w).asnumpy()
    np.testing.assert_allclose(out, [[0, 2, 0], [2, 0, 0]], rtol=1e-6)
    other_order = gc.Compose([gc.MaxNorm(2.0), gc.NonNeg()])(w).asnumpy()
    np.testing.assert_allclose(other_order, [[0, 1.6, 0], [1.2, 0, 0]], rtol=1e-6)


def test_compose_members_keep_their_own_axes():
    w = np.array([[3.0, 0.0], [4.0, 10.0]])
    out = gc.Compose([gc.MaxNorm(1.0, axis=0), gc.MaxNorm(0.5, axis=1)])(mx.nd.array(w)).asnumpy()
    expected = ref.max_norm(ref.max_norm(w, 1.0, (0,)), 0.5, (1,))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_reduction_view_groups_slices():
    # A Reduction with a reshaped view: (4, 3) viewed as (2, 2, 3), norms over axes (1, 2),
    # so rows {0, 1} form one slice and rows {2, 3} another.
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    red = gc.Reduction(axes=(1, 2), view_shape=(2, 2, 3))
    out = gc.MaxNorm(1.0)(mx.nd.array(w), red).asnumpy()
    expected = ref.max_norm(w.reshape(2, 2, 3), 1.0, (1, 2)).reshape(4, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_explicit_axis_wins_over_supplied_reduction():
    w = np.array([[3.0, 4.0], [0.0, 0.1]])
    out = gc.MaxNorm(1.0, axis=0)(mx.nd.array(w), gc.Reduction((1,))).asnumpy()
    np.testing.assert_allclose(out, ref.max_norm(w, 1.0, (0,)), rtol=1e-6)


@pytest.mark.parametrize("axis,shape,message", [
    (2, (3, 4), "MaxNorm axis 2 is out of range for shape (3, 4): axes must lie in [-2, 1]."),
    (-3, (3, 4), "MaxNorm axis -3 is out of range for shape (3, 4): axes must lie in [-2, 1]."),
    ((0, 5), (2, 3, 4), "MaxNorm axis (0, 5) is out of range for shape (2, 3, 4): axes must lie in [-3, 2]."),
    ((1, -1), (3, 4), "MaxNorm axis (1, -1) names the same dimension twice for shape (3, 4)."),
])
def test_axis_that_does_not_fit_raises(axis, shape, message):
    w = mx.nd.ones(shape)
    with pytest.raises(gc.ConstraintShapeError) as info:
        gc.MaxNorm(1.0, axis=axis)(w)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    np.testing.assert_array_equal(w.asnumpy(), np.ones(shape))


def test_non_array_input_raises_type_error():
    with pytest.raises(TypeError, match="MaxNorm expects an mx.nd.NDArray or mx.np.ndarray: got list"):
        gc.MaxNorm()([[1.0, 2.0]])


BAD_ARGUMENTS = [
    (lambda: gc.MaxNorm(0), ValueError, "MaxNorm max_value must be > 0: got 0."),
    (lambda: gc.MaxNorm(-1.5), ValueError, "MaxNorm max_value must be > 0: got -1.5."),
    (lambda: gc.MaxNorm(float("inf")), ValueError, "MaxNorm max_value must be finite: got inf."),
    (lambda: gc.MaxNorm(float("nan")), ValueError, "MaxNorm max_value must be finite: got nan."),
    (lambda: gc.MaxNorm("3"), TypeError,
     "MaxNorm max_value must be a real number: got '3' of type str. Pass a float such as MaxNorm(max_value=3.0)."),
    (lambda: gc.MaxNorm(True), TypeError,
     "MaxNorm max_value must be a real number: got True of type bool. Pass a float such as MaxNorm(max_value=3.0)."),
    (lambda: gc.MaxNorm(2, axis=1.5), TypeError,
     "MaxNorm axis must be None, an int or a tuple of ints (axes of the weight in Gluon's layout, e.g. "
     "axis=(1, 2)): got 1.5."),
    (lambda: gc.MinMaxNorm(min_value=-0.1), ValueError, "MinMaxNorm min_value must be >= 0: got -0.1."),
    (lambda: gc.MinMaxNorm(2.0, 1.0), ValueError,
     "MinMaxNorm min_value must be <= max_value: got min_value=2.0 and max_value=1.0."),
    (lambda: gc.MinMaxNorm(rate=1.5), ValueError, "MinMaxNorm rate must lie in [0, 1]: got 1.5."),
    (lambda: gc.MinMaxNorm(rate=-0.5), ValueError, "MinMaxNorm rate must lie in [0, 1]: got -0.5."),
    (lambda: gc.MinMaxNorm(max_value=float("inf")), ValueError, "MinMaxNorm max_value must be finite: got inf."),
    (lambda: gc.UnitNorm(axis="0"), TypeError, "UnitNorm axis must be None, an int or a tuple of ints (axes of the "
                                               "weight in Gluon's layout, e.g. axis=(1, 2)): got '0'."),
    (lambda: gc.Compose([]), ValueError, "Compose needs at least one constraint: got []."),
    (lambda: gc.Compose(gc.NonNeg()), TypeError,
     "Compose expects a list or tuple of constraints, e.g. Compose([gc.NonNeg(), gc.MaxNorm(3)]): got NonNeg()."),
]


@pytest.mark.parametrize("build,error,message", BAD_ARGUMENTS, ids=[m for _, _, m in BAD_ARGUMENTS])
def test_bad_arguments_raise_at_construction(build, error, message):
    with pytest.raises(error) as info:
        build()
    assert str(info.value) == message


def test_argument_errors_are_typed():
    with pytest.raises(gc.ConstraintArgumentError):
        gc.MaxNorm(-1)


@pytest.mark.parametrize("constraint,axes", [
    (gc.MaxNorm(1.0), (1, 2)), (gc.MinMaxNorm(0.5, 1.0), (1, 2)), (gc.UnitNorm(), (1, 2)),
    (gc.MaxNorm(1.0, axis=0), (0,)),
], ids=repr)
def test_projection_is_idempotent_bitwise(constraint, axes, rng):
    w = mx.nd.array(random_weight(rng, (16, 30, 20)))
    once = constraint(w)
    twice = constraint(once)
    assert once.asnumpy().tobytes() == twice.asnumpy().tobytes()
    n = ref.norms(once.asnumpy(), axes)
    assert n.max() <= (constraint.max_value if hasattr(constraint, "max_value") else 1.0) * (1 + 1e-5)


def test_every_combination_of_catalogue_pairs_composes(rng):
    members = [gc.MaxNorm(1.0), gc.MinMaxNorm(0.2, 0.9), gc.UnitNorm(), gc.NonNeg()]
    w = random_weight(rng, (5, 7))
    for a, b in itertools.permutations(members, 2):
        out = gc.Compose([a, b])(mx.nd.array(w)).asnumpy()
        np.testing.assert_allclose(out, b(a(mx.nd.array(w))).asnumpy(), rtol=0, atol=0)
