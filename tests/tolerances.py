"""Tolerances for float32 results that two computations reach in different orders.

Summing per-context gradients, MXNet's kernels on another CPU (AVX2 or AVX-512, Intel or AMD)
and float64 references all round differently. A comparison between such results allows what
the computation itself can round (docs/training.md, "Guarantees and their scope"): about
``n * eps32 * max|x|`` for a result built from ``n`` rounded float32 operations (additions of
a sum, steps of an update) on values of size up to ``max|x|``; each rounds by at most half an
ulp of its operands, and a different order moves each rounding, not the bound. Where two paths
do the same arithmetic in the same order, tests compare bitwise instead.
"""

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def float32_atol(reference, operations):
    """Absolute tolerance for float32 results of ``operations`` rounded float32 operations
    whose values are of the size of ``reference``'s entries: ``operations * eps32 * max|reference|``."""
    return operations * EPS32 * float(np.max(np.abs(reference), initial=0.0))


def assert_float32_close(actual, reference, operations, err_msg=""):
    """``actual`` within :func:`float32_atol` of ``reference`` (entrywise)."""
    np.testing.assert_allclose(actual, reference, rtol=0, atol=float32_atol(reference, operations),
                               err_msg=err_msg)
