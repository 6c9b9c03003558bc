"""Properties every registered constraint family has, generated from the registry
(docs/architecture.md, "Where new things go"; docs/constraints.md).

Each family registered with ``gc.register_constraint`` in the package needs an entry in
FAMILIES (its instances and the weights it applies to), or
``test_every_registered_family_is_covered`` fails: a new family gets these checks by adding one
line here.
"""

import json

import mxnet as mx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gluon_constraints as gc
from gluon_constraints.catalogue.feasibility import violation

DTYPES = [np.float16, np.float32, np.float64]
bounds = st.floats(0.05, 50.0, allow_nan=False, allow_infinity=False)


def entries(shape):
    """Arrays of ``shape`` whose entries are 0 or at least 0.01 in magnitude (exact in float64).

    Every entry is drawn (no fill value): mostly constant arrays would hide projections that
    move values between entries.
    """
    return hnp.arrays(np.int32, shape, elements=st.integers(-4000, 4000),
                      fill=st.nothing()).map(lambda a: a / 100.0)


def weights():
    return hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6).flatmap(entries)


def kernels():
    """2-D convolution weights with square kernels (what RadialConstraint applies to)."""
    return st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5)).flatmap(
        lambda s: entries((s[0], s[1], s[2], s[2])))


def matrices_and_kernels():
    """Dense weights (2-D) and 2-D convolution kernels (what OperatorNorm applies to)."""
    return hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6).flatmap(entries) | kernels()


orders = st.sampled_from([1, 2, "inf"])

FAMILIES = {
    "Constraint": (st.just(gc.Constraint()), weights()),
    "MaxNorm": (st.builds(gc.MaxNorm, bounds, ord=orders), weights()),
    # rate=1: a projection (a smaller rate moves part of the way, by design not idempotent)
    "MinMaxNorm": (st.tuples(bounds, bounds, orders).map(
        lambda b: gc.MinMaxNorm(min(b[:2]), max(b[:2]), ord=b[2])), weights()),
    "UnitNorm": (st.builds(gc.UnitNorm, ord=orders), weights()),
    "Clip": (st.tuples(st.integers(-500, 500).map(lambda i: i / 100), st.integers(0, 500).map(lambda i: i / 100),
                       st.sampled_from(["both", "low", "high"])).map(
        lambda b: gc.Clip(None if b[2] == "high" else b[0], None if b[2] == "low" else b[0] + b[1])), weights()),
    "Simplex": (st.builds(gc.Simplex, bounds), weights()),
    "L1Ball": (st.builds(gc.L1Ball, bounds), weights()),
    "SpectralNorm": (st.builds(gc.SpectralNorm, bounds), weights()),
    # beta=None: the retraction (a Parseval step only moves toward the set, by design)
    "Orthogonal": (st.just(gc.Orthogonal()), weights()),
    "NonNeg": (st.just(gc.NonNeg()), weights()),
    "Scheduled": (st.builds(lambda b, steps: gc.Scheduled(gc.MaxNorm(b), start=2 * b, steps=steps),
                            bounds, st.integers(1, 10)), weights()),
    "RadialConstraint": (st.just(gc.RadialConstraint()), kernels()),
    "OperatorNorm": (st.builds(lambda b, n, p: gc.OperatorNorm(b, input_shape=n, padding=p), bounds,
                               st.integers(1, 6), st.integers(0, 2)), matrices_and_kernels()),
    "Compose": (bounds.map(lambda b: gc.Compose([gc.NonNeg(), gc.MaxNorm(b)])), weights()),
}


def test_every_registered_family_is_covered():
    ours = {name for name, cls in gc.registered_constraints().items()
            if cls.__module__.startswith("gluon_constraints.")}  # tests register classes of their own
    assert ours == set(FAMILIES)


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(FAMILIES)))
    instances, arrays = FAMILIES[name]
    return draw(instances), draw(arrays), draw(st.sampled_from(DTYPES))


@given(cases())
def test_projection_keeps_kind_and_is_idempotent(case):
    constraint, values, dtype = case
    w = mx.nd.array(values, dtype=dtype)
    once = constraint(w)
    assert once.shape == w.shape and once.dtype == w.dtype and once.context == w.context
    np.testing.assert_array_equal(w.asnumpy(), values.astype(dtype))  # input untouched
    np.testing.assert_array_equal(constraint(once).asnumpy(), once.asnumpy())  # feasible: unchanged


@given(cases())
def test_output_is_feasible(case):
    constraint, values, dtype = case
    w = mx.nd.array(values, dtype=dtype)
    assert violation(constraint, constraint(w)) is None


@st.composite
def pairs(draw):
    """Two float64 arrays of one shape for a family whose projection is declared convex."""
    name = draw(st.sampled_from(sorted(n for n, (instances, _) in FAMILIES.items()
                                       if draw(instances).convex)))
    instances, arrays = FAMILIES[name]
    constraint = draw(instances.filter(lambda c: c.convex))
    a = draw(arrays)
    return constraint, a, draw(entries(a.shape))


