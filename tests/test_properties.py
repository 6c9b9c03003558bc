"""Hypothesis properties of every constraint: feasibility, idempotence, kept metadata."""

import mxnet as mx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gluon_constraints as gc
import reference as ref

DTYPES = st.sampled_from([np.float32, np.float16])


@st.composite
def weights(draw):
    """Arrays of 1 to 4 dims whose entries are 0 or at least 0.01 in magnitude."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    ints = draw(hnp.arrays(np.int32, shape, elements=st.integers(-4000, 4000), fill=st.nothing()))
    dtype = draw(DTYPES)
    return (ints / 100.0).astype(dtype)


bounds = st.floats(0.05, 50.0, allow_nan=False, allow_infinity=False)


@st.composite
def constraints(draw):
    kind = draw(st.sampled_from(["max", "minmax", "unit", "nonneg", "compose"]))
    if kind == "max":
        return gc.MaxNorm(draw(bounds))
    if kind == "minmax":
        lo, hi = sorted((draw(bounds), draw(bounds)))
        return gc.MinMaxNorm(lo, hi)
    if kind == "unit":
        return gc.UnitNorm()
    if kind == "nonneg":
        return gc.NonNeg()
    return gc.Compose([gc.NonNeg(), gc.MaxNorm(draw(bounds))])


def feasible(constraint, w):
    """Whether ``w`` lies in the constraint's set, with float rounding allowed for."""
    tol = 2e-3 if w.dtype == np.float16 else 1e-5
    if isinstance(constraint, gc.Compose):
        return all(feasible(m, w) for m in constraint.constraints)
    if isinstance(constraint, gc.NonNeg):
        return bool((w >= 0).all())
    n = ref.norms(w, ref.per_output_unit_axes(w.ndim))
    nonzero = n > 0
    if isinstance(constraint, gc.MaxNorm):
        return bool((n <= constraint.max_value * (1 + tol)).all())
    if isinstance(constraint, gc.MinMaxNorm):
        inside = (n >= constraint.min_value * (1 - tol)) & (n <= constraint.max_value * (1 + tol))
        return bool((inside | ~nonzero).all())
    return bool((np.abs(n - 1) <= tol)[nonzero].all())


@given(w=weights(), constraint=constraints())
def test_result_is_feasible(w, constraint):
    out = constraint(mx.nd.array(w, dtype=w.dtype)).asnumpy()
    assert feasible(constraint, out)


@given(w=weights(), constraint=constraints())
def test_applying_twice_equals_applying_once(w, constraint):
    once = constraint(mx.nd.array(w, dtype=w.dtype))
    twice = constraint(once)
    assert once.asnumpy().tobytes() == twice.asnumpy().tobytes()


@given(w=weights(), constraint=constraints(), ctx=st.sampled_from([mx.cpu(0), mx.cpu(1)]))
def test_shape_dtype_and_context_are_kept(w, constraint, ctx):
    x = mx.nd.array(w, dtype=w.dtype, ctx=ctx)
    out = constraint(x)
    assert (out.shape, out.dtype, out.context) == (x.shape, x.dtype, x.context)
    assert type(out) is type(x)


@given(w=weights(), constraint=constraints())
def test_no_nan_and_zero_slices_stay_zero(w, constraint):
    w = w.copy()
    w[0] = 0
    out = constraint(mx.nd.array(w, dtype=w.dtype)).asnumpy()
    assert np.isfinite(out).all()
    assert not out[0].any()


@given(w=weights(), constraint=constraints())
def test_feasible_input_is_returned_bit_for_bit(w, constraint):
    feasible_w = constraint(mx.nd.array(w, dtype=w.dtype)).asnumpy()
    again = constraint(mx.nd.array(feasible_w, dtype=w.dtype)).asnumpy()
    assert again.tobytes() == feasible_w.tobytes()