@given(pairs())
def test_convex_projections_are_non_expansive(case):
    # ||P(a) - P(b)|| <= ||a - b|| (Euclidean projections onto closed convex sets)
    constraint, a, b = case
    pa = constraint(mx.nd.array(a, dtype=np.float64)).asnumpy()
    pb = constraint(mx.nd.array(b, dtype=np.float64)).asnumpy()
    assert np.linalg.norm(pa - pb) <= np.linalg.norm(a - b) * (1 + 1e-9) + 1e-12, repr(constraint)


def test_declared_convex_families():
    convex = {name for name, cls in gc.registered_constraints().items()
              if cls.__module__.startswith("gluon_constraints.") and cls.__name__ == name
              and getattr(cls, "convex", False) is True}
    assert convex == {"NonNeg", "Clip", "Simplex", "L1Ball"}
    assert gc.MaxNorm(1.0).convex and not gc.MaxNorm(1.0, ord=1).convex
    assert gc.MinMaxNorm(0.0, 1.0).convex and not gc.MinMaxNorm(0.5, 1.0).convex


@given(cases())
def test_config_round_trips_through_json(case):
    constraint, _, _ = case
    assert gc.deserialize(json.loads(json.dumps(gc.serialize(constraint)))) == constraint


@given(cases())
def test_float16_float32_and_float64_agree(case):
    # Each dtype's result against float64 arithmetic on the same (dtype-rounded) input: soft
    # thresholding (L1Ball, Simplex) amplifies the input's own rounding, which is not the
    # projection's error.
    constraint, values, _ = case
    for dtype, rtol in ((np.float32, 1e-5), (np.float16, 2e-3)):
        rounded = values.astype(dtype)
        exact = constraint(mx.nd.array(rounded, dtype=np.float64)).asnumpy()
        scale = max(1.0, float(np.abs(exact).max(initial=0.0)))
        got = constraint(mx.nd.array(rounded, dtype=dtype)).asnumpy().astype(np.float64)
        np.testing.assert_allclose(got, exact, rtol=rtol, atol=rtol * scale, err_msg=repr(constraint))


# Powers of ten a case's entries are scaled to, per dtype: from subnormal numbers to the largest
# finite ones (docs/constraints.md, "Finite input, finite output").
EXPONENTS = {dtype: st.sampled_from([low, high]) | st.integers(low, high)  # the edges, often
             for dtype, (low, high) in ((np.float16, (-7, 4)), (np.float32, (-44, 38)))}
# Families whose set excludes an all-zero slice, so their projection must move it.
MOVE_ZERO = ("Simplex", "Orthogonal")


@st.composite
def scaled_cases(draw):
    """A family, an instance, float16 or float32 entries scaled by a power of ten up to the
    dtype's largest finite value, with the first unit's slice zero."""
    name = draw(st.sampled_from(sorted(FAMILIES)))
    instances, arrays = FAMILIES[name]
    dtype = draw(st.sampled_from(sorted(EXPONENTS, key=str)))
    values = draw(arrays) / 40.0 * 3.4 * 10.0 ** draw(EXPONENTS[dtype])  # |entries| <= 3.4 10^e
    values[0] = 0
    return name, draw(instances), values.astype(dtype)


def zero_kept(name, constraint):
    """Whether an all-zero slice must stay zero: the set holds it, or (UnitNorm, MinMaxNorm) it
    has no direction to move along."""
    if name in MOVE_ZERO:
        return False
    if isinstance(constraint, gc.Clip):
        low, high = constraint.min_value, constraint.max_value
        return (low is None or low <= 0) and (high is None or high >= 0)
    return True


@given(scaled_cases())
def test_finite_input_gives_finite_output_and_zero_slices_stay_zero(case):
    name, constraint, values = case
    assert np.isfinite(values).all()
    out = constraint(mx.nd.array(values, dtype=values.dtype)).asnumpy()
    assert np.isfinite(out).all(), (repr(constraint), values)
    if zero_kept(name, constraint) and values.ndim > 1:
        assert not out[0].any(), repr(constraint)


def lowered(case):
    """float32 cases of families the kernel computes (the others take the stock path twice)."""
    from gluon_constraints.catalogue.lowering import row_lowering

    _, constraint, values = case
    members = constraint.constraints if isinstance(constraint, gc.Compose) else [constraint]
    return values.dtype == np.float32 and all(row_lowering(m) is not None for m in members)


@given(scaled_cases().filter(lowered))
def test_stock_operators_agree_with_the_kernel_on_every_finite_input(case):
    # Both compute norms and scales in float64 and round each entry once to float32, so they
    # differ at most where the two float64 norms (summed in different orders) round a product to
    # neighbouring float32 numbers: one ulp.
    from gluon_constraints.kernels.projection import project_in_place

    _, constraint, values = case
    reduction = gc.Reduction(tuple(range(1, values.ndim)) if values.ndim > 1 else (0,))
    fused, stock = mx.nd.array(values), mx.nd.array(values)
    project_in_place([(fused, constraint, reduction)], use_fused=True)
    project_in_place([(stock, constraint, reduction)], use_fused=False)
    a, b = fused.asnumpy(), stock.asnumpy()
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert (np.abs(a - b) <= np.spacing(np.abs(b))).all(), repr(constraint)
